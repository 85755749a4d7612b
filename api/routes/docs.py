"""``/openapi.json`` and ``/docs`` (Swagger UI), behind auth like every path but /healthz.

Both are read-only GETs that a browser opens, so like the dashboard's pages they accept
the dashboard's session cookie as well as the bearer header.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response

from api.deps import get_ctx
from api.errors import unauthorized
from api.security import SESSION_COOKIE

router = APIRouter(include_in_schema=False)


def _check(request: Request) -> None:
    ctx = get_ctx(request)
    if not (
        ctx.auth.check_bearer(request.headers.get("authorization"))
        or ctx.auth.check_session(request.cookies.get(SESSION_COOKIE))
    ):
        raise unauthorized()


@router.get("/openapi.json")
def openapi_json(request: Request) -> Response:
    _check(request)
    return JSONResponse(request.app.openapi())


@router.get("/docs")
def swagger_ui(request: Request) -> Response:
    _check(request)
    return get_swagger_ui_html(openapi_url="/openapi.json", title="agentcpt control plane")
