"""Errors in OpenAI's shape: the exception the routes raise, its JSON body, and the app's handlers that turn
any failure (a bad body, an unknown route, a crash) into one."""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger("halo_pipeline.serving")
UNION_MEMBER = re.compile(
    r"^(str|int|float|bool|list\[.*\]|dict\[.*\]|literal\[.*\]|function-\w+\[.*\]|[A-Z]\w*)$"
)  # pydantic's union tags in a loc
SHUTTING_DOWN = "the server is shutting down; retry against another instance or after it restarts"


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def shutting_down() -> APIError:
    return APIError(503, SHUTTING_DOWN, "server_error", code="server_shutdown")


def add_handlers(app: Any, retry_after_s: int) -> None:
    """Every failure a route can end in, answered as OpenAI does (the details of a crash stay in the log)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import Request

    def error(
        status: int, message: str, type_: str, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None
    ) -> JSONResponse:
        return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        headers = {"Retry-After": str(retry_after_s)} if exc.status in (429, 503) else None
        return error(exc.status, exc.message, exc.type, exc.param, exc.code, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body" and not UNION_MEMBER.match(str(x))]
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
