"""The HTTP layer: OpenAI routes, SSE streaming, auth, limits and errors in OpenAI's shape.

Every request that takes engine time holds an admission `Ticket` for its slots. The ASGI guard hands
back whatever a ticket still holds once its request is over, however it ends: answered, failed,
cancelled, or its client gone before the first byte or mid-stream. Tokenizing, scoring, embedding and
decoding log-probs run in threads, so the event loop (and `/health`) never waits on them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.requests import Request  # at module level: FastAPI resolves the routes' annotations here

from halo_pipeline.serving.api import ChatRequest, CompletionRequest, EmbeddingRequest
from halo_pipeline.serving.engines import END, Engine, Generation, Sampling

log = logging.getLogger("halo_pipeline.serving")
T = TypeVar("T")
TICKETS = "halo.tickets"  # the scope key under which a request's admission tickets wait for the guard
DECODE_WINDOW = 8  # tokens decoded before each one to find its text (a character spans at most 4 byte-level tokens)
SHUTTING_DOWN = "the server is shutting down; retry against another instance or after it restarts"


@dataclass
class Settings:
    model_id: str
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_queue: int = 64  # requests waiting beyond the engine's capacity; more get 429
    max_embedding_inputs: int = 128  # strings per /v1/embeddings request
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
    and stop-string-safe (text that may begin a stop string is held back until it cannot).

    Incremental: each token is decoded with the few tokens of the last piece before it (what it adds is
    the difference), not with the whole generation, so a long stream costs the event loop O(1) per token."""

    def __init__(self, engine: Engine, stops: list[str]) -> None:
        self.engine, self.stops = engine, stops
        self.ids: list[int] = []
        self.text = ""  # the decoded text of ids[: self.read]
        self.start = self.read = 0  # ids[start:read] is the last piece decoded: the context for the next one
        self.sent = 0  # characters of the text already emitted
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.stopped = False

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.engine.decode(self.ids[self.start : self.read])
        after = self.engine.decode(self.ids[self.start :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # nothing visible yet, or an incomplete multi-byte character
        self.text += after[len(before) :]
        self.start, self.read = self.read, len(self.ids)
        for stop in self.stops:
            at = self.text.find(stop, max(0, self.sent - len(stop)))
            if at != -1:
                self.stopped = True
                return self._take(at)
        return self._take(max(self.sent, len(self.text) - self.hold))

    def flush(self) -> str:
        if self.stopped:
            return ""
        before = self.engine.decode(self.ids[self.start : self.read])
        self.text += self.engine.decode(self.ids[self.start :])[len(before) :].rstrip("\ufffd")
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        delta = self.text[self.sent : upto]
        self.sent = max(self.sent, upto)
        return delta


class Ticket:
    """The slots one request was admitted with: waiting until a generation (or a scoring) starts on one,
    active until it ends. Everything runs on the event loop; `release` is idempotent."""

    def __init__(self, server: Server, n: int) -> None:
        self.server, self.waiting, self.active = server, n, 0

    def start(self) -> None:
        if self.waiting:  # nothing left after a release: the request is over
            self.waiting -= 1
            self.server.waiting -= 1
            self.active += 1
            self.server.active += 1

    def finish(self) -> None:
        if self.active:
            self.active -= 1
            self.server.active -= 1

    def release(self) -> None:
        self.server.waiting -= self.waiting
        self.server.active -= self.active
        self.waiting = self.active = 0


class Server:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine, self.settings = engine, settings
        self.started_at = time.time()
        self.active = 0
        self.waiting = 0
        self.closing = False
        self.live: set[Generation] = set()
        # scoring and embeddings, one at a time (the engines serialize them anyway); a job whose client left
        # while it was queued is dropped with it
        self.scorer = ThreadPoolExecutor(1, thread_name_prefix="halo-score")

    # -- admission ---------------------------------------------------------------------------
    def admit(self, request: Request, n: int = 1) -> Ticket:
        if self.closing:
            raise APIError(503, SHUTTING_DOWN, "server_error", code="server_shutdown")
        if self.active + self.waiting + n > self.engine.capacity + self.settings.max_queue:
            raise APIError(429, "the server's queue is full; retry shortly", "rate_limit_error", code="queue_full")
        ticket = Ticket(self, n)
        self.waiting += n
        request.scope[TICKETS].append(ticket)  # the guard gives back what is left when the request ends
        return ticket

    def shutdown(self) -> None:
        """Admit nothing more and end every generation now. Called from another thread: it only sets flags and
        thread-safe events (each generation then ends on the event loop, telling its client why)."""
        self.closing = True
        for gen in list(self.live):
            gen.cancel()
        self.scorer.shutdown(wait=False, cancel_futures=True)

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
            "status": "stopping" if self.closing else "ok",
            "model": self.settings.model_id,
            "engine": self.engine.name,
            "loaded": True,
            "started_at": self.started_at,
            "streaming": self.engine.streaming,
            "queue_depth": self.waiting,
            "active_requests": self.active,
            "engine_sequences": self.engine.busy,
            "capacity": self.engine.capacity,
            "prefix_cache_hits": getattr(self.engine, "prefix_hits", 0),
        }

    # -- prompts ------------------------------------------------------------------------------
    def prompt_ids(self, text: str) -> list[int]:
        ids = self.engine.encode(text)
        if not ids:
            ids = [next(iter(self.engine.eos_ids))] if self.engine.eos_ids else [0]
        return ids

    def check_fits(self, length: int, param: str, what: str = "the prompt") -> None:
        if length > self.engine.context_length:
            raise APIError(
                400,
                f"{what} has {length} tokens; the context is {self.engine.context_length}",
                "invalid_request_error",
                param,
                "context_length_exceeded",
            )

    def check_token_ids(self, ids: list[int]) -> None:
        vocab = self.engine.vocab_size
        for i, token in enumerate(ids):
            if not 0 <= token < vocab:
                shown = token if abs(token) < 10**12 else f"{str(token)[:12]}..."
                raise APIError(
                    400,
                    f"prompt token id {shown} at position {i} is outside the vocabulary [0, {vocab})",
                    "invalid_request_error",
                    "prompt",
                    "invalid_token_id",
                )

    def sampling(self, req: Any, prompt_len: int, param: str) -> Sampling:
        room = self.engine.context_length - prompt_len
        if room < 1:
            raise APIError(
                400,
                f"the prompt has {prompt_len} tokens; the context is {self.engine.context_length}",
                "invalid_request_error",
                param,
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

    # -- work -----------------------------------------------------------------------------------
    async def score(self, ticket: Ticket, fn: Callable[..., T], *args: Any) -> T:
        """Scoring or embedding on one of the ticket's slots, in the scoring thread."""
        ticket.start()
        try:
            if self.closing:
                raise APIError(503, SHUTTING_DOWN, "server_error", code="server_shutdown")
            return await asyncio.get_running_loop().run_in_executor(self.scorer, fn, *args)
        except (asyncio.CancelledError, RuntimeError):
            task = asyncio.current_task()
            if self.closing and task is not None and not task.cancelling():  # shutdown() closed the scoring thread
                raise APIError(503, SHUTTING_DOWN, "server_error", code="server_shutdown") from None
            raise
        finally:
            ticket.finish()

    async def generate(
        self, ticket: Ticket, prompt: list[int], sampling: Sampling, stops: list[str]
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yields ("delta", {"text", "tokens"}) then ("done", {"finish_reason", "completion_tokens"})."""
        gen = Generation(prompt=prompt, sampling=sampling, loop=asyncio.get_running_loop())
        stream = TextStream(self.engine, stops)
        ticket.start()
        self.live.add(gen)
        count = 0
        try:
            if self.closing:  # shutdown() has already cancelled the generations it saw
                raise APIError(503, SHUTTING_DOWN, "server_error", code="server_shutdown")
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
                log.error("generation failed: %s", gen.error)
                raise APIError(500, "generation failed (the server's log has the details)", "server_error")
            if self.closing and gen.cancelled.is_set() and not stream.stopped:
                raise APIError(503, SHUTTING_DOWN, "server_error", code="server_shutdown")
            tail = stream.flush()
            if tail:
                yield "delta", {"text": tail, "token": None}
            reason = "stop" if stream.stopped or gen.finish_reason == "stop" else "length"
            yield "done", {"finish_reason": reason, "completion_tokens": count}
        finally:
            gen.cancel()  # a client that went away frees its slot at the engine's next token
            self.live.discard(gen)
            ticket.finish()


class Guard:
    """Pure ASGI, outside the routes: the API key and the body cap before anything else is read, and the
    admission tickets handed back once the request is over, however it ended."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.server.settings
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["path"] != "/health" and settings.api_key is not None:
            header = headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
                await _respond(
                    send, 401, "invalid or missing API key (Authorization: Bearer <key>)", "invalid_request_error", "invalid_api_key"
                )
                return
        too_large = f"request body over {settings.max_body_bytes} bytes"
        length = headers.get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                await _respond(send, 400, "Content-Length is not a number", "invalid_request_error")
                return
            if int(length) > settings.max_body_bytes:
                await _respond(send, 413, too_large, "invalid_request_error", "request_too_large")
                return
        elif scope["method"] == "POST":  # a chunked upload: read it up to the cap, then hand it on
            parts, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                parts.append(message.get("body", b""))
                size += len(parts[-1])
                if size > settings.max_body_bytes:
                    await _respond(send, 413, too_large, "invalid_request_error", "request_too_large")
                    return
                more = message.get("more_body", False)
            receive = _replay(b"".join(parts), receive)
        tickets: list[Ticket] = []
        scope[TICKETS] = tickets
        try:
            await self.app(scope, receive, send)
        finally:
            for ticket in tickets:
                ticket.release()


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # afterwards: the disconnect, whenever it comes

    return replay


async def _respond(send: Any, status: int, message: str, type_: str, code: str | None = None) -> None:
    body = json.dumps(error_body(message, type_, None, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _while_connected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelled if the client hangs up first (its generations then free their slots)."""
    task = asyncio.ensure_future(work)

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        task.cancel()  # a no-op once it is done
    if not task.done() or task.cancelled():
        raise APIError(499, "the client closed the request", "invalid_request_error")  # nobody reads it
    return task.result()


def create_app(engine: Engine, settings: Settings) -> Any:
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    server = Server(engine, settings)
    app = FastAPI(title="halo-pipeline serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.add_middleware(Guard, server=server)

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
        log.error("request failed", exc_info=exc)  # the details stay in the server's log, never in the answer
        return error(500, "internal server error (the server's log has the details)", "server_error")

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
    async def chat(req: ChatRequest, request: Request) -> Any:
        server.check_model(req.model)
        stops = _stops(req)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        prompt = await asyncio.to_thread(lambda: server.prompt_ids(engine.chat_prompt(messages)))
        sampling = server.sampling(req, len(prompt), "messages")
        ticket = server.admit(request, req.n)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {"id": rid, "created": created, "model": settings.model_id}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _chat_stream(server, ticket, base, prompt, sampling, stops, req.n, include_usage), media_type="text/event-stream"
            )
        choices, completion_tokens = [], 0
        work = _all([_collect(server, ticket, prompt, _seeded(sampling, i), stops) for i in range(req.n)])
        for i, (text, reason, n_tokens, _) in enumerate(await _while_connected(request, work)):
            completion_tokens += n_tokens
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason, "logprobs": None})
        return {**base, "object": "chat.completion", "choices": choices, "usage": _usage(len(prompt), completion_tokens)}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Any:
        server.check_model(req.model)
        stops = _stops(req)
        if req.max_tokens == 0 and not req.echo:
            raise APIError(400, "max_tokens 0 only makes sense with echo", "invalid_request_error", "max_tokens")
        if isinstance(req.prompt, list) and req.prompt and isinstance(req.prompt[0], int):
            prompt = [int(t) for t in req.prompt]
            server.check_fits(len(prompt), "prompt")  # before anything else looks at them
            server.check_token_ids(prompt)
            prompt_text = await asyncio.to_thread(engine.decode, prompt)
        else:
            prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
            if len(prompts) != 1:
                raise APIError(400, "one prompt per request", "invalid_request_error", "prompt")
            prompt_text = str(prompts[0])
            prompt = await asyncio.to_thread(server.prompt_ids, prompt_text)
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {"id": rid, "created": created, "model": settings.model_id}
        if req.max_tokens == 0:  # score the prompt only (lm-eval's loglikelihood through echo)
            server.check_fits(len(prompt), "prompt")
            ticket = server.admit(request, 1)
            block = None
            if req.logprobs is not None:
                block = await _while_connected(request, _score_block(server, ticket, prompt, [], True, req.logprobs))
            choice = {"index": 0, "text": prompt_text, "finish_reason": "length", "logprobs": block}
            return {**base, "object": "text_completion", "choices": [choice], "usage": _usage(len(prompt), 0)}
        sampling = server.sampling(req, len(prompt), "prompt")
        if req.stream:  # streamed chunks carry no log-probs: nothing to score
            ticket = server.admit(request, req.n)
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _completion_stream(server, ticket, base, prompt, sampling, stops, req, prompt_text, include_usage),
                media_type="text/event-stream",
            )
        scoring = req.logprobs is not None
        ticket = server.admit(request, req.n + scoring)  # one more slot for scoring the choices
        work = _all([_collect(server, ticket, prompt, _seeded(sampling, i), stops, scoring) for i in range(req.n)])
        results = await _while_connected(request, work)
        choices, completion_tokens = [], 0
        for i, (text, reason, n_tokens, tokens) in enumerate(results):
            completion_tokens += n_tokens
            logprobs = None
            if req.logprobs is not None:
                logprobs = await _while_connected(request, _score_block(server, ticket, prompt, tokens, req.echo, req.logprobs))
            choices.append({"index": i, "text": (prompt_text if req.echo else "") + text, "finish_reason": reason, "logprobs": logprobs})
        return {**base, "object": "text_completion", "choices": choices, "usage": _usage(len(prompt), completion_tokens)}

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest, request: Request) -> Any:
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
        if not 1 <= len(texts) <= settings.max_embedding_inputs:
            raise APIError(
                400, f"input takes 1 to {settings.max_embedding_inputs} strings; got {len(texts)}", "invalid_request_error", "input"
            )
        ids = await asyncio.to_thread(lambda: [server.prompt_ids(t) for t in texts])
        for i, one in enumerate(ids):
            server.check_fits(len(one), "input", f"input[{i}]" if isinstance(req.input, list) else "input")
        ticket = server.admit(request, 1)
        vectors = await _while_connected(request, server.score(ticket, engine.embed, ids))
        tokens = sum(len(one) for one in ids)
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


async def _all(work: list[Awaitable[T]]) -> list[T]:
    """Every choice's result. A choice that fails ends the others (gather alone would leave them generating
    for an answer that is already an error)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()  # a no-op for the finished ones


async def _collect(
    server: Server, ticket: Ticket, prompt: list[int], sampling: Sampling, stops: list[str], keep_tokens: bool = False
) -> tuple[str, str, int, list[int]]:
    parts, tokens = [], []
    reason, count = "length", 0
    async for kind, data in server.generate(ticket, prompt, sampling, stops):
        if kind == "delta":
            parts.append(data["text"])
            if keep_tokens and data["token"] is not None:
                tokens.append(data["token"])
        else:
            reason, count = data["finish_reason"], data["completion_tokens"]
    return "".join(parts), reason, count, tokens


async def _score_block(server: Server, ticket: Ticket, prompt: list[int], tokens: list[int], echo: bool, top: int) -> dict[str, Any]:
    """The legacy logprobs block of the prompt (with echo) and the generated tokens: one scoring pass over both
    (a causal model scores each position from the tokens before it only)."""
    ids = prompt + tokens
    scores = await server.score(ticket, server.engine.prompt_logprobs, ids) if echo or tokens else []
    shown, kept = (ids, scores) if echo else (tokens, list(scores[len(prompt) :]))
    return await asyncio.to_thread(_logprobs_block, server.engine, shown, kept, top)


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def _error_event(exc: BaseException) -> bytes:
    if isinstance(exc, APIError):
        return _sse(error_body(exc.message, exc.type, exc.param, exc.code))
    log.error("stream failed", exc_info=exc)
    return _sse(error_body("internal server error (the server's log has the details)", "server_error"))


async def _merged(
    server: Server, ticket: Ticket, prompt: list[int], sampling: Sampling, stops: list[str], n: int
) -> AsyncIterator[tuple[int, str, dict[str, Any]]]:
    """The n choices' events as they come, tagged with the choice index."""
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump(i: int) -> None:
        try:
            async for kind, data in server.generate(ticket, prompt, _seeded(sampling, i), stops):
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
    server: Server,
    ticket: Ticket,
    base: dict[str, Any],
    prompt: list[int],
    sampling: Sampling,
    stops: list[str],
    n: int,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    chunk = {**base, "object": "chat.completion.chunk"}
    for i in range(n):  # role first
        yield _sse({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    completion = 0
    async for i, kind, data in _merged(server, ticket, prompt, sampling, stops, n):
        if kind == "delta":
            yield _sse({**chunk, "choices": [{"index": i, "delta": {"content": data["text"]}, "finish_reason": None}]})
        elif kind == "done":
            completion += data["completion_tokens"]
            yield _sse({**chunk, "choices": [{"index": i, "delta": {}, "finish_reason": data["finish_reason"]}]})
        else:
            yield _error_event(data["error"])
    if include_usage:
        yield _sse({**chunk, "choices": [], "usage": _usage(len(prompt), completion)})
    yield b"data: [DONE]\n\n"


async def _completion_stream(
    server: Server,
    ticket: Ticket,
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
    async for i, kind, data in _merged(server, ticket, prompt, sampling, stops, req.n):
        if kind == "delta":
            yield _sse({**chunk, "choices": [{"index": i, "text": data["text"], "finish_reason": None, "logprobs": None}]})
        elif kind == "done":
            completion += data["completion_tokens"]
            yield _sse({**chunk, "choices": [{"index": i, "text": "", "finish_reason": data["finish_reason"], "logprobs": None}]})
        else:
            yield _error_event(data["error"])
    if include_usage:
        yield _sse({**chunk, "choices": [], "usage": _usage(len(prompt), completion)})
    yield b"data: [DONE]\n\n"


def _logprobs_block(engine: Engine, ids: list[int], scores: Any, top: int | None) -> dict[str, Any]:
    """OpenAI's legacy completions logprobs: tokens, token_logprobs, top_logprobs, text_offset.

    A token's text is what it adds to the decoded text. Decoding a short window before it, not the whole
    prefix, gives the same text and keeps this linear in the prompt's length (it runs in a thread)."""
    tokens, offsets, length = [], [], 0
    for i in range(len(ids)):
        start = max(0, i - DECODE_WINDOW)
        piece = engine.decode(ids[start : i + 1])[len(engine.decode(ids[start:i])) :]
        offsets.append(length)
        length += len(piece)
        tokens.append(piece)
    token_logprobs = [s[0] for s in scores]
    tops = [None if s[0] is None else {engine.decode([t]): lp for t, lp in list(s[1].items())[: top or 0]} for s in scores] if top else None
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}
