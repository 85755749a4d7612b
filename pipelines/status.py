"""``agentcpt status RUN_ID`` and ``agentcpt cancel RUN_ID``: read and signal a run through its directory.

Both work from the run directory alone (``status.json``, ``progress.json``, the ``CANCEL``
marker), so they need neither Ray nor the driver's process. A status that says
``running`` while its driver process is gone (killed with ``kill -9``, on this host) is
shown as ``running (driver gone)``: resume it with ``agentcpt run SPEC --run-id ID``.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.progress import total_usage
from pipelines.rundirs import driver_alive
from synth.errors import UsageError
from synth.layout import validate_run_id
from synth.runstate import TERMINAL_STATES, LLMUsage, RunDir, RunProgress, RunStatus


class StatusReport(BaseModel):
    """What ``agentcpt status --json`` prints."""

    model_config = ConfigDict(extra="forbid")
    status: RunStatus
    driver_alive: bool | None = Field(description="null when the run is not running, or ran on another host")
    progress: RunProgress
    llm: LLMUsage = Field(description="LLM usage summed over stages")


def _run_dir(run_id: str, output_dir: str) -> RunDir:
    rd = RunDir(Path(output_dir) / validate_run_id(run_id))
    if not rd.exists():
        raise UsageError(f"run_id: no run {run_id!r} under {output_dir}")
    return rd


def status_report(rd: RunDir) -> StatusReport:
    status = rd.read_status() or RunStatus(run_id=rd.run_id)
    alive: bool | None = None
    if status.state == "running" and status.host == socket.gethostname():
        alive = driver_alive(rd) is not None
    progress = rd.read_progress()
    return StatusReport(status=status, driver_alive=alive, progress=progress, llm=total_usage(progress))


def status_command(run_id: str, output_dir: str = "runs", json: bool = False) -> int:  # noqa: A002 (CLI flag name)
    """Print a run's state, per-stage progress and LLM usage (JSON with ``json=True``)."""
    report = status_report(_run_dir(run_id, output_dir))
    if json:
        print(report.model_dump_json(indent=2))
    else:
        print_status(report, sys.stdout)
    return 0


def print_status(report: StatusReport, out: IO[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = report.status
    state = s.state + (" (driver gone)" if report.driver_alive is False else "")
    console = Console(file=out, width=120)
    console.print(f"run {s.run_id}: [bold]{state}[/bold]" + (f" — {s.error}" if s.error else ""))
    times = [
        f"{k} {v:%Y-%m-%d %H:%M:%S}" for k, v in (("started", s.started_at), ("finished", s.finished_at)) if v
    ]
    if times:
        console.print(", ".join(times) + " UTC")
    table = Table()
    for col in ("stage", "units", "records", "failed", "requests", "tokens", "eta"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for stage, p in report.progress.stages.items():
        total = p.units_total if p.units_total is not None else "?"
        eta = "" if p.finished_at or p.eta_s is None else f"{p.eta_s:.0f}s"
        tokens = p.llm.prompt_tokens + p.llm.completion_tokens
        table.add_row(
            stage,
            f"{p.units_done}/{total}",
            str(p.records),
            str(p.failed),
            str(p.llm.requests),
            str(tokens),
            eta,
        )
    console.print(table)
    u = report.llm
    failures = ", ".join(f"{k} {v}" for k, v in sorted(u.failures.items())) or "none"
    latency = (
        f", latency p50 {u.latency_p50_ms:.0f} ms / p99 {u.latency_p99_ms:.0f} ms"
        if u.latency_p50_ms is not None and u.latency_p99_ms is not None
        else ""
    )
    cost = f", ${u.cost_usd:.4f}" if u.cost_usd is not None else ""
    console.print(
        f"LLM: {u.requests} requests ({u.cache_hits} from cache, {u.retries} retries), "
        f"{u.prompt_tokens} prompt + {u.completion_tokens} completion tokens{latency}{cost}; failures: {failures}"
    )


CancelOutcome = Literal["already_final", "cancelled", "requested"]


def request_cancel(rd: RunDir) -> CancelOutcome:
    """Ask the driver of the run in ``rd`` to stop (the ``CANCEL`` marker it polls).

    ``already_final``: the run had ended, nothing was written. ``cancelled``: no driver was
    running it (never started, or gone from this host), so the cancellation is recorded here.
    ``requested``: a driver runs it (here, or on another host) and stops at its next poll.
    Used by ``agentcpt cancel`` and by the API for runs it did not start.
    """
    status = rd.read_status()
    if status is not None and status.state in TERMINAL_STATES:
        return "already_final"
    rd.request_cancel()
    local = status is not None and status.host == socket.gethostname()
    no_driver = status is None or status.state == "queued" or (local and driver_alive(rd) is None)
    if no_driver:
        # Nobody will act on the marker: record the cancellation ourselves.
        rd.mark("cancelled", "cancelled while no driver was running")
        return "cancelled"
    return "requested"


def cancel_command(run_id: str, output_dir: str = "runs") -> int:
    """Ask the run's driver to stop: it finishes nothing new, cancels in-flight units, marks ``cancelled``."""
    rd = _run_dir(run_id, output_dir)
    outcome = request_cancel(rd)
    if outcome == "already_final":
        status = rd.read_status()
        print(f"run {run_id} is already {status.state if status else 'finished'}")
    elif outcome == "cancelled":
        print(f"run {run_id} cancelled (no driver was running it)")
    else:
        print(f"cancel requested for run {run_id}; its driver stops at its next poll")
    return 0
