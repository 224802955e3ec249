"""The HTTP layer: OpenAI routes, SSE streaming, auth, limits and errors in OpenAI's shape.

Every request that takes engine time holds an admission `Ticket` for its slots. The ASGI guard hands
back whatever a ticket still holds once its request is over, however it ends: answered, failed,
cancelled, or its client gone before the first byte or mid-stream. Tokenizing, rendering templates,
scoring, embedding and decoding log-probs run in threads, so the event loop (and `/health`) never waits
on them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from starlette.requests import Request  # at module level: FastAPI resolves the routes' annotations here

from halo_pipeline.serving.api import ChatRequest, CompletionRequest, EmbeddingRequest, refused
from halo_pipeline.serving.constraints import ConstraintError, Grammars, Spec, from_request, tool_call
from halo_pipeline.serving.core import END, Engine, Generation, Sampling, Step
from halo_pipeline.serving.tools import CLOSE, OPEN, ToolCallParser, ToolPlan, forced_opening, template_messages, tool_format

log = logging.getLogger("halo_pipeline.serving")
T = TypeVar("T")
TICKETS = "halo.tickets"  # the scope key under which a request's admission tickets wait for the guard
DECODE_WINDOW = 8  # tokens decoded before each one to find its text (a character spans at most 4 byte-level tokens)
_UNION_MEMBER = re.compile(
    r"^(str|int|float|bool|list\[.*\]|dict\[.*\]|literal\[.*\]|function-\w+\[.*\]|[A-Z]\w*)$"
)  # pydantic's union tags in a loc
SHUTTING_DOWN = "the server is shutting down; retry against another instance or after it restarts"


@dataclass
class Settings:
    model_id: str
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_queue: int = 64  # requests waiting beyond the engine's capacity; more get 429
    max_embedding_inputs: int = 128  # strings per /v1/embeddings request
    max_prompts: int = 64  # prompts per /v1/completions request
    retry_after_s: int = 1
    aliases: set[str] = field(default_factory=set)


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class TextStream:
    """Token ids -> text deltas: UTF-8-safe (a character split across tokens waits for its last byte)
    and stop-string-safe (text that may begin a stop string is held back until it cannot).

    Incremental: each token is decoded with the few tokens of the last piece before it (what it adds is
    the difference), not with the whole generation, so a long stream costs the event loop O(1) per token.
    `special` keeps special tokens in the text (a template's tool-call markers may be special tokens)."""

    def __init__(self, engine: Engine, stops: list[str], special: bool = False) -> None:
        self.engine, self.stops, self.special = engine, stops, special
        self.ids: list[int] = []
        self.text = ""  # the decoded text of ids[: self.read]
        self.start = self.read = 0  # ids[start:read] is the last piece decoded: the context for the next one
        self.sent = 0  # characters of the text already emitted
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.engine.decode(ids, self.special) if self.special else self.engine.decode(ids)

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.start : self.read])
        after = self._decode(self.ids[self.start :])
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
        before = self._decode(self.ids[self.start : self.read])
        self.text += self._decode(self.ids[self.start :])[len(before) :].rstrip("\ufffd")
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
        self.grammars = Grammars(engine)  # output constraints, compiled once per grammar

    # -- admission ---------------------------------------------------------------------------
    def admit(self, request: Request, n: int = 1, param: str = "n") -> Ticket:
        if self.closing:
            raise APIError(503, SHUTTING_DOWN, "server_error", code="server_shutdown")
        most = self.engine.capacity + self.settings.max_queue
        if n > most:  # would never fit: not a retry-later
            raise bad_request(f"this request needs {n} generation slots; the server has {most} in all", param)
        if self.active + self.waiting + n > most:
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

    def check_model(self, model: str) -> str | None:
        """The adapter a request's `model` names (None: the base model). A server of one model answers any id, as
        llama.cpp's does (a client's placeholder or the id it was shown elsewhere); with adapters beside the base an
        id names one of them, so anything not served is a 404 listing what is."""
        if model == self.settings.model_id or model in self.settings.aliases:
            return None
        if model in self.engine.adapters:
            return model
        if not self.engine.adapters:
            return None
        served = ", ".join([self.settings.model_id, *self.engine.adapters])
        raise APIError(
            404, f"The model '{model}' does not exist; this server serves {served}", "invalid_request_error", "model", "model_not_found"
        )

    def models(self) -> list[dict[str, Any]]:
        base = {"object": "model", "created": int(self.started_at), "owned_by": "halo-pipeline"}
        listed = [{"id": self.settings.model_id, **base}]
        for name, path in self.engine.adapters.items():  # vLLM's shape for a LoRA adapter: its base as parent
            listed.append({"id": name, **base, "root": str(path), "parent": self.settings.model_id})
        return listed

    def health(self) -> dict[str, Any]:
        return {
            "status": "stopping" if self.closing else "ok",
            "model": self.settings.model_id,
            "adapters": list(self.engine.adapters),
            "engine": self.engine.name,
            "loaded": True,
            "started_at": self.started_at,
            "streaming": self.engine.streaming,
            "context_length": self.engine.context_length,
            "queue_depth": self.waiting,
            "active_requests": self.active,
            "engine_sequences": self.engine.busy,
            "capacity": self.engine.capacity,
            "prefix_cache_hits": self.engine.prefix_hits,
        }

    # -- prompts ------------------------------------------------------------------------------
    def prompt_ids(self, text: str) -> list[int]:
        ids = self.engine.encode(text)
        if not ids:
            ids = [next(iter(self.engine.eos_ids))] if self.engine.eos_ids else [0]
        return ids

    def check_fits(self, length: int, param: str, what: str = "the prompt") -> None:
        if length > self.engine.context_length:
            raise bad_request(f"{what} has {length} tokens; the context is {self.engine.context_length}", param, "context_length_exceeded")

    def check_token_ids(self, ids: list[int], param: str = "prompt", what: str = "prompt") -> None:
        vocab = self.engine.vocab_size
        for i, token in enumerate(ids):
            if not 0 <= token < vocab:
                shown = token if abs(token) < 10**12 else f"{str(token)[:12]}..."
                raise bad_request(
                    f"{what} token id {shown} at position {i} is outside the vocabulary [0, {vocab})", param, "invalid_token_id"
                )

    def sampling(self, req: Any, prompt_len: int, param: str, logprobs: int | None = None) -> Sampling:
        room = self.engine.context_length - prompt_len
        if room < 1:
            raise bad_request(
                f"the prompt has {prompt_len} tokens; the context is {self.engine.context_length}", param, "context_length_exceeded"
            )
        wanted = req.max_completion_tokens or req.max_tokens
        if wanted is not None and wanted > room:
            raise bad_request(
                f"max_tokens is {wanted}, but only {room} tokens fit after the {prompt_len}-token prompt (context {self.engine.context_length})",
                "max_tokens",
            )
        bias = {int(k): float(v) for k, v in (req.logit_bias or {}).items()}
        for token in bias:
            if not 0 <= token < self.engine.vocab_size:
                raise bad_request(f"logit_bias token id {token} is outside the vocabulary [0, {self.engine.vocab_size})", "logit_bias")
        return Sampling(
            max_tokens=wanted or room,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            seed=req.seed,
            ignore_eos=req.ignore_eos,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            logit_bias=bias,
            logprobs=logprobs,
        )

    async def constrained(self, sampling: Sampling, spec: Spec | None) -> Sampling:
        """The sampling settings with the request's output constraint compiled in (a thread: a big schema takes time)."""
        if spec is None:
            return sampling
        from dataclasses import replace

        try:
            return replace(sampling, constraint=await asyncio.to_thread(self.grammars.compile, spec))
        except ConstraintError as exc:
            raise bad_request(exc.message, exc.param, "invalid_constraint") from None

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
        self, ticket: Ticket, prompt: list[int], sampling: Sampling, stops: list[str], adapter: str | None = None, special: bool = False
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yields ("delta", {"text", "steps"}) then ("done", {"finish_reason", "completion_tokens"}). `steps` are the
        tokens since the last delta (their log-probs ride with the text they produced)."""
        gen = Generation(prompt=prompt, sampling=sampling, loop=asyncio.get_running_loop(), adapter=adapter)
        stream = TextStream(self.engine, stops, special)
        ticket.start()
        self.live.add(gen)
        count = 0
        steps: list[Step] = []
        try:
            if self.closing:  # shutdown() has already cancelled the generations it saw
                raise APIError(503, SHUTTING_DOWN, "server_error", code="server_shutdown")
            self.engine.submit(gen)
            while True:
                item = await gen.tokens.get()
                if item is END:
                    break
                count += 1
                steps.append(item)
                delta = stream.push(item.token)
                if delta:
                    yield "delta", {"text": delta, "steps": steps}
                    steps = []
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
                yield "delta", {"text": tail, "steps": steps}
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
        loc = [str(x) for x in first.get("loc", ()) if x != "body" and not _UNION_MEMBER.match(str(x))]
        return error(
            400, f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid request')}", "invalid_request_error", loc[0] if loc else None
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
        return {"object": "list", "data": server.models()}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request) -> Any:
        adapter = server.check_model(req.model)
        _refuse_unsupported(req)
        spec = _constraint(req)
        if req.modalities and set(req.modalities) != {"text"}:
            raise bad_request("only the text modality is supported", "modalities")
        if req.top_logprobs is not None and not req.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        for i, m in enumerate(req.messages):
            if kind := m.non_text_part():
                raise bad_request(f"messages[{i}] has a {kind} part; the served models take text only", "messages", "unsupported_content")
        plan = _tool_plan(engine, req)
        if plan.forced or (plan.parse and any(t.function.strict for t in req.tools or [])):
            if spec is not None and not plan.forced:
                raise bad_request(
                    f"{spec.param} with strict tools under tool_choice auto is not supported: drop strict, or force the call",
                    spec.param,
                    "invalid_constraint",
                )
            spec = _tool_constraint(plan, engine, req)  # a forced call's arguments follow the function's schema; strict ones too
        stops = _stops(req)
        messages = template_messages(req.messages)
        prompt = await asyncio.to_thread(_render, server, messages, plan)
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        sampling = await server.constrained(server.sampling(req, len(prompt), "messages", logprobs), spec)
        ticket = server.admit(request, req.n)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {"id": rid, "created": created, "model": adapter or settings.model_id}
        run = _ChatRun(server, ticket, prompt, sampling, stops, adapter, plan)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_chat_stream(run, base, req.n, include_usage, req.logprobs), media_type="text/event-stream")
        results = await _while_connected(request, _all([run.collect(i) for i in range(req.n)]))
        choices = []
        for i, r in enumerate(results):
            message: dict[str, Any] = {"role": "assistant", "content": r["content"] if r["content"] or not r["calls"] else None}
            if r["calls"]:
                message["tool_calls"] = r["calls"]
            logprobs_out = {"content": [_chat_logprob(engine, s) for s in r["steps"]], "refusal": None} if req.logprobs else None
            choices.append({"index": i, "message": message, "finish_reason": r["finish_reason"], "logprobs": logprobs_out})
        usage = _usage(len(prompt), sum(r["completion_tokens"] for r in results))
        return {**base, "object": "chat.completion", "choices": choices, "usage": usage}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Any:
        adapter = server.check_model(req.model)
        _refuse_unsupported(req)
        if req.best_of not in (None, 1):
            raise bad_request("best_of > 1 is not supported (ask for n completions and rank them yourself)", "best_of")
        spec = _constraint(req)
        stops = _stops(req)
        if req.max_tokens == 0 and not req.echo:
            raise bad_request("max_tokens 0 only makes sense with echo", "max_tokens")
        prompts = await _completion_prompts(server, req.prompt)
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {"id": rid, "created": created, "model": adapter or settings.model_id}
        prompt_tokens = sum(len(ids) for ids, _ in prompts)
        k = req.logprobs
        if req.max_tokens == 0:  # score the prompts only (lm-eval's loglikelihood through echo)
            for ids, _ in prompts:
                server.check_fits(len(ids), "prompt")
            ticket = server.admit(request, len(prompts), "prompt")
            choices = []
            for i, (ids, text) in enumerate(prompts):
                block = None
                if k is not None:
                    one = await _while_connected(request, server.score(ticket, engine.prompt_logprobs, ids, adapter))
                    block = await asyncio.to_thread(_legacy_block, engine, ids, _scored_entries(ids, one), k, [], 0)
                choices.append({"index": i, "text": text, "finish_reason": "length", "logprobs": block})
            return {**base, "object": "text_completion", "choices": choices, "usage": _usage(prompt_tokens, 0)}
        samplings = [await server.constrained(server.sampling(req, len(ids), "prompt", k), spec) for ids, _ in prompts]
        scoring = req.echo and k is not None
        ticket = server.admit(request, len(prompts) * req.n + (len(prompts) if scoring else 0), "prompt")
        jobs = [
            _CompletionJob(index=p * req.n + j, prompt=ids, text=text, sampling=_seeded(samplings[p], j))
            for p, (ids, text) in enumerate(prompts)
            for j in range(req.n)
        ]
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _completion_stream(server, ticket, base, jobs, stops, adapter, req, include_usage, prompt_tokens),
                media_type="text/event-stream",
            )
        results = await _while_connected(request, _all([_collect(server, ticket, job, stops, adapter) for job in jobs]))
        scored: dict[int, Any] = {}
        choices, completion_tokens = [], 0
        for job, (text, reason, n_tokens, steps) in zip(jobs, results, strict=True):
            completion_tokens += n_tokens
            logprobs = None
            if k is not None:
                entries: list[tuple[int, float | None, dict[int, float]]] = [(s.token, s.logprob, dict(s.top)) for s in steps]
                context, offset, prefix = job.prompt, 0, []
                if req.echo:
                    key = id(job.prompt)
                    if key not in scored:  # once per prompt, whatever n is
                        scored[key] = await _while_connected(request, server.score(ticket, engine.prompt_logprobs, job.prompt, adapter))
                    prefix = _scored_entries(job.prompt, scored[key])
                    context = []
                logprobs = await asyncio.to_thread(
                    _legacy_block, engine, context + [e[0] for e in prefix + entries], prefix + entries, k, context, offset
                )
            choices.append(
                {"index": job.index, "text": (job.text if req.echo else "") + text, "finish_reason": reason, "logprobs": logprobs}
            )
        return {**base, "object": "text_completion", "choices": choices, "usage": _usage(prompt_tokens, completion_tokens)}

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest, request: Request) -> Any:
        adapter = server.check_model(req.model)
        _refuse_unsupported(req)
        raw = req.input
        if isinstance(raw, str):
            inputs: list[str | list[int]] = [raw]
        elif raw and all(isinstance(x, int) for x in raw):
            inputs = [[int(x) for x in raw]]  # type: ignore[arg-type]
        else:
            inputs = list(raw)  # type: ignore[arg-type]
        if not 1 <= len(inputs) <= settings.max_embedding_inputs:
            raise bad_request(f"input takes 1 to {settings.max_embedding_inputs} strings; got {len(inputs)}", "input")
        many = len(inputs) > 1 or not isinstance(raw, str)

        def tokenize() -> list[list[int]]:
            return [server.prompt_ids(x) if isinstance(x, str) else x for x in inputs]

        ids = await asyncio.to_thread(tokenize)
        for i, one in enumerate(ids):
            what = f"input[{i}]" if many else "input"
            server.check_fits(len(one), "input", what)
            if not one:
                raise bad_request(f"{what} is empty", "input")
            if not isinstance(inputs[i], str):
                server.check_token_ids(one, "input", what)
        ticket = server.admit(request, 1)
        vectors = await _while_connected(request, server.score(ticket, engine.embed, ids, adapter))
        tokens = sum(len(one) for one in ids)
        encode = _base64_floats if req.encoding_format == "base64" else (lambda v: v)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "model": adapter or settings.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app


# -- request checks ------------------------------------------------------------------------------


def _refuse_unsupported(req: Any) -> None:
    if found := refused(req):
        raise bad_request(found[1], found[0], "unsupported_parameter")


def _constraint(req: Any) -> Spec | None:
    try:
        return from_request(req)
    except ConstraintError as exc:
        raise bad_request(exc.message, exc.param, "invalid_constraint") from None


def _tool_constraint(plan: ToolPlan, engine: Engine, req: ChatRequest) -> Spec:
    markers = {}
    for tag in (OPEN, CLOSE):  # a call tag the vocabulary has as one token
        if len(ids := engine.encode(tag)) == 1:
            markers[tag] = ids[0]
    try:
        tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
        return tool_call(tools, plan.named, forced=bool(plan.forced), parallel=plan.parallel, markers=markers)
    except ConstraintError as exc:
        raise bad_request(exc.message, exc.param, "invalid_constraint") from None


def _stops(req: Any) -> list[str]:
    try:
        return list(req.stops())
    except ValueError as exc:
        raise bad_request(str(exc), "stop") from None


def _tool_plan(engine: Engine, req: ChatRequest) -> ToolPlan:
    """What the request asks of tools, checked against what the model's chat template can do."""
    fmt = tool_format(engine.chat_template())
    choice = req.tool_choice
    if not req.tools:
        if choice not in (None, "none"):
            raise bad_request("tool_choice needs tools", "tool_choice")
        for i, m in enumerate(req.messages):
            if (m.role == "tool" or m.tool_calls) and fmt is None:
                raise bad_request(
                    f"messages[{i}] is a tool call or result, but this model's chat template does not render tools",
                    "messages",
                    "tools_unsupported",
                )
        return ToolPlan()
    if fmt is None:
        raise bad_request("this model's chat template does not render tools, so it cannot call them", "tools", "tools_unsupported")
    if fmt == "other":
        raise bad_request(
            "this model's chat template renders tools in a call format this server does not parse (it parses "
            "<tool_call>{json}</tool_call>)",
            "tools",
            "tools_unsupported",
        )
    names = [t.function.name for t in req.tools]
    if len(set(names)) < len(names):
        raise bad_request("tools has two functions with the same name", "tools")
    if choice == "none":  # no tools in the prompt, no calls parsed: a plain answer
        return ToolPlan()
    tools = [t.model_dump(exclude_none=True, exclude={"function": {"strict"}}) for t in req.tools]  # strict is for us, not the model
    # a model whose tool-call markers are special tokens needs them kept in the decoded text, for the parser
    special = engine.decode(engine.encode(OPEN)) != OPEN
    plan = ToolPlan(tools, "", None, True, req.parallel_tool_calls, special)
    if choice == "required":
        plan.forced = forced_opening(None)
    elif choice is not None and not isinstance(choice, str):
        if choice.function.name not in names:
            raise bad_request(f"tool_choice names {choice.function.name!r}, which is not in tools", "tool_choice")
        plan.forced, plan.named = forced_opening(choice.function.name), choice.function.name
    return plan


def _render(server: Server, messages: list[dict[str, Any]], plan: ToolPlan) -> list[int]:
    """The chat prompt's token ids (a thread: templates and tokenizers take time)."""
    from jinja2 import TemplateError

    try:
        text = server.engine.render_chat(messages, plan.tools)
    except TemplateError as exc:  # the template's own complaint (raise_exception), e.g. roles that must alternate
        raise bad_request(f"the model's chat template refused the messages: {exc}", "messages") from None
    return server.prompt_ids(text + plan.forced)


async def _completion_prompts(server: Server, prompt: Any) -> list[tuple[list[int], str]]:
    """(token ids, text) per prompt: a string, a list of strings, a list of token ids, or a list of those."""
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif prompt and all(isinstance(x, int) for x in prompt):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise bad_request("prompt is empty", "prompt")
    if len(prompts) > server.settings.max_prompts:
        raise bad_request(f"prompt takes up to {server.settings.max_prompts} prompts; got {len(prompts)}", "prompt")
    for p in prompts:
        if not isinstance(p, str):
            if not p:
                raise bad_request("a token-id prompt is empty", "prompt")
            server.check_fits(len(p), "prompt")  # before anything else looks at them
            server.check_token_ids([int(t) for t in p])

    def convert() -> list[tuple[list[int], str]]:
        return [(server.prompt_ids(p), p) if isinstance(p, str) else ([int(t) for t in p], server.engine.decode(list(p))) for p in prompts]

    return await asyncio.to_thread(convert)


def _seeded(sampling: Sampling, i: int) -> Sampling:
    if sampling.seed is None or i == 0:
        return sampling
    return sampling.with_seed(sampling.seed + i)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _base64_floats(vector: list[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


async def _all(work: list[Awaitable[T]]) -> list[T]:
    """Every choice's result. A choice that fails ends the others (gather alone would leave them generating
    for an answer that is already an error)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()  # a no-op for the finished ones


# -- chat ------------------------------------------------------------------------------------------


@dataclass
class _ChatRun:
    """One chat request's generations: each choice's text deltas turned into content and tool calls."""

    server: Server
    ticket: Ticket
    prompt: list[int]
    sampling: Sampling
    stops: list[str]
    adapter: str | None
    plan: ToolPlan

    async def events(self, i: int) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """("content", {"text", "steps"}), ("tool_call", {"call", "steps"}), then ("done", {"finish_reason", ...})."""
        plan = self.plan
        parser = ToolCallParser(plan.forced, plan.named) if plan.parse else None
        calls, seen = 0, 0
        carry: list[Any] = []

        def parsed(pairs: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
            """The parser's text and finished calls as events, each carrying the steps since the last one."""
            nonlocal calls, carry
            for ev, value in pairs:
                if ev == "text":
                    yield "content", {"text": value, "steps": carry}
                else:
                    yield "tool_call", {"call": _call(value), "index": calls, "steps": carry}
                    calls += 1
                carry = []

        gen = self.server.generate(self.ticket, self.prompt, _seeded(self.sampling, i), self.stops, self.adapter, special=plan.special)
        done: dict[str, Any] = {}
        async with contextlib.aclosing(gen):  # type: ignore[type-var]
            async for kind, data in gen:
                if kind == "done":
                    done = data
                    break
                seen += len(data["steps"])
                if parser is None:
                    yield "content", {"text": data["text"], "steps": data["steps"]}
                    continue
                carry += data["steps"]
                for event in parsed(parser.feed(data["text"])):
                    yield event
                if calls and not plan.parallel:  # one call asked for: stop generating once it is complete
                    done = {"finish_reason": "tool_calls", "completion_tokens": None}
                    break
        if parser is not None and done.get("completion_tokens") is not None:
            for event in parsed(parser.finish()):
                yield event
        count = done.get("completion_tokens")
        yield (
            "done",
            {
                "finish_reason": "tool_calls" if calls else done.get("finish_reason", "length"),
                "completion_tokens": count if count is not None else seen,
                "steps": carry,
            },
        )

    async def collect(self, i: int) -> dict[str, Any]:
        content: list[str] = []
        calls: list[dict[str, Any]] = []
        steps: list[Step] = []
        result: dict[str, Any] = {}
        async for kind, data in self.events(i):
            steps += data.get("steps") or []
            if kind == "content":
                content.append(data["text"])
            elif kind == "tool_call":
                calls.append(data["call"])
            else:
                result = data
        return {
            "content": "".join(content),
            "calls": calls,
            "steps": steps,
            "finish_reason": result["finish_reason"],
            "completion_tokens": result["completion_tokens"],
        }


def _call(value: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": value["name"], "arguments": value["arguments"]}}


def _chat_logprob(engine: Engine, step: Step) -> dict[str, Any]:
    def entry(token: int, logprob: float) -> dict[str, Any]:
        raw = engine.token_bytes(token)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return {**entry(step.token, step.logprob if step.logprob is not None else 0.0), "top_logprobs": [entry(t, lp) for t, lp in step.top]}


async def _merged(streams: list[AsyncIterator[tuple[str, dict[str, Any]]]]) -> AsyncIterator[tuple[int, str, dict[str, Any]]]:
    """Several choices' events as they come, tagged with the choice's position."""
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump(i: int, events: AsyncIterator[tuple[str, dict[str, Any]]]) -> None:
        try:
            async for kind, data in events:
                await queue.put((i, kind, data))
        except Exception as exc:
            await queue.put((i, "error", {"error": exc}))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        finished = 0
        while finished < len(streams):
            i, kind, data = await queue.get()
            if kind in ("done", "error"):
                finished += 1
            yield i, kind, data
    finally:
        for task in tasks:
            task.cancel()  # a client that disconnected cancels every choice


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def _error_event(exc: BaseException) -> bytes:
    if isinstance(exc, APIError):
        return _sse(error_body(exc.message, exc.type, exc.param, exc.code))
    log.error("stream failed", exc_info=exc)
    return _sse(error_body("internal server error (the server's log has the details)", "server_error"))


async def _chat_stream(run: _ChatRun, base: dict[str, Any], n: int, include_usage: bool, logprobs: bool) -> AsyncIterator[bytes]:
    engine = run.server.engine
    chunk = {**base, "object": "chat.completion.chunk"}

    def lp(steps: list[Step]) -> dict[str, Any] | None:
        return {"content": [_chat_logprob(engine, s) for s in steps], "refusal": None} if logprobs else None

    for i in range(n):  # role first
        yield _sse(
            {**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}
        )
    completion = 0
    async for i, kind, data in _merged([run.events(i) for i in range(n)]):
        if kind == "content":
            yield _sse(
                {
                    **chunk,
                    "choices": [{"index": i, "delta": {"content": data["text"]}, "logprobs": lp(data["steps"]), "finish_reason": None}],
                }
            )
        elif kind == "tool_call":
            call = {"index": data["index"], **data["call"]}
            yield _sse(
                {**chunk, "choices": [{"index": i, "delta": {"tool_calls": [call]}, "logprobs": lp(data["steps"]), "finish_reason": None}]}
            )
        elif kind == "done":
            completion += data["completion_tokens"]
            choice = {
                "index": i,
                "delta": {},
                "logprobs": lp(data["steps"]) if data["steps"] else None,
                "finish_reason": data["finish_reason"],
            }
            yield _sse({**chunk, "choices": [choice]})
        else:
            yield _error_event(data["error"])
    if include_usage:
        yield _sse({**chunk, "choices": [], "usage": _usage(len(run.prompt), completion)})
    yield b"data: [DONE]\n\n"


# -- completions -----------------------------------------------------------------------------------


@dataclass
class _CompletionJob:
    index: int  # the choice's index: prompt p's j-th choice is p * n + j, as OpenAI numbers them
    prompt: list[int]
    text: str
    sampling: Sampling


async def _collect(
    server: Server, ticket: Ticket, job: _CompletionJob, stops: list[str], adapter: str | None
) -> tuple[str, str, int, list[Step]]:
    parts, steps = [], []
    reason, count = "length", 0
    async for kind, data in server.generate(ticket, job.prompt, job.sampling, stops, adapter):
        if kind == "delta":
            parts.append(data["text"])
            steps += data["steps"]
        else:
            reason, count = data["finish_reason"], data["completion_tokens"]
    return "".join(parts), reason, count, steps


async def _completion_stream(
    server: Server,
    ticket: Ticket,
    base: dict[str, Any],
    jobs: list[_CompletionJob],
    stops: list[str],
    adapter: str | None,
    req: CompletionRequest,
    include_usage: bool,
    prompt_tokens: int,
) -> AsyncIterator[bytes]:
    engine, k = server.engine, req.logprobs
    chunk = {**base, "object": "text_completion"}
    context = {job.index: list(job.prompt) for job in jobs}  # decoded before each token, for its text
    offsets = {job.index: len(job.text) if req.echo else 0 for job in jobs}
    if req.echo:
        scored: dict[int, Any] = {}
        for job in jobs:
            block = None
            if k is not None:
                key = id(job.prompt)
                if key not in scored:
                    try:
                        scored[key] = await server.score(ticket, engine.prompt_logprobs, job.prompt, adapter)
                    except Exception as exc:
                        yield _error_event(exc)
                        yield b"data: [DONE]\n\n"
                        return
                block = await asyncio.to_thread(_legacy_block, engine, job.prompt, _scored_entries(job.prompt, scored[key]), k, [], 0)
            yield _sse({**chunk, "choices": [{"index": job.index, "text": job.text, "finish_reason": None, "logprobs": block}]})

    async def piece_block(index: int, steps: list[Step]) -> dict[str, Any] | None:
        if k is None or not steps:
            return None
        entries = [(s.token, s.logprob, dict(s.top)) for s in steps]
        ids = context[index]
        block = await asyncio.to_thread(_legacy_block, engine, ids + [e[0] for e in entries], entries, k, ids, offsets[index])
        ids += [e[0] for e in entries]
        return block

    completion = 0
    streams = [_job_events(server, ticket, job, stops, adapter) for job in jobs]
    async for pos, kind, data in _merged(streams):
        index = jobs[pos].index
        if kind == "delta":
            block = await piece_block(index, data["steps"])
            offsets[index] += len(data["text"])
            yield _sse({**chunk, "choices": [{"index": index, "text": data["text"], "finish_reason": None, "logprobs": block}]})
        elif kind == "done":
            completion += data["completion_tokens"]
            yield _sse({**chunk, "choices": [{"index": index, "text": "", "finish_reason": data["finish_reason"], "logprobs": None}]})
        else:
            yield _error_event(data["error"])
    if include_usage:
        yield _sse({**chunk, "choices": [], "usage": _usage(prompt_tokens, completion)})
    yield b"data: [DONE]\n\n"


def _job_events(server: Server, ticket: Ticket, job: _CompletionJob, stops: list[str], adapter: str | None) -> AsyncIterator[Any]:
    return server.generate(ticket, job.prompt, job.sampling, stops, adapter)


def _scored_entries(
    ids: list[int], scored: list[tuple[float | None, dict[int, float]]]
) -> list[tuple[int, float | None, dict[int, float]]]:
    return [(token, lp, top) for token, (lp, top) in zip(ids, scored, strict=True)]


def _legacy_block(
    engine: Engine,
    ids: list[int],
    entries: list[tuple[int, float | None, dict[int, float]]],
    top: int | None,
    context: list[int],
    offset: int,
) -> dict[str, Any]:
    """OpenAI's legacy completions logprobs for `entries` (the last len(entries) tokens of `ids`; the ones before
    are context): tokens, token_logprobs, top_logprobs, text_offset (from `offset`).

    A token's text is what it adds to the decoded text. Decoding a short window before it, not the whole
    prefix, gives the same text and keeps this linear in the prompt's length (it runs in a thread)."""
    tokens, offsets, length = [], [], offset
    first = len(ids) - len(entries)
    for i in range(first, len(ids)):
        start = max(0, i - DECODE_WINDOW)
        piece = engine.decode(ids[start : i + 1])[len(engine.decode(ids[start:i])) :]
        offsets.append(length)
        length += len(piece)
        tokens.append(piece)
    token_logprobs = [e[1] for e in entries]
    tops = [None if e[1] is None else {engine.decode([t]): lp for t, lp in list(e[2].items())[:top]} for e in entries] if top else None
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}
