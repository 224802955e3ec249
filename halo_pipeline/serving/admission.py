"""Admission: the slots a request holds (`Ticket`), the queue bound that answers 429, and the ASGI `Guard`
that checks the API key and the body cap before anything is read and hands back whatever a ticket still
holds once its request is over, however it ends: answered, failed, cancelled, or its client gone before
the first byte or mid-stream."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import Request

from halo_pipeline.serving.core import Engine
from halo_pipeline.serving.errors import APIError, bad_request, error_body, shutting_down

T = TypeVar("T")
TICKETS = "halo.tickets"  # the scope key under which a request's admission tickets wait for the guard


class Admission:
    """The server's slot counts: generations running (`active`) and admitted but not started (`waiting`)."""

    def __init__(self, engine: Engine, max_queue: int) -> None:
        self.engine, self.max_queue = engine, max_queue
        self.active = 0
        self.waiting = 0
        self.closing = False

    def admit(self, request: Request, n: int = 1, param: str = "n") -> Ticket:
        if self.closing:
            raise shutting_down()
        most = self.engine.capacity + self.max_queue
        if n > most:  # would never fit: not a retry-later
            raise bad_request(f"this request needs {n} generation slots; the server has {most} in all", param)
        if self.active + self.waiting + n > most:
            raise APIError(429, "the server's queue is full; retry shortly", "rate_limit_error", code="queue_full")
        ticket = Ticket(self, n)
        self.waiting += n
        request.scope[TICKETS].append(ticket)  # the guard gives back what is left when the request ends
        return ticket


class Ticket:
    """The slots one request was admitted with: waiting until a generation (or a scoring) starts on one,
    active until it ends. Everything runs on the event loop; `release` is idempotent."""

    def __init__(self, slots: Admission, n: int) -> None:
        self.slots, self.waiting, self.active = slots, n, 0

    def start(self) -> None:
        if self.waiting:  # nothing left after a release: the request is over
            self.waiting -= 1
            self.slots.waiting -= 1
            self.active += 1
            self.slots.active += 1

    def finish(self) -> None:
        if self.active:
            self.active -= 1
            self.slots.active -= 1

    def release(self) -> None:
        self.slots.waiting -= self.waiting
        self.slots.active -= self.active
        self.waiting = self.active = 0


class Guard:
    """Pure ASGI, outside the routes: the API key and the body cap before anything else is read, and the
    admission tickets handed back once the request is over, however it ended."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["path"] != "/health" and self.api_key is not None:
            header = headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                await _respond(
                    send, 401, "invalid or missing API key (Authorization: Bearer <key>)", "invalid_request_error", "invalid_api_key"
                )
                return
        too_large = f"request body over {self.max_body_bytes} bytes"
        length = headers.get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                await _respond(send, 400, "Content-Length is not a number", "invalid_request_error")
                return
            if int(length) > self.max_body_bytes:
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
                if size > self.max_body_bytes:
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


async def while_connected(request: Request, work: Awaitable[T]) -> T:
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
