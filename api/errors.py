"""One error body everywhere: ``{"error": {"code", "message", "field"}}``.

Handlers are installed for our own ``ApiError``, for FastAPI's request validation, for
Starlette's HTTP exceptions (unknown path, wrong method) and for ``SpecError``, so a client
never sees FastAPI's default ``{"detail": ...}`` shape. Anything a client can send ends
in a 4xx; a 500 means a bug of ours, and still has the same shape (never a traceback).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import ErrorBody, ErrorDetail
from synth.errors import IntegrityError, SpecError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error with its HTTP status, a short machine code, a message and the field it concerns."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


def not_found(what: str, field: str | None = None) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found", field)


def conflict(message: str, field: str | None = None) -> ApiError:
    return ApiError(409, "conflict", message, field)


def unauthorized(message: str = "missing or invalid bearer token") -> ApiError:
    return ApiError(401, "unauthorized", message, None, headers={"WWW-Authenticate": "Bearer"})


def error_response(
    status_code: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, field=field))
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


def loc_to_field(loc: tuple[Any, ...] | list[Any]) -> str:
    """('query', 'limit') → 'limit'; ('body', 'stages', 'planning', 'k') → 'stages.planning.k'."""
    parts: list[str] = []
    for i, item in enumerate(loc):
        if i == 0 and item in ("body", "query", "path", "header", "cookie"):
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.code, exc.message, exc.field, exc.headers)


async def _spec_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SpecError)
    return error_response(422, "invalid_spec", exc.message, exc.field or None)


async def _integrity_error(_: Request, exc: Exception) -> JSONResponse:
    # Stored data failed its own check (a shard whose bytes no longer match the manifest's
    # sha256): the run's state conflicts with reading it. The message names the file.
    log.error("%s", exc)
    return error_response(409, "corrupt_shard", str(exc))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if not errors:
        return error_response(422, "validation_error", "invalid request")
    first = errors[0]
    field = loc_to_field(tuple(first.get("loc", ())))
    return error_response(422, "validation_error", str(first.get("msg", "invalid value")), field or None)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, None, getattr(exc, "headers", None))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # A bug of ours: log it with its traceback, answer with the common shape and no internals.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(SpecError, _spec_error)
    app.add_exception_handler(IntegrityError, _integrity_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
