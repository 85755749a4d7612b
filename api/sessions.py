"""Dashboard sessions: a random value per login, stored as a hash, expiring, ended at logout.

The cookie holds ``secrets.token_urlsafe(32)`` (256 bits); the job store keeps only its
sha256, so a copy of the database opens no browser session. A session is valid while it
has not expired and was proved with the API token in force now (rotating the token ends
every session). Sessions live in the job store, so they survive an API restart and are
shared by several API processes over one database.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from api.db import SessionRow
from synth.records import utc_now

SESSION_COOKIE = "agentcpt_session"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class SessionStore:
    """Create, check and end dashboard sessions of one job store."""

    def __init__(self, sessions: sessionmaker[Session], ttl_s: int, token_fingerprint: str) -> None:
        self._db = sessions
        self.ttl_s = ttl_s
        self._fingerprint = token_fingerprint

    def create(self) -> str:
        """A new session; returns the cookie value (the only place it exists in clear)."""
        value = secrets.token_urlsafe(32)
        now = utc_now()
        with self._db() as s:
            s.execute(delete(SessionRow).where(SessionRow.expires_at <= now))  # housekeeping
            s.add(
                SessionRow(
                    id_sha256=_digest(value),
                    token_fingerprint=self._fingerprint,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.ttl_s),
                )
            )
            s.commit()
        return value

    def check(self, value: str | None) -> bool:
        """Whether ``value`` (a cookie) is a live session proved with the current token."""
        if not value or len(value) > 128:
            return False
        with self._db() as s:
            row = s.get(SessionRow, _digest(value))
        return (
            row is not None
            and row.expires_at > utc_now()
            and hmac.compare_digest(row.token_fingerprint, self._fingerprint)
        )

    def end(self, value: str | None) -> None:
        """Logout: the session is deleted, so its cookie opens nothing any more."""
        if not value or len(value) > 128:
            return
        with self._db() as s:
            s.execute(delete(SessionRow).where(SessionRow.id_sha256 == _digest(value)))
            s.commit()
