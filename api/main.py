"""The control plane app (``create_app``) and ``agentcpt serve`` (``serve_command``).

``create_app`` does all the work that touches the outside (database engine, data dir),
so importing this module has no side effects and tests build apps with their own
settings. Runs execute out of this process (see ``api.services.launchers``); the app
holds only the job store and reads run directories, so it can restart at any time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from jinja2 import Environment, FileSystemLoader, select_autoescape

from api.db import default_database_url, make_engine, make_session_factory
from api.deps import AppContext
from api.errors import install_error_handlers
from api.metrics import ApiMetrics, MetricsMiddleware
from api.middleware import BodyLimitMiddleware, SecurityHeadersMiddleware
from api.ratelimit import FailedAuthLimiter
from api.routes import dashboard, docs, ops, runs
from api.security import InsecureConfigError, TokenAuth, checked_token, is_loopback
from api.services.launchers import LauncherRegistry, RunLauncher
from api.services.runs import RunService
from api.sessions import SessionStore
from api.settings import ApiSettings, get_api_settings
from synth.settings import Settings
from synth.spec import RunSpec

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
API_VERSION = "1"

DESCRIPTION = """\
Submit agentic CPT data-synthesis runs, follow their progress, and read what they produced.

Every path but `/healthz` needs `Authorization: Bearer $AGENTCPT_API_TOKEN`. Errors have one
shape: `{"error": {"code", "message", "field"}}`; `field` names the offending spec key or
parameter (`stages.planning.judge`, `limit`).
"""


def create_app(
    settings: ApiSettings | Settings | None = None,
    *,
    insecure_localhost: bool = False,
    launchers: Callable[[str, str | None], RunLauncher] | None = None,
) -> FastAPI:
    """Build the app for ``settings`` (default: ``get_api_settings()``; plain ``Settings`` are
    completed with the API's own settings from the environment).

    Raises ``InsecureConfigError`` when there is no token and ``insecure_localhost`` is
    False, or when the token is a placeholder. ``launchers(backend, ray_address)`` may be
    given to replace how drivers start (tests of the HTTP surface that must not start runs).
    """
    if settings is None:
        settings = get_api_settings()
    elif not isinstance(settings, ApiSettings):
        settings = ApiSettings(**settings.model_dump(exclude_unset=True))
    token = checked_token(settings.api_token)
    if token is None and not insecure_localhost:
        raise InsecureConfigError(
            "AGENTCPT_API_TOKEN is not set; set it, or pass --insecure-localhost to serve without auth on loopback"
        )
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url or default_database_url(data_dir))
    registry = launchers or LauncherRegistry()
    db_sessions = make_session_factory(engine)
    run_service = RunService(
        db_sessions,
        data_dir,
        registry,
        endpoints=settings.llm_endpoints,
        ray_address=settings.ray_address,  # AGENTCPT_RAY_ADDRESS; a submitted spec never chooses one
    )
    metrics = ApiMetrics(run_service, retention_s=settings.metrics_retention_s)
    auth = TokenAuth(token)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        close = getattr(registry, "close", None)
        if close is not None:
            close()
        engine.dispose()

    app = FastAPI(
        title="agentcpt control plane",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        # The schema and the docs are served by api.routes.docs, behind auth like every path.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        openapi_tags=[
            {"name": "runs", "description": "data-synthesis runs"},
            {"name": "ops", "description": "health and metrics"},
        ],
    )
    app.state.ctx = AppContext(
        settings=settings,
        data_dir=data_dir,
        auth=auth,
        runs=run_service,
        metrics=metrics,
        sessions=SessionStore(db_sessions, settings.session_ttl_s, auth.fingerprint()),
        limiter=FailedAuthLimiter(settings.auth_failures_per_window, settings.auth_failure_window_s),
        templates=Environment(
            loader=FileSystemLoader(PACKAGE_DIR / "templates"), autoescape=select_autoescape(default=True)
        ),
        css=(PACKAGE_DIR / "static" / "dashboard.css").read_text(encoding="utf-8"),
    )
    install_error_handlers(app)
    # Added last = outermost: the metrics see every response, the security headers go on
    # every response (the body limit's 413s too), and the body limit answers before anything
    # inside buffers a body.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(ops.router)
    app.include_router(runs.router)
    app.include_router(dashboard.router)
    app.include_router(docs.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus ``RunCreate`` (the run spec), which the create route parses itself."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    spec_schema = RunSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in spec_schema.pop("$defs", {}).items():
        if name in components and components[name] != definition:
            raise RuntimeError(f"OpenAPI component name clash: {name}")
        components[name] = definition
    components["RunCreate"] = {**spec_schema, "title": "RunCreate"}
    # FastAPI documents its own 422 body ({"detail": [...]}); ours is ErrorBody everywhere.
    error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for operations in schema.get("paths", {}).values():
        for op in operations.values():
            if isinstance(op, dict) and "422" in op.get("responses", {}):
                op["responses"]["422"]["content"] = error_content
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    app.openapi_schema = schema
    return schema


def serve_command(host: str = "127.0.0.1", port: int = 8000, insecure_localhost: bool = False) -> int:
    """``agentcpt serve``: run the control plane with uvicorn until interrupted.

    Refuses (exit 2) to start without a token unless ``--insecure-localhost`` is given and
    ``host`` is a loopback address.
    """
    import uvicorn
    from pydantic import ValidationError

    from synth.errors import UsageError

    if insecure_localhost and not is_loopback(host):
        raise UsageError(
            f"--insecure-localhost serves without auth, so only on a loopback address (not {host})"
        )
    try:
        app = create_app(get_api_settings(), insecure_localhost=insecure_localhost)
    except InsecureConfigError as err:
        raise UsageError(str(err)) from None
    except ValidationError as err:  # a malformed AGENTCPT_* setting (endpoint list, Ray address)
        first = err.errors()[0]
        loc = first.get("loc", ())
        where = f"AGENTCPT_{str(loc[0]).upper()}" if loc else "settings"
        raise UsageError(f"{where}: {first.get('msg')}") from None
    if not app.state.ctx.auth.enabled:
        log.warning("serving WITHOUT authentication on %s:%d (--insecure-localhost)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
    return 0
