"""What handlers depend on, as ``Annotated`` aliases so signatures read like sentences."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from jinja2 import Environment

from api.errors import ApiError, unauthorized
from api.metrics import ApiMetrics
from api.ratelimit import FailedAuthLimiter
from api.security import TokenAuth
from api.services.runs import RunService
from api.sessions import SESSION_COOKIE, SessionStore
from api.settings import ApiSettings
from synth.layout import RUN_ID_RE
from synth.stages import stage_names


@dataclass
class AppContext:
    settings: ApiSettings
    data_dir: Path
    auth: TokenAuth
    runs: RunService
    metrics: ApiMetrics
    templates: Environment
    sessions: SessionStore
    limiter: FailedAuthLimiter
    css: str = ""


# Dependencies that do no blocking work are `async def`: FastAPI runs sync dependencies in
# the thread pool, and each hop costs more than the check itself (measured: bench/api.py).


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


async def ctx_dep(request: Request) -> AppContext:
    return request.app.state.ctx


async def get_runs(request: Request) -> RunService:
    return get_ctx(request).runs


# Declared so that OpenAPI shows the bearer scheme; the check itself is `require_token`.
bearer_scheme = HTTPBearer(auto_error=False, description="AGENTCPT_API_TOKEN", scheme_name="bearer")


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def too_many_attempts(retry_after_s: int) -> ApiError:
    return ApiError(
        429,
        "too_many_requests",
        f"too many failed authentication attempts from this address; retry in {retry_after_s} s",
        headers={"Retry-After": str(retry_after_s)},
    )


def check_auth_attempt(request: Request, ctx: AppContext, credential: str | None) -> None:
    """429 when this client is locked out and presents a credential (``api.ratelimit``)."""
    if ctx.auth.enabled and credential:
        retry = ctx.limiter.retry_after_s(client_address(request))
        if retry is not None:
            raise too_many_attempts(retry)


def bearer_ok(request: Request) -> bool:
    """Whether the request's bearer token is right; a wrong one counts against its address."""
    ctx = get_ctx(request)
    header = request.headers.get("authorization")
    check_auth_attempt(request, ctx, header)
    if ctx.auth.check_bearer(header):
        return True
    if ctx.auth.presents_credential(header):
        ctx.limiter.failed(client_address(request))
    return False


def browser_ok(request: Request) -> bool:
    """Bearer header, or a live dashboard session (the dashboard's pages, the docs)."""
    ctx = get_ctx(request)
    return bearer_ok(request) or ctx.sessions.check(request.cookies.get(SESSION_COOKIE))


def authorize_browser(request: Request) -> None:
    if not browser_ok(request):
        raise unauthorized()


async def require_token(
    request: Request, _creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> None:
    """401 unless the request carries the right bearer token (constant-time comparison); 429
    for an address with too many recent failures."""
    if not bearer_ok(request):
        raise unauthorized()


def _declared_query_names(dependant: Any) -> set[str]:
    """Query parameter names of a route, its dependencies included."""
    names: set[str] = set()
    stack = [dependant]
    while stack:
        current = stack.pop()
        names.update(p.alias for p in current.query_params)
        stack.extend(current.dependencies)
    return names


async def reject_unknown_query(request: Request) -> None:
    """422 for a query parameter the route does not declare (a typo must not be ignored silently)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = _declared_query_names(dependant)
    for name in request.query_params:
        if name not in known:
            raise ApiError(422, "validation_error", f"unknown query parameter {name!r}", name or "query")


async def read_spec_body(request: Request) -> Any:
    """The request body as JSON (any content type), bounded in size; 413/422 otherwise."""
    body = await request.body()  # bounded by BodyLimitMiddleware (settings.max_body_bytes)
    if not body.strip():
        raise ApiError(422, "invalid_spec", "the request body must be a run spec (JSON object)")
    try:
        data = json.loads(body)
        # Lone surrogates parse but cannot be written anywhere (YAML, SQLite, logs).
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (json.JSONDecodeError, UnicodeError, RecursionError) as err:
        raise ApiError(422, "invalid_spec", f"the request body is not valid JSON: {err}") from None
    return data


RunServiceDep = Annotated[RunService, Depends(get_runs)]
ContextDep = Annotated[AppContext, Depends(ctx_dep)]
SpecBody = Annotated[Any, Depends(read_spec_body)]
RunId = Annotated[
    str,
    PathParam(
        pattern=RUN_ID_RE.pattern,
        max_length=128,
        description="run id (letters, digits, '.', '_', '-')",
        examples=["quickstart-20250101-120000-1a2b3c"],
    ),
]
StageName = Literal[stage_names()]  # type: ignore[valid-type]
