"""The HTTP layer: OpenAI routes, SSE streaming, auth, limits and errors in OpenAI's shape."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from halo_pipeline.serving.api import ChatRequest, CompletionRequest, EmbeddingRequest
from halo_pipeline.serving.engines import END, Engine, Generation, Sampling


@dataclass
class Settings:
    model_id: str
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_queue: int = 64  # requests waiting beyond the engine's capacity; more get 429
    retry_after_s: int = 1
    aliases: set[str] = field(default_factory=set)


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class TextStream:
    """Token ids -> text deltas: UTF-8-safe (a character split across tokens waits for its last byte)
    and stop-string-safe (text that may begin a stop string is held back until it cannot)."""

    def __init__(self, engine: Engine, stops: list[str]) -> None:
        self.engine, self.stops = engine, stops
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already emitted
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.stopped = False

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.engine.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""  # an incomplete multi-byte character
        for stop in self.stops:
            at = text.find(stop, max(0, self.sent - len(stop)))
            if at != -1:
                self.stopped = True
                return self._take(text, at)
        return self._take(text, max(self.sent, len(text) - self.hold))

    def flush(self) -> str:
        if self.stopped:
            return ""
        text = self.engine.decode(self.ids).rstrip("\ufffd")
        return self._take(text, len(text))

    def _take(self, text: str, upto: int) -> str:
        delta = text[self.sent : upto]
        self.sent = max(self.sent, upto)
        return delta


class Server:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine, self.settings = engine, settings
        self.started_at = time.time()
        self.active = 0
        self.waiting = 0

    # -- admission ---------------------------------------------------------------------------
    def admit(self, n: int = 1) -> None:
        if self.active + self.waiting + n > self.engine.capacity + self.settings.max_queue:
            raise APIError(429, "the server's queue is full; retry shortly", "rate_limit_error", code="queue_full")
        self.waiting += n

    def check_model(self, model: str) -> None:
        if model != self.settings.model_id and model not in self.settings.aliases:
            raise APIError(
                404,
                f"The model '{model}' does not exist; this server serves '{self.settings.model_id}'",
                "invalid_request_error",
                "model",
                "model_not_found",
            )

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.settings.model_id,
            "backend": self.engine.name,
            "loaded": True,
            "started_at": self.started_at,
            "streaming": self.engine.streaming,
            "queue_depth": self.waiting,
            "active_requests": self.active,
            "engine_sequences": self.engine.busy,
            "capacity": self.engine.capacity,
            "prefix_cache_hits": getattr(self.engine, "prefix_hits", 0),
        }

    # -- generation ---------------------------------------------------------------------------
    def prompt_ids(self, text: str) -> list[int]:
        ids = self.engine.encode(text)
        if not ids:
            ids = [next(iter(self.engine.eos_ids))] if self.engine.eos_ids else [0]
        return ids

    def sampling(self, req: Any, prompt_len: int) -> Sampling:
        room = self.engine.context_length - prompt_len
        if room < 1:
            raise APIError(
                400,
                f"the prompt has {prompt_len} tokens; the context is {self.engine.context_length}",
                "invalid_request_error",
                "messages",
                "context_length_exceeded",
            )
        wanted = req.max_completion_tokens or req.max_tokens
        if wanted is not None and wanted > room:
            raise APIError(
                400,
                f"max_tokens is {wanted}, but only {room} tokens fit after the {prompt_len}-token prompt (context {self.engine.context_length})",
                "invalid_request_error",
                "max_tokens",
            )
        return Sampling(
            max_tokens=wanted or room,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            seed=req.seed,
            ignore_eos=req.ignore_eos,
        )

    async def generate(self, prompt: list[int], sampling: Sampling, stops: list[str]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yields ("delta", {"text", "tokens"}) then ("done", {"finish_reason", "completion_tokens"})."""
        gen = Generation(prompt=prompt, sampling=sampling, loop=asyncio.get_running_loop())
        stream = TextStream(self.engine, stops)
        self.waiting -= 1
        self.active += 1
        count = 0
        try:
            self.engine.submit(gen)
            while True:
                item = await gen.tokens.get()
                if item is END:
                    break
                count += 1
                delta = stream.push(item)
                if delta:
                    yield "delta", {"text": delta, "token": item}
                if stream.stopped:
                    gen.cancel()
                    break
            if gen.error:
                raise APIError(500, f"generation failed: {gen.error[:300]}", "server_error")
            tail = stream.flush()
            if tail:
                yield "delta", {"text": tail, "token": None}
            reason = "stop" if stream.stopped or gen.finish_reason == "stop" else "length"
            yield "done", {"finish_reason": reason, "completion_tokens": count}
        finally:
            gen.cancel()  # a client that went away frees its slot at the engine's next token
            self.active -= 1


def create_app(engine: Engine, settings: Settings) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    server = Server(engine, settings)
    app = FastAPI(title="halo-pipeline serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    def error(
        status: int, message: str, type_: str, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None
    ) -> JSONResponse:
        return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        headers = {"Retry-After": str(settings.retry_after_s)} if exc.status in (429, 503) else None
        return error(exc.status, exc.message, exc.type, exc.param, exc.code, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        return error(
            400, f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid request')}", "invalid_request_error", ".".join(loc) or None
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error(exc.status_code, str(exc.detail) if exc.status_code != 404 else "no such route", kind)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        return error(500, f"{type(exc).__name__}: {str(exc)[:300]}", "server_error")

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Any:
        if request.url.path != "/health" and settings.api_key is not None:
            header = request.headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
                return error(
                    401, "invalid or missing API key (Authorization: Bearer <key>)", "invalid_request_error", code="invalid_api_key"
                )
        length = request.headers.get("content-length")
        if length is not None and int(length) > settings.max_body_bytes:
            return error(413, f"request body over {settings.max_body_bytes} bytes", "invalid_request_error", code="request_too_large")
        if request.method == "POST" and length is None:
            body = await request.body()  # chunked upload: measure what arrived
            if len(body) > settings.max_body_bytes:
                return error(413, f"request body over {settings.max_body_bytes} bytes", "invalid_request_error", code="request_too_large")
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return server.health()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": settings.model_id, "object": "model", "created": int(server.started_at), "owned_by": "halo-pipeline"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> Any:
        server.check_model(req.model)
        stops = _stops(req)
        prompt = server.prompt_ids(engine.chat_prompt([{"role": m.role, "content": m.text()} for m in req.messages]))
        sampling = server.sampling(req, len(prompt))
        server.admit(req.n)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {"id": rid, "created": created, "model": settings.model_id}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _chat_stream(server, base, prompt, sampling, stops, req.n, include_usage), media_type="text/event-stream"
            )
        choices, completion_tokens = [], 0
        results = await asyncio.gather(*[_collect(server, prompt, _seeded(sampling, i), stops) for i in range(req.n)])
        for i, (text, reason, n_tokens, _) in enumerate(results):
            completion_tokens += n_tokens
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason, "logprobs": None})
        return {**base, "object": "chat.completion", "choices": choices, "usage": _usage(len(prompt), completion_tokens)}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        server.check_model(req.model)
        stops = _stops(req)
        if isinstance(req.prompt, list) and req.prompt and isinstance(req.prompt[0], int):
            prompt = [int(t) for t in req.prompt]  # type: ignore[arg-type]
            prompt_text = engine.decode(prompt)
        else:
            prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
            if len(prompts) != 1:
                raise APIError(400, "one prompt per request", "invalid_request_error", "prompt")
            prompt_text = str(prompts[0])
            prompt = server.prompt_ids(prompt_text)
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {"id": rid, "created": created, "model": settings.model_id}
        echo_scores = None
        if req.echo and req.logprobs is not None:
            echo_scores = await asyncio.to_thread(engine.prompt_logprobs, prompt)
        if req.max_tokens == 0:  # score the prompt only (lm-eval's loglikelihood through echo)
            if not req.echo:
                raise APIError(400, "max_tokens 0 only makes sense with echo", "invalid_request_error", "max_tokens")
            choice = {
                "index": 0,
                "text": prompt_text,
                "finish_reason": "length",
                "logprobs": _logprobs_block(engine, prompt, echo_scores, req.logprobs),
            }
            return {**base, "object": "text_completion", "choices": [choice], "usage": _usage(len(prompt), 0)}
        sampling = server.sampling(req, len(prompt))
        server.admit(req.n)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _completion_stream(server, base, prompt, sampling, stops, req, prompt_text, include_usage), media_type="text/event-stream"
            )
        results = await asyncio.gather(
            *[_collect(server, prompt, _seeded(sampling, i), stops, req.logprobs is not None) for i in range(req.n)]
        )
        choices, completion_tokens = [], 0
        for i, (text, reason, n_tokens, tokens) in enumerate(results):
            completion_tokens += n_tokens
            logprobs = None
            if req.logprobs is not None:
                gen_scores = await asyncio.to_thread(engine.prompt_logprobs, prompt + tokens) if tokens else []
                scores = (echo_scores or []) + list(gen_scores[len(prompt) :])
                logprobs = _logprobs_block(
                    engine, (prompt if req.echo else []) + tokens, scores if req.echo else list(gen_scores[len(prompt) :]), req.logprobs
                )
            choices.append({"index": i, "text": (prompt_text if req.echo else "") + text, "finish_reason": reason, "logprobs": logprobs})
        return {**base, "object": "text_completion", "choices": choices, "usage": _usage(len(prompt), completion_tokens)}

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> Any:
        server.check_model(req.model)
        if not engine.can_embed:
            raise APIError(
                400,
                f"the {engine.name} engine does not compute embeddings (serve an HF model with --backend torch)",
                "invalid_request_error",
                "model",
                "embeddings_unsupported",
            )
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        vectors = await asyncio.to_thread(engine.embed, texts)
        tokens = sum(len(engine.encode(t)) for t in texts)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": settings.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app


def _stops(req: Any) -> list[str]:
    try:
        return list(req.stops())
    except ValueError as exc:
        raise APIError(400, str(exc), "invalid_request_error", "stop") from None


def _seeded(sampling: Sampling, i: int) -> Sampling:
    if sampling.seed is None or i == 0:
        return sampling
    return Sampling(sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.top_k, sampling.seed + i, sampling.ignore_eos)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _collect(
    server: Server, prompt: list[int], sampling: Sampling, stops: list[str], keep_tokens: bool = False
) -> tuple[str, str, int, list[int]]:
    parts, tokens = [], []
    reason, count = "length", 0
    async for kind, data in server.generate(prompt, sampling, stops):
        if kind == "delta":
            parts.append(data["text"])
            if keep_tokens and data["token"] is not None:
                tokens.append(data["token"])
        else:
            reason, count = data["finish_reason"], data["completion_tokens"]
    return "".join(parts), reason, count, tokens


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


async def _merged(
    server: Server, prompt: list[int], sampling: Sampling, stops: list[str], n: int
) -> AsyncIterator[tuple[int, str, dict[str, Any]]]:
    """The n choices' events as they come, tagged with the choice index."""
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump(i: int) -> None:
        try:
            async for kind, data in server.generate(prompt, _seeded(sampling, i), stops):
                await queue.put((i, kind, data))
        except Exception as exc:
            await queue.put((i, "error", {"error": exc}))

    tasks = [asyncio.create_task(pump(i)) for i in range(n)]
    try:
        finished = 0
        while finished < n:
            i, kind, data = await queue.get()
            if kind in ("done", "error"):
                finished += 1
            yield i, kind, data
    finally:
        for task in tasks:
            task.cancel()  # a client that disconnected cancels every choice


async def _chat_stream(
    server: Server, base: dict[str, Any], prompt: list[int], sampling: Sampling, stops: list[str], n: int, include_usage: bool
) -> AsyncIterator[bytes]:
    chunk = {**base, "object": "chat.completion.chunk"}
    for i in range(n):  # role first
        yield _sse({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    completion = 0
    async for i, kind, data in _merged(server, prompt, sampling, stops, n):
        if kind == "delta":
            yield _sse({**chunk, "choices": [{"index": i, "delta": {"content": data["text"]}, "finish_reason": None}]})
        elif kind == "done":
            completion += data["completion_tokens"]
            yield _sse({**chunk, "choices": [{"index": i, "delta": {}, "finish_reason": data["finish_reason"]}]})
        else:
            yield _sse(error_body(str(data["error"]), "server_error"))
    if include_usage:
        yield _sse({**chunk, "choices": [], "usage": _usage(len(prompt), completion)})
    yield b"data: [DONE]\n\n"


async def _completion_stream(
    server: Server,
    base: dict[str, Any],
    prompt: list[int],
    sampling: Sampling,
    stops: list[str],
    req: Any,
    prompt_text: str,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    chunk = {**base, "object": "text_completion"}
    if req.echo:
        for i in range(req.n):
            yield _sse({**chunk, "choices": [{"index": i, "text": prompt_text, "finish_reason": None, "logprobs": None}]})
    completion = 0
    async for i, kind, data in _merged(server, prompt, sampling, stops, req.n):
        if kind == "delta":
            yield _sse({**chunk, "choices": [{"index": i, "text": data["text"], "finish_reason": None, "logprobs": None}]})
        elif kind == "done":
            completion += data["completion_tokens"]
            yield _sse({**chunk, "choices": [{"index": i, "text": "", "finish_reason": data["finish_reason"], "logprobs": None}]})
        else:
            yield _sse(error_body(str(data["error"]), "server_error"))
    if include_usage:
        yield _sse({**chunk, "choices": [], "usage": _usage(len(prompt), completion)})
    yield b"data: [DONE]\n\n"


def _logprobs_block(engine: Engine, ids: list[int], scores: Any, top: int | None) -> dict[str, Any]:
    """OpenAI's legacy completions logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens, offsets, text = [], [], ""
    for i in range(len(ids)):
        piece = engine.decode(ids[: i + 1])[len(engine.decode(ids[:i])) :] if i else engine.decode(ids[:1])
        offsets.append(len(text))
        text += piece
        tokens.append(piece)
    token_logprobs = [s[0] for s in scores]
    tops = [None if s[0] is None else {engine.decode([t]): lp for t, lp in list(s[1].items())[: top or 0]} for s in scores] if top else None
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}
