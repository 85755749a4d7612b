"""The dashboard: server-rendered HTML over the same services as the JSON API.

No JavaScript and no front-end build: pages are Jinja2 templates with autoescaping on
(everything from a run — names, errors, sample text — is escaped), and a strict CSP that
forbids scripts altogether. A page of a running run refreshes itself every few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api.deps import AppContext, get_ctx
from api.errors import ApiError
from api.security import SESSION_COOKIE
from api.services.run_data import read_samples, read_stats
from synth.errors import SpecError
from synth.records import Record
from synth.runstate import TERMINAL_STATES
from synth.stages import get_stage, stage_names

router = APIRouter(include_in_schema=False)

SAMPLES_PER_PAGE = 5
MAX_SAMPLE_CHARS = 20_000
REFRESH_S = 3
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _render(ctx: AppContext, name: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    html = ctx.templates.get_template(name).render(css=ctx.css, auth_enabled=ctx.auth.enabled, **values)
    return HTMLResponse(html, status_code=status_code, headers=_HEADERS)


def _authorized(request: Request, ctx: AppContext) -> bool:
    return ctx.auth.check_bearer(request.headers.get("authorization")) or ctx.auth.check_session(
        request.cookies.get(SESSION_COOKIE)
    )


def _safe_next(value: str | None) -> str:
    """Only same-site paths: '/x' yes; '//evil.example', '/\\evil', 'http://…' no."""
    if not value or not value.startswith("/") or value.startswith("//") or value.startswith("/\\"):
        return "/"
    return value


def _login_page(ctx: AppContext, request: Request, message: str | None = None) -> HTMLResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return _render(ctx, "login.html", status_code=401, next=_safe_next(target), message=message)


def sample_text(record: Record) -> str:
    """What a reader wants to see of a record: its rendered text, else its main field, else JSON."""
    for name in ("text", "statement", "question"):
        value = getattr(record, name, None)
        if isinstance(value, str) and value:
            break
    else:
        value = json.dumps(record.model_dump(mode="json"), indent=2, ensure_ascii=False)
    if len(value) > MAX_SAMPLE_CHARS:
        value = value[:MAX_SAMPLE_CHARS] + f"\n… ({len(value) - MAX_SAMPLE_CHARS} more characters)"
    return value


@router.get("/")
def runs_page(request: Request, offset: int = 0) -> Response:
    ctx = get_ctx(request)
    if not _authorized(request, ctx):
        return _login_page(ctx, request)
    offset = max(0, min(offset, 1_000_000_000))
    views, count = ctx.runs.list(limit=50, offset=offset)
    runs = [v.public() for v in views]
    active = any(r.state not in TERMINAL_STATES for r in runs)
    return _render(
        ctx,
        "runs.html",
        runs=runs,
        count=count,
        offset=offset,
        limit=50,
        refresh_s=REFRESH_S if active else None,
    )


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: str, stage: str | None = None, offset: int = 0) -> Response:
    ctx = get_ctx(request)
    if not _authorized(request, ctx):
        return _login_page(ctx, request)
    try:
        view = ctx.runs.get(run_id)
    except SpecError as err:
        return _render(ctx, "error.html", status_code=422, message=err.message)
    except ApiError as err:
        return _render(ctx, "error.html", status_code=err.status_code, message=err.message)
    run = view.public()
    stats = read_stats(Path(view.row.run_dir))
    with_rows = [s.stage for s in stats.stages if s.rows]
    if stage not in stage_names() or stage not in with_rows:
        stage = with_rows[0] if with_rows else None
    offset = max(0, min(offset, 1_000_000_000))
    samples = read_samples(Path(view.row.run_dir), stage, SAMPLES_PER_PAGE, offset) if stage else None
    shown = [
        {
            "id": rec.id,
            "summary": {f: getattr(rec, f, None) for f in get_stage(rec.stage).summary_fields},
            "text": sample_text(rec),
        }
        for rec in (samples.data if samples else [])
    ]
    return _render(
        ctx,
        "run.html",
        run=run,
        progress={p.stage: p for p in run.stages},
        stats={s.stage: s for s in stats.stages},
        stage_order=[s for s in stage_names() if s in {p.stage for p in run.stages} or s in with_rows],
        sample_stages=with_rows,
        stage=stage,
        samples=shown,
        sample_count=samples.count if samples else 0,
        offset=offset,
        per_page=SAMPLES_PER_PAGE,
        refresh_s=REFRESH_S if run.state not in TERMINAL_STATES else None,
    )


@router.post("/login")
async def login(request: Request) -> Response:
    """The dashboard's token form: a right token sets the session cookie and goes back."""
    ctx = get_ctx(request)
    body = await request.body()
    form = parse_qs(body.decode("utf-8", errors="replace")[:10_000])
    token = (form.get("token") or [""])[0]
    target = _safe_next((form.get("next") or ["/"])[0])
    if not ctx.auth.check_token(token):
        return _render(ctx, "login.html", status_code=401, next=target, message="wrong token")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        ctx.auth.session_value(),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
