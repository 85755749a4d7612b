"""The dashboard: server-rendered HTML over the same services as the JSON API.

No JavaScript and no front-end build: pages are Jinja2 templates with autoescaping on
(everything from a run — names, errors, sample text — is escaped), and a strict CSP that
forbids scripts altogether. A page of a running run refreshes itself every few seconds.

A browser logs in by posting the token (``/login``) and gets a session cookie
(``api.sessions``); every form (login, logout, cancel) carries a CSRF token
(``api.csrf``), and failed logins count against the client's address (``api.ratelimit``).
Runs started from the CLI are listed too, with a ``cli`` badge, and can be cancelled here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from api.csrf import CSRF_FIELD, check_csrf, csrf_token, new_csrf_token, set_csrf_cookie
from api.deps import AppContext, browser_ok, check_auth_attempt, client_address, get_ctx
from api.errors import ApiError
from api.services.run_charts import run_charts
from api.services.run_data import read_samples, read_stats
from api.sessions import SESSION_COOKIE
from synth.errors import IntegrityError, SpecError
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


def _render(
    ctx: AppContext, request: Request, name: str, status_code: int = 200, **values: Any
) -> HTMLResponse:
    """A page, with this browser's CSRF token in its forms and in its cookie."""
    token = csrf_token(request)
    html = ctx.templates.get_template(name).render(
        css=ctx.css, auth_enabled=ctx.auth.enabled, csrf_field=CSRF_FIELD, csrf_token=token, **values
    )
    response = HTMLResponse(html, status_code=status_code, headers=_HEADERS)
    set_csrf_cookie(response, request, token)
    return response


def _authorized(request: Request, ctx: AppContext) -> bool:
    return browser_ok(request)


async def _form(request: Request) -> dict[str, str]:
    """The first value of each field of a urlencoded form (the body is bounded by the middleware)."""
    body = await request.body()
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", errors="replace")[:10_000]).items() if v}


def _safe_next(value: str | None) -> str:
    """Only same-site paths: '/x' yes; '//evil.example', '/\\evil', 'http://…' no."""
    if not value or not value.startswith("/") or value.startswith("//") or value.startswith("/\\"):
        return "/"
    return value


def _login_page(ctx: AppContext, request: Request, message: str | None = None) -> HTMLResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return _render(ctx, request, "login.html", status_code=401, next=_safe_next(target), message=message)


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
        request,
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
        return _render(ctx, request, "error.html", status_code=422, message=err.message)
    except ApiError as err:
        return _render(ctx, request, "error.html", status_code=err.status_code, message=err.message)
    run = view.public()
    try:
        stats = read_stats(Path(view.row.run_dir))
        with_rows = [s.stage for s in stats.stages if s.rows]
        if stage not in stage_names() or stage not in with_rows:
            stage = with_rows[0] if with_rows else None
        offset = max(0, min(offset, 1_000_000_000))
        samples = read_samples(Path(view.row.run_dir), stage, SAMPLES_PER_PAGE, offset) if stage else None
    except IntegrityError as err:  # a shard that fails its manifest check: say which one
        return _render(ctx, request, "error.html", status_code=409, message=str(err))
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
        request,
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
        charts=run_charts(Path(view.row.run_dir), stats),
    )


def _forbidden(ctx: AppContext, request: Request) -> HTMLResponse:
    message = "the form expired or did not come from this dashboard; reload the page and try again"
    return _render(ctx, request, "error.html", status_code=403, message=message)


@router.post("/login")
async def login(request: Request) -> Response:
    """The dashboard's token form: a right token starts a session and goes back."""
    ctx = get_ctx(request)
    form = await _form(request)
    target = _safe_next(form.get("next", "/"))
    if not check_csrf(request, form.get(CSRF_FIELD)):
        return _forbidden(ctx, request)
    token = form.get("token", "")
    try:
        check_auth_attempt(request, ctx, token or None)
    except ApiError as err:
        response = _render(ctx, request, "login.html", status_code=429, next=target, message=err.message)
        response.headers.update(err.headers or {})
        return response
    if not ctx.auth.check_token(token):
        ctx.limiter.failed(client_address(request))
        return _render(ctx, request, "login.html", status_code=401, next=target, message="wrong token")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        await run_in_threadpool(ctx.sessions.create),
        max_age=ctx.sessions.ttl_s,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    set_csrf_cookie(response, request, new_csrf_token())  # a fresh token per session
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Ends the session (deleted from the store: the old cookie opens nothing) and clears the cookie."""
    ctx = get_ctx(request)
    form = await _form(request)
    if not check_csrf(request, form.get(CSRF_FIELD)):
        return _forbidden(ctx, request)
    await run_in_threadpool(ctx.sessions.end, request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.post("/runs/{run_id}/cancel")
async def cancel_from_page(request: Request, run_id: str) -> Response:
    """The run page's Cancel button (any run, CLI-started ones included)."""
    ctx = get_ctx(request)
    form = await _form(request)
    if not await run_in_threadpool(_authorized, request, ctx):
        return _login_page(ctx, request)
    if not check_csrf(request, form.get(CSRF_FIELD)):
        return _forbidden(ctx, request)
    try:
        await run_in_threadpool(ctx.runs.cancel, run_id)
    except SpecError as err:
        return _render(ctx, request, "error.html", status_code=422, message=err.message)
    except ApiError as err:
        return _render(ctx, request, "error.html", status_code=err.status_code, message=err.message)
    return RedirectResponse(f"/runs/{quote(run_id)}", status_code=303)
