"""Bearer-token auth for the control plane, and the start-up checks that go with it.

* Every path but ``/healthz`` needs ``Authorization: Bearer $AGENTCPT_API_TOKEN``, compared
  with ``hmac.compare_digest`` (constant time).
* The dashboard's pages are opened by a browser, which cannot add a header to a
  navigation; it posts the token once in a form and gets a session: a random value per
  login, stored only as a hash, that expires and ends at logout (``api.sessions``), in an
  HttpOnly, SameSite=Strict cookie (Secure behind https). The cookie opens the dashboard,
  the docs and its own forms (with a CSRF token, ``api.csrf``), never the JSON API, so the
  API cannot be driven by cross-site requests.
* Failed attempts (a wrong bearer token, a wrong token in the form) are counted per client
  address; past the limit every attempt from that address is 429 (``api.ratelimit``).
* Without a token the service runs only with ``--insecure-localhost`` on a loopback
  address; placeholder and short tokens are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from pydantic import SecretStr

MIN_TOKEN_CHARS = 16
PLACEHOLDER_TOKENS = frozenset(
    {
        "changeme",
        "change-me",
        "change_me",
        "changethis",
        "secret",
        "token",
        "password",
        "admin",
        "default",
        "test",
    }
)
SESSION_COOKIE = "agentcpt_session"


class InsecureConfigError(ValueError):
    """The service would start without usable authentication."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost' (never for 0.0.0.0 or a hostname)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def checked_token(token: SecretStr | None) -> str | None:
    """The token's value, or None when unset; InsecureConfigError for a placeholder or short one."""
    if token is None:
        return None
    value = token.get_secret_value()
    if not value.strip():
        return None
    if value.strip().lower() in PLACEHOLDER_TOKENS or value.strip().lower().startswith("changeme"):
        raise InsecureConfigError(
            "AGENTCPT_API_TOKEN is a placeholder; set a random value (e.g. openssl rand -hex 32)"
        )
    if len(value) < MIN_TOKEN_CHARS:
        raise InsecureConfigError(
            f"AGENTCPT_API_TOKEN is too short; use at least {MIN_TOKEN_CHARS} characters"
        )
    return value


@dataclass(frozen=True)
class TokenAuth:
    """Checks credentials against one token; ``token=None`` means auth is off (insecure localhost)."""

    token: str | None

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def check_bearer(self, authorization: str | None) -> bool:
        if self.token is None:
            return True
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), self.token.encode())

    def check_token(self, value: str) -> bool:
        """A token typed into the dashboard's form."""
        if self.token is None:
            return True
        return hmac.compare_digest(value.strip().encode(), self.token.encode())

    def presents_credential(self, authorization: str | None) -> bool:
        """Whether a request tried a bearer token at all (only tries count as failed attempts)."""
        return bool(authorization and authorization.strip())

    def fingerprint(self) -> str:
        """Identifies the token without revealing it: sessions proved with another token are void."""
        key = (self.token or "").encode()
        return hmac.new(key, b"agentcpt-session-token-v2", hashlib.sha256).hexdigest()
