"""``/openapi.json``, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), behind auth like every path but /healthz.

Air-gapped: the UI's JavaScript and CSS come from this package, never a CDN. The files are
those of the ``fastapi-offline`` wheel (Swagger UI bundle and CSS, ReDoc standalone), served
from a fixed list under ``/docs/assets/``; Swagger UI is started by ``api/static/swagger-init.js``
because the pages' CSP allows scripts from this server only, never inline ones.

These are GETs that a browser opens, so like the dashboard's pages they accept the
dashboard's session cookie as well as the bearer header.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from api.deps import authorize_browser
from api.errors import not_found

router = APIRouter(include_in_schema=False)

PACKAGE_STATIC = Path(__file__).resolve().parents[1] / "static"
TITLE = "agentcpt control plane"
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
_PAGE_HEADERS = {"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-store"}
_MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png"}


@lru_cache(maxsize=1)
def asset_files() -> dict[str, Path]:
    """Served name -> file. Only these names are ever served (no path comes from the request)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fastapi-offline (the packaged Swagger UI / ReDoc files) is not installed")
    vendored = Path(next(iter(spec.submodule_search_locations))) / "static"
    files = {
        "swagger-ui-bundle.js": vendored / "swagger-ui-bundle.js",
        "swagger-ui.css": vendored / "swagger-ui.css",
        "redoc.standalone.js": vendored / "redoc.standalone.js",
        "favicon.png": vendored / "favicon.png",
        "swagger-init.js": PACKAGE_STATIC / "swagger-init.js",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise RuntimeError(f"docs assets missing: {', '.join(missing)}")
    return files


SWAGGER_HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{TITLE} · API docs</title>
<link rel="icon" type="image/png" href="/docs/assets/favicon.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/swagger-init.js"></script>
</body>
</html>
"""

REDOC_HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{TITLE} · API reference</title>
<link rel="icon" type="image/png" href="/docs/assets/favicon.png">
</head>
<body>
<redoc spec-url="/openapi.json"></redoc>
<script src="/docs/assets/redoc.standalone.js"></script>
</body>
</html>
"""


@router.get("/openapi.json")
def openapi_json(request: Request) -> Response:
    authorize_browser(request)
    return JSONResponse(request.app.openapi())


@router.get("/docs")
def swagger_ui(request: Request) -> Response:
    authorize_browser(request)
    return HTMLResponse(SWAGGER_HTML, headers=_PAGE_HEADERS)


@router.get("/redoc")
def redoc(request: Request) -> Response:
    authorize_browser(request)
    return HTMLResponse(REDOC_HTML, headers=_PAGE_HEADERS)


@router.get("/docs/assets/{name}")
def docs_asset(request: Request, name: str) -> Response:
    authorize_browser(request)
    path = asset_files().get(name)
    if path is None:
        raise not_found(f"asset {name!r}", "name")
    return FileResponse(
        path,
        media_type=_MEDIA_TYPES[path.suffix],
        headers={"Cache-Control": "private, max-age=86400"},
    )
