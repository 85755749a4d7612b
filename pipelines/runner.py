"""``agentcpt run SPEC [--run-id ID] [--ray-address ADDR]``: one session of a run, start to finish.

A session, top to bottom:

1. load and check the spec (bad input → ``SpecError``, exit 2), pick the run id (new:
   ``<name>-<UTC yyyymmdd-HHMMSS>-<4 hex>``; given: resume it, or start it under that id);
2. prepare ``output_dir/<run_id>``: save ``spec.yaml``, or check the stored one allows this
   spec (``pipelines.rundirs``); status ``running``;
3. join Ray (local by default); end any worker a killed earlier session left behind
   (``pipelines.fence``), then delete its orphan files; start the LLM endpoints' limiters
   (and the embedded endpoint if the spec asks for it); start the worker pool; run the
   scheduler (``pipelines.scheduler``);
4. status ``succeeded`` / ``failed`` / ``cancelled``; compact the manifest; write the dataset
   card (``synth.card``); print where the shards are and the stats table.

Exit codes: 0 the run succeeded, 1 it failed or was cancelled, 2 bad input.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipelines.cluster import WorkerPool, cluster_cpus, ray_session
from pipelines.fence import fence_previous_sessions
from pipelines.llm_setup import RunEndpoints
from pipelines.progress import ProgressBoard, ProgressDisplay, default_display, print_stage_times
from pipelines.rundirs import check_prompt_fingerprints, prepare_run_dir
from pipelines.scheduler import RunOutcome, Scheduler
from pipelines.worker import WorkerJob
from synth.card import write_dataset_card
from synth.errors import IntegrityError
from synth.inputs import check_inputs
from synth.layout import RunLayout, new_run_id, validate_run_id
from synth.llm.base import EndpointFailure
from synth.runstate import RunDir
from synth.shards import ShardStore
from synth.spec import RunSpec, load_spec, spec_dir
from synth.stage import Stage
from synth.stages import get_stage, stage_names


class Terminated(Exception):
    """SIGTERM reached the driver: stop like a cancellation."""


@dataclass(frozen=True)
class SessionResult:
    run_id: str
    run_dir: Path
    outcome: RunOutcome

    @property
    def exit_code(self) -> int:
        return 0 if self.outcome.state == "succeeded" else 1


def registry_stages(spec: RunSpec) -> dict[str, Stage]:
    """The registered stage of every enabled stage."""
    return {name: get_stage(name) for name in spec.stages.enabled()}


def stage_uses_llm(stage: Stage) -> bool:
    """Whether a stage may call an LLM. Stages say otherwise with ``uses_llm = False`` (default: yes)."""
    return bool(getattr(stage, "uses_llm", True))


def run_command(
    spec: str, run_id: str | None = None, ray_address: str | None = None, allow_prompt_change: bool = False
) -> int:
    """The ``agentcpt run`` entry point: 0 succeeded, 1 failed or cancelled (bad input raises SpecError)."""
    loaded = load_spec(spec)
    with _sigterm_as_exception():
        result = run_session(
            loaded,
            run_id=run_id,
            ray_address=ray_address,
            base_dir=Path.cwd(),
            inputs_dir=spec_dir(spec),
            allow_prompt_change=allow_prompt_change,
        )
    return result.exit_code


def run_session(
    spec: RunSpec,
    *,
    run_id: str | None = None,
    ray_address: str | None = None,
    base_dir: Path | None = None,
    inputs_dir: Path | None = None,
    stages: Mapping[str, Stage] | None = None,
    display: ProgressDisplay | None = None,
    out: IO[str] | None = None,
    max_workers: int | None = None,
    print_summary: bool = True,
    allow_prompt_change: bool = False,
    preview_items: int | None = None,
) -> SessionResult:
    """Run (or resume) one run to the end; see the module docstring.

    ``stages`` replaces the registry's stages (tests); ``max_workers`` caps the worker
    actors (default: one per CPU of the cluster). ``output_dir`` is relative to ``base_dir``;
    input globs to ``inputs_dir`` (``agentcpt run``: the spec file's directory), else ``base_dir``.
    """
    out = out or sys.stdout
    started_s = time.monotonic()
    base_dir = (base_dir or Path.cwd()).resolve()
    inputs_dir = (inputs_dir or base_dir).resolve()
    check_inputs(spec, inputs_dir)
    run_id = validate_run_id(run_id) if run_id else new_run_id(spec.name)
    run_dir = (base_dir / spec.output_dir / run_id).resolve()
    resuming = prepare_run_dir(run_dir, spec)
    stage_map = dict(stages) if stages is not None else registry_stages(spec)
    enabled = [s for s in stage_names() if s in spec.stages.enabled()]
    missing = [s for s in enabled if s not in stage_map]
    if missing:
        raise ValueError(f"stages {missing} are enabled in the spec but were not given an implementation")
    changed_prompts = check_prompt_fingerprints(
        RunLayout(run_dir), {name: stage_map[name] for name in enabled}, allow_change=allow_prompt_change
    )
    if changed_prompts:
        print(f"prompts changed for {', '.join(changed_prompts)}: new units carry the new fingerprint", file=out)

    rd = RunDir(run_dir)
    store = ShardStore(run_dir)
    session = uuid.uuid4().hex[:8]
    rd.clear_cancel()
    status = rd.mark("running")
    status.name = spec.name
    rd.write_status(status)
    print(f"{'resuming' if resuming else 'starting'} run {run_id} in {run_dir}", file=out, flush=True)
    board: ProgressBoard | None = None
    outcome = RunOutcome("failed", "the session ended before the scheduler finished")
    needs_llm = any(stage_uses_llm(stage_map[s]) for s in enabled if not _stage_done(run_dir, s))
    endpoints = RunEndpoints(spec, run_id=run_id, needed=needs_llm).start_embedded()
    try:
        with ray_session(ray_address or spec.execution.ray_address) as address:
            status.ray_address = address
            rd.write_status(status)
            # No worker of a killed earlier session may write while orphans are removed.
            ended = fence_previous_sessions(run_dir, session)
            removed = store.cleanup_orphans()
            if ended or removed:
                print(
                    f"ended {ended} workers of earlier sessions, removed {len(removed)} orphan files",
                    file=out,
                )
            board = ProgressBoard(rd, enabled, display or default_display(enabled, out))
            with endpoints:
                if endpoints.embedded_url:
                    board.message(f"embedded LLM endpoint at {endpoints.embedded_url}")
                for check in endpoints.preflight():  # EndpointFailure: fail before any stage starts
                    board.message(check.describe())
                job = WorkerJob(
                    run_id=run_id,
                    run_dir=str(run_dir),
                    base_dir=str(inputs_dir),
                    spec=endpoints.spec,
                    stages=stage_map,
                    limiters=endpoints.limiters,
                    needs_llm=needs_llm,
                    session=session,
                )
                pool = WorkerPool(job, max_actors=max_workers)
                try:
                    scheduler = Scheduler(
                        spec=spec,
                        run_dir=run_dir,
                        stages=stage_map,
                        pool=pool,
                        board=board,
                        max_in_flight=spec.execution.max_units_in_flight or 2 * cluster_cpus(),
                        preview_items=preview_items,
                    )
                    outcome = scheduler.run()
                finally:
                    pool.close()
    except (KeyboardInterrupt, Terminated):
        outcome = RunOutcome("cancelled", "interrupted")
        raise
    except EndpointFailure as err:  # one line names the endpoint and what it answered
        outcome = RunOutcome("failed", str(err))
    except Exception as err:
        outcome = RunOutcome("failed", f"{type(err).__name__}: {err}")
        traceback.print_exc(file=sys.stderr)
    finally:
        endpoints.close()  # after a failure before `with endpoints`: the early-started server
        if board is not None:
            board.close()
        if outcome.state == "succeeded":
            store.cleanup_orphans()  # temp files of attempts Ray retried; nothing is writing now
        store.compact_manifest()
        rd.mark(outcome.state, outcome.error)
    _write_card(run_dir, spec, out)
    _report(run_id, run_dir, outcome, out, print_summary, wall_s=time.monotonic() - started_s)
    return SessionResult(run_id=run_id, run_dir=run_dir, outcome=outcome)


def _write_card(run_dir: Path, spec: RunSpec, out: IO[str]) -> None:
    """``runs/<id>/README.md`` (the folder loads with ``datasets``); never the run's verdict.

    The card reads every stage's shards; after a failed session one may fail its own check
    (a torn or tampered file). That is reported, and the run keeps the outcome it had.
    """
    try:
        write_dataset_card(run_dir, spec)
    except (IntegrityError, OSError) as err:
        print(f"dataset card not written: {err}", file=out, flush=True)


def _stage_done(run_dir: Path, stage: str) -> bool:
    """Cheap check used to skip starting LLM endpoints for a run whose LLM stages are all done."""
    from pipelines.units import read_plan

    plan = read_plan(run_dir, stage)
    return (
        plan is not None and plan.complete and set(plan.units) <= ShardStore(run_dir).committed_units(stage)
    )


def _report(
    run_id: str, run_dir: Path, outcome: RunOutcome, out: IO[str], print_summary: bool, wall_s: float | None = None
) -> None:
    verdict = {"succeeded": "succeeded", "failed": "FAILED", "cancelled": "cancelled"}[outcome.state]
    print(f"run {run_id} {verdict}" + (f": {outcome.error}" if outcome.error else ""), file=out)
    print(f"shards: {run_dir / 'shards'}  (manifest: {run_dir / 'manifest.parquet'})", file=out, flush=True)
    if print_summary:
        from synth.catalog import print_stats

        print_stats(run_dir, file=out)
        print_stage_times(RunDir(run_dir).read_progress(), out, session_wall_s=wall_s)
    if outcome.state != "succeeded":
        print(f"resume with: agentcpt run <spec> --run-id {run_id}", file=out, flush=True)


@contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    """Turn SIGTERM into ``Terminated`` so the run is marked cancelled and workers are stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except Terminated:
        print("agentcpt: terminated; the run is marked cancelled", file=sys.stderr)
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)
