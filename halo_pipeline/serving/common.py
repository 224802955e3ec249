"""What the endpoints share: request checks that answer 400, usage, choices run together, SSE framing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from halo_pipeline.serving.api import refused
from halo_pipeline.serving.constraints import ConstraintError, Spec, from_request
from halo_pipeline.serving.core import Sampling
from halo_pipeline.serving.errors import APIError, bad_request, error_body, log

T = TypeVar("T")


def refuse_unsupported(req: Any) -> None:
    if found := refused(req):
        raise bad_request(found[1], found[0], "unsupported_parameter")


def constraint_of(req: Any) -> Spec | None:
    try:
        return from_request(req)
    except ConstraintError as exc:
        raise bad_request(exc.message, exc.param, "invalid_constraint") from None


def stops_of(req: Any) -> list[str]:
    try:
        return list(req.stops())
    except ValueError as exc:
        raise bad_request(str(exc), "stop") from None


def seeded(sampling: Sampling, i: int) -> Sampling:
    if sampling.seed is None or i == 0:
        return sampling
    return sampling.with_seed(sampling.seed + i)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def all_choices(work: list[Awaitable[T]]) -> list[T]:
    """Every choice's result. A choice that fails ends the others (gather alone would leave them generating
    for an answer that is already an error)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()  # a no-op for the finished ones


async def merged(streams: list[AsyncIterator[tuple[str, dict[str, Any]]]]) -> AsyncIterator[tuple[int, str, dict[str, Any]]]:
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


def sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def error_event(exc: BaseException) -> bytes:
    if isinstance(exc, APIError):
        return sse(error_body(exc.message, exc.type, exc.param, exc.code))
    log.error("stream failed", exc_info=exc)
    return sse(error_body("internal server error (the server's log has the details)", "server_error"))
