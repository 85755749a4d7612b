"""A run's state on disk: status, per-stage progress, LLM accounting, the cancel marker.

The driver (pipelines/) writes these files atomically; the CLI and the API only read
them, so the API can restart at any time and lose nothing. Files under a run directory::

    status.json     RunStatus: state, timing, error, driver pid, host
    progress.json   RunProgress: per-stage units/records done/total/failed, tokens
    CANCEL          present = cancellation requested (the driver polls for it)
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synth.layout import RunLayout
from synth.records import utc_now
from synth.shards import atomic_write_bytes

M = TypeVar("M", bound=BaseModel)

RunState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class LLMUsage(BaseModel):
    """Token and request accounting of one stage (or a whole run)."""

    model_config = ConfigDict(extra="forbid")
    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    failures: dict[str, int] = Field(default_factory=dict, description="failed requests by error kind")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = Field(0, description="of completion_tokens, spent on a thinking model's reasoning")
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_histogram: dict[int, int] = Field(
        default_factory=dict,
        description="successful-attempt latency, synth.llm.accounting bucket index -> count; sums exactly "
        "across workers and sessions (the API exposes it as a Prometheus histogram in seconds)",
    )
    cost_usd: float | None = None


class StageProgress(BaseModel):
    model_config = ConfigDict(extra="forbid")
    units_done: int = 0
    units_total: int | None = Field(None, description="null until the stage's input is known")
    records: int = 0
    failed: int = 0
    llm: LLMUsage = Field(default_factory=LLMUsage)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    eta_s: float | None = None


class RunProgress(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stages: dict[str, StageProgress] = Field(default_factory=dict)
    updated_at: datetime = Field(default_factory=utc_now)


class RunStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run_id: str
    name: str = ""
    state: RunState = "queued"
    created_at: datetime = Field(default_factory=utc_now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    pid: int | None = None
    host: str | None = None
    driver_since: datetime | None = Field(
        None, description="when the current driver (pid) took the run: a resumed run keeps started_at"
    )
    ray_address: str | None = None

    def may_be_driver(self, process_created: float) -> bool:
        """Whether a process created at ``process_created`` (epoch s) can be the driver recorded here.

        The driver stamps the status right after it starts, so it is never younger than its
        stamp; a younger process holds a reused pid.
        """
        since = self.driver_since or self.started_at
        return since is None or process_created <= since.timestamp() + 1.0


class RunDir:
    """Typed access to the state files of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.layout = RunLayout(self.path)

    @property
    def run_id(self) -> str:
        return self.path.name

    def exists(self) -> bool:
        return self.layout.spec.exists() or self.layout.status.exists()

    # status ------------------------------------------------------------------
    def read_status(self) -> RunStatus | None:
        return _read_model(self.layout.status, RunStatus)

    def write_status(self, status: RunStatus) -> None:
        atomic_write_bytes(self.layout.status, status.model_dump_json(indent=2).encode())

    def mark(self, state: RunState, error: str | None = None) -> RunStatus:
        """Move the run to ``state`` (stamping start/finish times and this process as driver)."""
        status = self.read_status() or RunStatus(run_id=self.run_id)
        status.state = state
        now = utc_now()
        if state == "running":
            status.started_at = status.started_at or now
            status.finished_at = None
            status.error = None
            status.pid = os.getpid()
            status.host = socket.gethostname()
            status.driver_since = now
        if state in TERMINAL_STATES:
            status.finished_at = now
            status.error = error
        self.write_status(status)
        return status

    # progress ----------------------------------------------------------------
    def read_progress(self) -> RunProgress:
        return _read_model(self.layout.progress, RunProgress) or RunProgress()

    def write_progress(self, progress: RunProgress) -> None:
        progress.updated_at = utc_now()
        atomic_write_bytes(self.layout.progress, progress.model_dump_json(indent=2).encode())

    # cancellation ------------------------------------------------------------
    def request_cancel(self) -> None:
        atomic_write_bytes(self.layout.cancel, json.dumps({"requested_at": utc_now().isoformat()}).encode())

    def cancel_requested(self) -> bool:
        return self.layout.cancel.exists()

    def clear_cancel(self) -> None:
        self.layout.cancel.unlink(missing_ok=True)


def _read_model(path: Path, model: type[M]) -> M | None:
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValidationError:
        # A file from another version of agentcpt: treat as unknown rather than crash a reader.
        return None
