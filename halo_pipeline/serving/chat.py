"""`/v1/chat/completions`: the chat template, tools (parsed from the text, or forced by a grammar), choices
streamed or collected, log-probs per token."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.requests import Request  # at module level: FastAPI resolves the routes' annotations here

from halo_pipeline.serving.admission import Ticket, while_connected
from halo_pipeline.serving.api import ChatRequest
from halo_pipeline.serving.common import all_choices, constraint_of, error_event, merged, refuse_unsupported, seeded, sse, stops_of, usage
from halo_pipeline.serving.constraints import ConstraintError, Spec, tool_call
from halo_pipeline.serving.core import Engine, Sampling, Step
from halo_pipeline.serving.errors import bad_request
from halo_pipeline.serving.server import Server, server_of
from halo_pipeline.serving.tools import CLOSE, OPEN, ToolCallParser, ToolPlan, forced_opening, template_messages, tool_format

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat(req: ChatRequest, request: Request) -> Any:
    server = server_of(request)
    engine, settings = server.engine, server.settings
    adapter = server.check_model(req.model)
    refuse_unsupported(req)
    spec = constraint_of(req)
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
    stops = stops_of(req)
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
    results = await while_connected(request, all_choices([run.collect(i) for i in range(req.n)]))
    choices = []
    for i, r in enumerate(results):
        message: dict[str, Any] = {"role": "assistant", "content": r["content"] if r["content"] or not r["calls"] else None}
        if r["calls"]:
            message["tool_calls"] = r["calls"]
        logprobs_out = {"content": [_chat_logprob(engine, s) for s in r["steps"]], "refusal": None} if req.logprobs else None
        choices.append({"index": i, "message": message, "finish_reason": r["finish_reason"], "logprobs": logprobs_out})
    counted = usage(len(prompt), sum(r["completion_tokens"] for r in results))
    return {**base, "object": "chat.completion", "choices": choices, "usage": counted}


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

        gen = self.server.generate(self.ticket, self.prompt, seeded(self.sampling, i), self.stops, self.adapter, special=plan.special)
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


async def _chat_stream(run: _ChatRun, base: dict[str, Any], n: int, include_usage: bool, logprobs: bool) -> AsyncIterator[bytes]:
    engine = run.server.engine
    chunk = {**base, "object": "chat.completion.chunk"}

    def lp(steps: list[Step]) -> dict[str, Any] | None:
        return {"content": [_chat_logprob(engine, s) for s in steps], "refusal": None} if logprobs else None

    for i in range(n):  # role first
        yield sse(
            {**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}
        )
    completion = 0
    async for i, kind, data in merged([run.events(i) for i in range(n)]):
        if kind == "content":
            yield sse(
                {
                    **chunk,
                    "choices": [{"index": i, "delta": {"content": data["text"]}, "logprobs": lp(data["steps"]), "finish_reason": None}],
                }
            )
        elif kind == "tool_call":
            call = {"index": data["index"], **data["call"]}
            yield sse(
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
            yield sse({**chunk, "choices": [choice]})
        else:
            yield error_event(data["error"])
    if include_usage:
        yield sse({**chunk, "choices": [], "usage": usage(len(run.prompt), completion)})
    yield b"data: [DONE]\n\n"
