"""CSRF protection for the dashboard's forms (login, logout, cancel): a double-submit token.

Every HTML page carries a random token in an HttpOnly, SameSite=Strict cookie and the same
value in a hidden field of each form; a form post is accepted only when the two match
(constant-time) and, when the browser says where it comes from (``Origin``), it comes from
this site. Another site can neither read the cookie nor make the browser send it, so it
cannot post a matching pair. The token is renewed at login.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from fastapi import Request
from starlette.responses import Response

CSRF_COOKIE = "agentcpt_csrf"
CSRF_FIELD = "csrf_token"


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_token(request: Request) -> str:
    """The token of this browser (from its cookie), or a new one when it has none."""
    current = request.cookies.get(CSRF_COOKIE)
    if current and 20 <= len(current) <= 128:
        return current
    return new_csrf_token()


def set_csrf_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        # Absent, or "null": Chrome sends "null" on same-origin posts from pages with
        # Referrer-Policy: no-referrer (ours). The token decides; a cross-site page cannot
        # have it, and its request carries no cookie (SameSite=Strict).
        return True
    parts = urlsplit(origin)
    return parts.netloc.lower() == (request.headers.get("host") or "").lower()


def check_csrf(request: Request, submitted: str | None) -> bool:
    """Whether a form post carries this browser's token and comes from this site."""
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not submitted or not _same_origin(request):
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())
