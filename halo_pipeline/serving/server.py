"""The state every endpoint shares: the engine, the settings, admission, and the checks and the generation
loop the routes call. Tokenizing, rendering templates, scoring, embedding and decoding log-probs run in
threads, so the event loop (and `/health`) never waits on them. The app is wired in `app.py`; each
endpoint family has its module (`chat.py`, `completions.py`, `embeddings.py`, `models.py`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from starlette.requests import Request

from halo_pipeline.serving.admission import Admission, Ticket
from halo_pipeline.serving.constraints import ConstraintError, Grammars, Spec
from halo_pipeline.serving.core import END, Engine, Generation, Sampling, Step
from halo_pipeline.serving.detokenize import TextStream
from halo_pipeline.serving.errors import APIError, bad_request, log, shutting_down

T = TypeVar("T")


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


class Server:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine, self.settings = engine, settings
        self.started_at = time.time()
        self.slots = Admission(engine, settings.max_queue)
        self.live: set[Generation] = set()
        # scoring and embeddings, one at a time (the engines serialize them anyway); a job whose client left
        # while it was queued is dropped with it
        self.scorer = ThreadPoolExecutor(1, thread_name_prefix="halo-score")
        self.grammars = Grammars(engine)  # output constraints, compiled once per grammar

    # -- admission ---------------------------------------------------------------------------
    @property
    def closing(self) -> bool:
        return self.slots.closing

    def admit(self, request: Request, n: int = 1, param: str = "n") -> Ticket:
        return self.slots.admit(request, n, param)

    def shutdown(self) -> None:
        """Admit nothing more and end every generation now. Called from another thread: it only sets flags and
        thread-safe events (each generation then ends on the event loop, telling its client why)."""
        self.slots.closing = True
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
            "runtime": self.engine.name,
            "engine": self.engine.name,  # the old name of "runtime", kept for one more release
            "loaded": True,
            "started_at": self.started_at,
            "streaming": self.engine.streaming,
            "context_length": self.engine.context_length,
            "queue_depth": self.slots.waiting,
            "active_requests": self.slots.active,
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
                raise shutting_down()
            return await asyncio.get_running_loop().run_in_executor(self.scorer, fn, *args)
        except (asyncio.CancelledError, RuntimeError):
            task = asyncio.current_task()
            if self.closing and task is not None and not task.cancelling():  # shutdown() closed the scoring thread
                raise shutting_down() from None
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
                raise shutting_down()
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
                raise shutting_down()
            tail = stream.flush()
            if tail:
                yield "delta", {"text": tail, "steps": steps}
            reason = "stop" if stream.stopped or gen.finish_reason == "stop" else "length"
            yield "done", {"finish_reason": reason, "completion_tokens": count}
        finally:
            gen.cancel()  # a client that went away frees its slot at the engine's next token
            self.live.discard(gen)
            ticket.finish()


def server_of(request: Request) -> Server:
    """The `Server` behind the app a request reached."""
    server: Server = request.app.state.server
    return server
