"""`/v1/completions`: prompts as text or token ids, several per request, echo and prompt scoring (lm-eval's
log-likelihood), the legacy log-probs block."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.requests import Request  # at module level: FastAPI resolves the routes' annotations here

from halo_pipeline.serving.admission import Ticket, while_connected
from halo_pipeline.serving.api import CompletionRequest
from halo_pipeline.serving.common import all_choices, constraint_of, error_event, merged, refuse_unsupported, seeded, sse, stops_of, usage
from halo_pipeline.serving.core import Sampling, Step
from halo_pipeline.serving.detokenize import legacy_logprobs, scored_entries
from halo_pipeline.serving.errors import bad_request
from halo_pipeline.serving.server import Server, server_of

router = APIRouter()


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request) -> Any:
    server = server_of(request)
    engine, settings = server.engine, server.settings
    adapter = server.check_model(req.model)
    refuse_unsupported(req)
    if req.best_of not in (None, 1):
        raise bad_request("best_of > 1 is not supported (ask for n completions and rank them yourself)", "best_of")
    spec = constraint_of(req)
    stops = stops_of(req)
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
                one = await while_connected(request, server.score(ticket, engine.prompt_logprobs, ids, adapter))
                block = await asyncio.to_thread(legacy_logprobs, engine, ids, scored_entries(ids, one), k, [], 0)
            choices.append({"index": i, "text": text, "finish_reason": "length", "logprobs": block})
        return {**base, "object": "text_completion", "choices": choices, "usage": usage(prompt_tokens, 0)}
    samplings = [await server.constrained(server.sampling(req, len(ids), "prompt", k), spec) for ids, _ in prompts]
    scoring = req.echo and k is not None
    ticket = server.admit(request, len(prompts) * req.n + (len(prompts) if scoring else 0), "prompt")
    jobs = [
        _CompletionJob(index=p * req.n + j, prompt=ids, text=text, sampling=seeded(samplings[p], j))
        for p, (ids, text) in enumerate(prompts)
        for j in range(req.n)
    ]
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            _completion_stream(server, ticket, base, jobs, stops, adapter, req, include_usage, prompt_tokens),
            media_type="text/event-stream",
        )
    results = await while_connected(request, all_choices([_collect(server, ticket, job, stops, adapter) for job in jobs]))
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
                    scored[key] = await while_connected(request, server.score(ticket, engine.prompt_logprobs, job.prompt, adapter))
                prefix = scored_entries(job.prompt, scored[key])
                context = []
            logprobs = await asyncio.to_thread(
                legacy_logprobs, engine, context + [e[0] for e in prefix + entries], prefix + entries, k, context, offset
            )
        choices.append({"index": job.index, "text": (job.text if req.echo else "") + text, "finish_reason": reason, "logprobs": logprobs})
    return {**base, "object": "text_completion", "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}


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
                        yield error_event(exc)
                        yield b"data: [DONE]\n\n"
                        return
                block = await asyncio.to_thread(legacy_logprobs, engine, job.prompt, scored_entries(job.prompt, scored[key]), k, [], 0)
            yield sse({**chunk, "choices": [{"index": job.index, "text": job.text, "finish_reason": None, "logprobs": block}]})

    async def piece_block(index: int, steps: list[Step]) -> dict[str, Any] | None:
        if k is None or not steps:
            return None
        entries = [(s.token, s.logprob, dict(s.top)) for s in steps]
        ids = context[index]
        block = await asyncio.to_thread(legacy_logprobs, engine, ids + [e[0] for e in entries], entries, k, ids, offsets[index])
        ids += [e[0] for e in entries]
        return block

    completion = 0
    streams = [_job_events(server, ticket, job, stops, adapter) for job in jobs]
    async for pos, kind, data in merged(streams):
        index = jobs[pos].index
        if kind == "delta":
            block = await piece_block(index, data["steps"])
            offsets[index] += len(data["text"])
            yield sse({**chunk, "choices": [{"index": index, "text": data["text"], "finish_reason": None, "logprobs": block}]})
        elif kind == "done":
            completion += data["completion_tokens"]
            yield sse({**chunk, "choices": [{"index": index, "text": "", "finish_reason": data["finish_reason"], "logprobs": None}]})
        else:
            yield error_event(data["error"])
    if include_usage:
        yield sse({**chunk, "choices": [], "usage": usage(prompt_tokens, completion)})
    yield b"data: [DONE]\n\n"


def _job_events(server: Server, ticket: Ticket, job: _CompletionJob, stops: list[str], adapter: str | None) -> AsyncIterator[Any]:
    return server.generate(ticket, job.prompt, job.sampling, stops, adapter)
