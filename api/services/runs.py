"""Runs: create, list, get, cancel, resume — and reconciling their state with reality.

Who owns what:

* the **driver** (``agentcpt run``, out of the API process) owns ``status.json`` and
  ``progress.json`` while it lives;
* the **API** writes ``status.json`` only when no driver lives: ``queued`` before it
  launches one (create, resume), and ``failed``/``cancelled`` when its driver died without
  a final state;
* the **job store** remembers how each driver was launched and caches the last
  reconciled state for listing.

Reconciliation happens on read: the state is the run directory's when it is final;
otherwise the driver is probed (process or Ray job), and a driver that is gone without a
final state makes the run ``failed`` (``cancelled`` if a cancel was pending), with the tail
of its log in ``error``.

Runs the API did not start (``agentcpt run``, ``make synth``) are found under the output
dirs (``api.services.discovery``) and kept in the store with ``source="cli"``: they are
listed, read and cancelled like the others, but their directory is the only truth about
them (the API never writes their status), they cannot be resumed over HTTP (their spec was
never checked against the data dir and the endpoint list), and they leave the store when
their directory is deleted. An API run whose directory is deleted reads as ``failed``.

Specs submitted over HTTP are bound to the operator's endpoints and cluster first
(``api.services.endpoints``), then confined to the data dir (``api.services.specs``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api.db import RunRow
from api.errors import ApiError, conflict, not_found
from api.schemas import RunPublic, StageProgressPublic, TokenTotals
from api.services.discovery import scan_output_dirs
from api.services.endpoints import bind_spec
from api.services.launchers import DriverHandle, DriverProbe, LaunchRequest, RunLauncher, pid_is_driver
from api.services.specs import confine_spec
from api.settings import LLMEndpoint
from pipelines.rundirs import driver_alive, write_new_run_dir
from pipelines.status import request_cancel
from synth.layout import RunLayout, new_run_id, validate_run_id
from synth.llm.config import EMBEDDED
from synth.records import utc_now
from synth.runstate import TERMINAL_STATES, RunDir, RunProgress, RunStatus
from synth.spec import parse_spec
from synth.stages import stage_names

_ACTIVE = ("queued", "running")


@dataclass
class RunView:
    """A run's row together with what its directory says, ready to publish."""

    row: RunRow
    status: RunStatus | None
    progress: RunProgress
    cancel_requested: bool

    def public(self) -> RunPublic:
        return to_public(self)


class RunService:
    """The runs of one data dir, backed by the job store and the run directories."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        data_dir: Path,
        launchers: Callable[[str, str | None], RunLauncher],
        *,
        endpoints: Sequence[LLMEndpoint] = (LLMEndpoint(base_url=EMBEDDED),),
        ray_address: str | None = None,
    ) -> None:
        """``launchers(backend, ray_address)`` returns the launcher for a backend (cached by the caller).

        ``endpoints`` are the LLM endpoints submitted specs may use; ``ray_address`` is the
        cluster submitted runs go to (None: a local driver process with its own Ray).
        """
        self.sessions = sessions
        self.data_dir = data_dir.resolve()
        self._launchers = launchers
        self.endpoints = tuple(endpoints)
        self.ray_address = ray_address

    # -- create ------------------------------------------------------------
    def create(self, spec_data: Any) -> RunView:
        """Bind and confine the spec, lay out the run directory, launch the driver."""
        spec = confine_spec(bind_spec(parse_spec(spec_data), self.endpoints), self.data_dir)
        address = self.ray_address
        backend = "ray" if address else "local"
        launcher = self._launchers(backend, address)
        try:
            launcher.check_reachable()
        except Exception as err:  # the operator's cluster is down: nothing the client can fix
            raise ApiError(503, "backend_unavailable", f"cannot reach the Ray cluster: {err}") from None
        run_id = new_run_id(spec.name)
        layout = RunLayout(Path(spec.output_dir) / run_id)
        run_dir, spec_path = layout.root, layout.spec
        row = RunRow(
            run_id=run_id,
            name=spec.name,
            state="queued",
            backend=backend,
            created_at=utc_now(),
            run_dir=str(run_dir),
            spec_path=str(spec_path),
            log_path=str(layout.driver_log),
            ray_address=address,
            attempts=1,
            source="api",
        )
        # The row first, then the directory: discovery must never take this run for a CLI run.
        with self.sessions() as s:
            s.add(row)
            s.commit()
        try:
            write_new_run_dir(layout, spec)
            RunDir(run_dir).write_status(
                RunStatus(run_id=run_id, name=spec.name, state="queued", ray_address=address)
            )
        except BaseException:
            with self.sessions() as s:
                s.execute(delete(RunRow).where(RunRow.run_id == run_id))
                s.commit()
            raise
        self._launch(row, launcher, attempt=1)
        return self._view(row)

    def _launch(self, row: RunRow, launcher: RunLauncher, attempt: int) -> None:
        req = LaunchRequest(
            run_id=row.run_id,
            spec_path=Path(row.spec_path),
            log_path=Path(row.log_path),
            data_dir=self.data_dir,
            attempt=attempt,
        )
        try:
            handle = launcher.launch(req)
        except (OSError, RuntimeError, ValueError, ConnectionError) as err:
            # The run exists; it just could not start. Say so in the run rather than 5xx.
            message = f"could not start the driver: {err}"
            RunDir(row.run_dir).mark("failed", error=message)
            with self.sessions() as s:
                s.execute(
                    update(RunRow).where(RunRow.run_id == row.run_id).values(state="failed", error=message)
                )
                s.commit()
            row.state, row.error = "failed", message
            return
        with self.sessions() as s:
            s.execute(
                update(RunRow)
                .where(RunRow.run_id == row.run_id)
                .values(driver_pid=handle.pid, driver_started=handle.started, driver_job_id=handle.job_id)
            )
            s.commit()
        row.driver_pid, row.driver_started, row.driver_job_id = handle.pid, handle.started, handle.job_id

    # -- discovery -----------------------------------------------------------
    def output_dirs(self, rows: Sequence[Any] = ()) -> list[Path]:
        """Where runs are looked for: ``<data_dir>/runs`` and every output dir a known run lives in."""
        roots = {self.data_dir / "runs"} | {Path(r.run_dir).parent for r in rows}
        return sorted(roots)

    def discover(self) -> None:
        """Add runs found on disk that the store does not know (``source="cli"``); drop deleted ones."""
        with self.sessions() as s:
            rows = list(s.execute(select(RunRow.run_id, RunRow.run_dir, RunRow.source)))
        gone = [r.run_id for r in rows if r.source == "cli" and not Path(r.run_dir).is_dir()]
        if gone:
            with self.sessions() as s:
                s.execute(delete(RunRow).where(RunRow.run_id.in_(gone), RunRow.source == "cli"))
                s.commit()
        for found in scan_output_dirs(self.output_dirs(rows), {r.run_id for r in rows}):
            row = RunRow(
                run_id=found.run_id,
                name=found.name,
                state=found.state,
                backend="local",
                created_at=found.created_at,
                run_dir=str(found.run_dir),
                spec_path=str(RunLayout(found.run_dir).spec),
                log_path=str(RunLayout(found.run_dir).driver_log),
                attempts=1,
                source="cli",
            )
            try:
                with self.sessions() as s:
                    s.add(row)
                    s.commit()
            except IntegrityError:
                pass  # added meanwhile (another request's discovery, or the API creating it)

    # -- read ----------------------------------------------------------------
    def get(self, run_id: str) -> RunView:
        validate_run_id(run_id)
        with self.sessions() as s:
            row = s.get(RunRow, run_id)
        if row is None:
            self.discover()  # a CLI run started since the last listing
            with self.sessions() as s:
                row = s.get(RunRow, run_id)
        if row is None or (row.source == "cli" and not Path(row.run_dir).is_dir()):
            raise not_found(f"run {run_id!r}", "run_id")
        return self.reconcile(row)

    def list(self, limit: int, offset: int) -> tuple[list[RunView], int]:
        """Newest first; every listed run reconciled; CLI runs found on disk included."""
        self.discover()
        with self.sessions() as s:
            count = s.scalar(select(func.count()).select_from(RunRow)) or 0
            rows = list(
                s.scalars(
                    select(RunRow)
                    .order_by(RunRow.created_at.desc(), RunRow.run_id.desc())
                    .limit(limit)
                    .offset(offset)
                )
            )
        return [self.reconcile(r) for r in rows], count

    def all_rows(self) -> list[RunRow]:
        with self.sessions() as s:
            return list(s.scalars(select(RunRow)))

    def run_dir(self, run_id: str) -> Path:
        """The directory of a known run (404 otherwise). Never built from client input."""
        return Path(self.get_row(run_id).run_dir)

    def get_row(self, run_id: str) -> RunRow:
        """The store's row of a run (discovering CLI runs if needed), without reconciling; 404 otherwise."""
        validate_run_id(run_id)
        with self.sessions() as s:
            row = s.get(RunRow, run_id)
        if row is None:
            self.discover()
            with self.sessions() as s:
                row = s.get(RunRow, run_id)
        if row is None:
            raise not_found(f"run {run_id!r}", "run_id")
        return row

    # -- cancel / resume -----------------------------------------------------
    def cancel(self, run_id: str) -> RunView:
        """Ask the driver to stop (the CANCEL marker it polls). 409 if the run already ended."""
        view = self.get(run_id)
        if view.row.state in TERMINAL_STATES:
            raise conflict(f"run {run_id!r} is already {view.row.state}", "run_id")
        if not Path(view.row.run_dir).is_dir():
            raise conflict(f"the directory of run {run_id!r} is gone", "run_id")
        if view.row.source == "cli":
            # Not our driver: the same protocol as `agentcpt cancel` (mark it ourselves if none runs it).
            if request_cancel(RunDir(view.row.run_dir)) == "already_final":
                return self.reconcile(view.row)
        else:
            RunDir(view.row.run_dir).request_cancel()
        now = utc_now()
        with self.sessions() as s:
            s.execute(update(RunRow).where(RunRow.run_id == run_id).values(cancel_requested_at=now))
            s.commit()
        view.row.cancel_requested_at = now
        return self.reconcile(view.row)

    def resume(self, run_id: str) -> RunView:
        """Relaunch the driver of a failed or cancelled run; committed units are skipped by it."""
        view = self.get(run_id)
        row = view.row
        if row.source == "cli":
            raise conflict(
                f"run {run_id!r} was started from the command line; resume it there "
                f"(agentcpt run SPEC --run-id {run_id})",
                "run_id",
            )
        if row.state in _ACTIVE:
            raise conflict(f"run {run_id!r} is {row.state}; cancel it or wait for it to end", "run_id")
        if row.state == "succeeded":
            raise conflict(f"run {run_id!r} already succeeded; nothing to resume", "run_id")
        if not Path(row.spec_path).is_file():
            raise conflict(f"run {run_id!r} has no spec.yaml to resume from", "run_id")
        launcher = self._launchers(row.backend, row.ray_address)
        try:
            launcher.check_reachable()
        except Exception as err:  # the cluster the run was started on is down: try again later
            raise ApiError(503, "backend_unavailable", f"cannot reach the Ray cluster: {err}") from None
        attempt = row.attempts + 1
        # Optimistic concurrency: of two concurrent resumes (even in two API processes),
        # exactly one moves `attempts` forward and launches.
        with self.sessions() as s:
            res = s.execute(
                update(RunRow)
                .where(RunRow.run_id == run_id, RunRow.attempts == row.attempts, RunRow.state == row.state)
                .values(
                    state="queued", attempts=attempt, error=None, finished_at=None, cancel_requested_at=None
                )
            )
            s.commit()
        if res.rowcount != 1:
            raise conflict(f"run {run_id!r} changed while resuming; try again", "run_id")
        rd = RunDir(row.run_dir)
        rd.clear_cancel()
        old = rd.read_status() or RunStatus(run_id=run_id, name=row.name)
        rd.write_status(
            old.model_copy(update={"state": "queued", "finished_at": None, "error": None, "pid": None})
        )
        row.state, row.attempts, row.error, row.finished_at = "queued", attempt, None, None
        row.cancel_requested_at = None
        self._launch(row, launcher, attempt=attempt)
        return self._view(row)

    # -- reconciliation ------------------------------------------------------
    def reconcile(self, row: RunRow) -> RunView:
        """Bring the row in line with the run directory and the driver; returns the view."""
        if row.source == "cli":
            return self._reconcile_found(row)
        rd = RunDir(row.run_dir)
        if not rd.path.is_dir():
            return self._reconcile_deleted(row)
        status = rd.read_status()
        if status is None or status.state not in TERMINAL_STATES:
            if row.cancel_requested_at is not None and not rd.cancel_requested():
                rd.request_cancel()  # the driver cleared it when it started: ask again
            probe = self._probe(row)
            if probe.alive is False:
                # It may have written its final state between our read and the probe.
                status = rd.read_status()
                if (status is None or status.state not in TERMINAL_STATES) and not _other_driver_alive(
                    status, row
                ):
                    cancelled = rd.cancel_requested() or row.cancel_requested_at is not None
                    state = "cancelled" if cancelled else "failed"
                    error = f"driver ended without a final state ({probe.detail})"
                    if probe.log_tail:
                        error += f"; log tail:\n{probe.log_tail}"
                    status = rd.mark(state, error=error)
        self._store(row, status)
        return self._view(row, status)

    def _probe(self, row: RunRow) -> DriverProbe:
        handle = DriverHandle(pid=row.driver_pid, started=row.driver_started, job_id=row.driver_job_id)
        try:
            launcher = self._launchers(row.backend, row.ray_address)
        except ValueError as err:
            # A Ray address stored by an older version that is not a plain HTTP address: it is
            # never handed to Ray's client (which would import a module named by its scheme).
            return DriverProbe(alive=False, detail=f"cannot ask its cluster: {err}")
        return launcher.probe(handle, Path(row.log_path))

    def _reconcile_deleted(self, row: RunRow) -> RunView:
        """An API run whose directory was deleted: failed (if it had not ended), nothing written.

        A run without a driver handle yet is being created (its row is written before its
        directory): it stays as it is.
        """
        launched = row.driver_pid is not None or row.driver_job_id is not None
        if row.state not in TERMINAL_STATES and launched:
            self._store(
                row,
                RunStatus(
                    run_id=row.run_id,
                    name=row.name,
                    state="failed",
                    created_at=row.created_at,
                    started_at=row.started_at,
                    finished_at=utc_now(),
                    error=f"the run directory {row.run_dir} was deleted",
                ),
            )
        return RunView(row=row, status=None, progress=RunProgress(), cancel_requested=False)

    def _reconcile_found(self, row: RunRow) -> RunView:
        """A run the API did not start: its directory says it all; a local driver that is gone
        without a final state reads as failed (the directory is left as it is)."""
        rd = RunDir(row.run_dir)
        status = rd.read_status()
        if (
            status is not None
            and status.state == "running"
            and status.host == socket.gethostname()
            and driver_alive(rd) is None
        ):
            status = status.model_copy(
                update={
                    "state": "failed",
                    "error": f"its driver (pid {status.pid}) ended without a final state; "
                    f"resume it with agentcpt run SPEC --run-id {row.run_id}",
                }
            )
        self._store(row, status)
        return self._view(row, status)

    def reconcile_active(self) -> None:
        """Reconcile every run that may still change (metrics scrapes call this), CLI runs included."""
        self.discover()
        with self.sessions() as s:
            rows = list(
                s.scalars(select(RunRow).where(RunRow.state.in_(_ACTIVE) | (RunRow.source == "cli")))
            )
        for row in rows:
            self.reconcile(row)

    def _store(self, row: RunRow, status: RunStatus | None) -> None:
        if status is None:
            return
        changes = {
            "state": status.state,
            "started_at": status.started_at,
            "finished_at": status.finished_at,
            "error": status.error,
        }
        if all(getattr(row, k) == v for k, v in changes.items()):
            return
        with self.sessions() as s:
            s.execute(update(RunRow).where(RunRow.run_id == row.run_id).values(**changes))
            s.commit()
        for k, v in changes.items():
            setattr(row, k, v)

    def _view(self, row: RunRow, status: RunStatus | None = None) -> RunView:
        rd = RunDir(row.run_dir)
        return RunView(
            row=row,
            status=status if status is not None else rd.read_status(),
            progress=rd.read_progress(),
            cancel_requested=rd.cancel_requested(),
        )


def _other_driver_alive(status: RunStatus | None, row: RunRow) -> bool:
    """A driver started outside this API (``agentcpt run --run-id`` by hand) that is still running."""
    if status is None or status.pid is None or status.pid == row.driver_pid or row.backend != "local":
        return False
    if status.host != socket.gethostname():
        return False
    if not pid_is_driver(status.pid, None):
        return False
    try:
        return status.may_be_driver(psutil.Process(status.pid).create_time())
    except psutil.Error:
        return False


def to_public(view: RunView) -> RunPublic:
    row, status, progress = view.row, view.status, view.progress
    stages: list[StageProgressPublic] = []
    prompt = completion = requests = 0
    ordered = [s for s in stage_names() if s in progress.stages] + [s for s in progress.stages if s not in stage_names()]
    for name in ordered:
        sp = progress.stages[name]
        llm = sp.llm
        prompt += llm.prompt_tokens
        completion += llm.completion_tokens
        requests += llm.requests
        stages.append(
            StageProgressPublic(
                stage=name,
                units_done=sp.units_done,
                units_total=sp.units_total,
                records=sp.records,
                failed=sp.failed,
                llm_requests=llm.requests,
                tokens=TokenTotals(
                    prompt=llm.prompt_tokens,
                    completion=llm.completion_tokens,
                    total=llm.prompt_tokens + llm.completion_tokens,
                ),
                latency_p50_ms=llm.latency_p50_ms,
                latency_p99_ms=llm.latency_p99_ms,
                started_at=sp.started_at,
                finished_at=sp.finished_at,
                eta_s=sp.eta_s,
            )
        )
    started = status.started_at if status else row.started_at
    finished = status.finished_at if status else row.finished_at
    duration = None
    if started is not None:
        duration = round(((finished or utc_now()) - started).total_seconds(), 3)
    state = status.state if status else row.state
    return RunPublic(
        run_id=row.run_id,
        name=row.name,
        state=state,
        backend=row.backend,  # type: ignore[arg-type]
        source=row.source or "api",  # type: ignore[arg-type]
        created_at=row.created_at,
        started_at=started,
        finished_at=finished,
        duration_s=duration,
        error=status.error if status else row.error,
        cancel_requested=view.cancel_requested and state not in TERMINAL_STATES,
        attempts=row.attempts,
        stages=stages,
        tokens=TokenTotals(prompt=prompt, completion=completion, total=prompt + completion),
        llm_requests=requests,
        progress_updated_at=progress.updated_at if progress.stages else None,
    )
