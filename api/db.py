"""The job store: one table of runs, through SQLAlchemy 2.

SQLite under the data dir by default; any SQLAlchemy URL works (``postgresql+psycopg://…``)
because nothing here is dialect-specific beyond the SQLite connection pragmas. The store
holds what the run directory cannot: how the driver was launched (backend, pid, Ray
submission id, log file). The run's progress stays in the run directory, which the driver
owns; the store caches the last reconciled state for listing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, Float, Integer, String, Text, create_engine, event, inspect, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from synth.records import utc_now


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset otherwise)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class RunRow(Base):
    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)
    backend: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now, onupdate=utc_now)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    run_dir: Mapped[str] = mapped_column(Text)
    spec_path: Mapped[str] = mapped_column(Text)
    log_path: Mapped[str] = mapped_column(Text)
    ray_address: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Identity of the launched driver: pid + process start time (guards against pid reuse),
    # or the Ray Jobs submission id.
    driver_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    driver_started: Mapped[float | None] = mapped_column(Float, nullable=True)
    driver_job_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    # Set by a cancel request, cleared by resume. The driver clears the CANCEL marker when
    # it starts, so a cancel sent while the run is still queued is re-issued on reconcile.
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # "api": submitted over HTTP, launched by the API. "cli": found under an output dir
    # (agentcpt run, make synth); the API only reads and cancels it, its driver is not ours.
    source: Mapped[str] = mapped_column(String(8), default="api", server_default="api")


class SessionRow(Base):
    """A logged-in dashboard browser. Only a hash of the cookie value is stored."""

    __tablename__ = "sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Which API token the login proved: a session dies when the operator rotates the token.
    token_fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utc_now)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


# Columns added after the first release, as (table, column, DDL type and default): a job
# store created by an older version gets them on start (create_all only adds tables).
_ADDED_COLUMNS = (("runs", "source", "VARCHAR(8) NOT NULL DEFAULT 'api'"),)


def _add_missing_columns(engine: Engine) -> None:
    inspector = inspect(engine)
    for table, column, ddl in _ADDED_COLUMNS:
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))


def default_database_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'agentcpt-api.sqlite3').resolve()}"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite, creates the parent directory and enables WAL."""
    kwargs: dict[str, Any] = {}
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        # Handlers run in a thread pool; SQLite's default would refuse cross-thread use.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=not is_sqlite, **kwargs)
    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets readers proceed while a reconcile writes (the bench runs 200 readers).
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


def make_session_factory(engine: Engine) -> sessionmaker:
    Base.metadata.create_all(engine)
    _add_missing_columns(engine)
    return sessionmaker(engine, expire_on_commit=False)
