"""The driver loop: which unit of which stage runs next, and when a stage is complete.

Stages run in pipeline order (``synth.stages.stage_names()``), enabled ones only, and overlap:

* a **map** stage's unit ``k`` is submitted as soon as its upstream's unit ``k`` is committed
  (streaming: questions are planned while later questions are still being written);
* a **barrier** stage waits until every upstream stage is complete, then runs ``prepare``
  on a worker, cuts the items into units and submits them.

A stage that is not enabled counts as complete with whatever the run directory already
holds, so a spec that enables only ``planning`` plans the questions committed earlier.

At most ``max_in_flight`` units (and prepares) are out at once — the backpressure that keeps
memory bounded while an upstream stage races ahead. Downstream stages go first when
choosing what to submit, so records flow to the end of the pipeline early.

Units already committed (a resumed run) are never submitted. A unit that raises fails the
run: in-flight units are cancelled and the run can be resumed after the cause is fixed
(row-level problems are the stage's to record as failures; an exception is a bug or a
fatal condition such as a dead endpoint). The CANCEL marker is polled every ``poll_s``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipelines.cluster import WorkerPool
from pipelines.progress import ProgressBoard
from pipelines.units import (
    PrepareResult,
    StagePlan,
    UnitResult,
    UnitTask,
    is_data_unit,
    read_plan,
    write_plan,
)
from synth.llm.base import EndpointFailure
from synth.runstate import RunDir
from synth.shards import ShardStore
from synth.spec import RunSpec
from synth.stage import Stage
from synth.stages import stage_names

Outcome = Literal["succeeded", "failed", "cancelled"]


@dataclass
class RunOutcome:
    state: Outcome
    error: str | None = None


class StageBug(RuntimeError):
    """A stage broke its contract (e.g. a map stage without exactly one upstream)."""


class StageFailed(RuntimeError):
    """A stage ended with no record while every LLM call it made failed: the run did not succeed."""


@dataclass
class _StageState:
    name: str
    stage: Stage | None
    enabled: bool
    committed: set[str]
    source: str | None = None  # a map stage's upstream
    planned: list[str] | None = None
    prepare: Literal["todo", "running", "done"] = "todo"
    queue: deque[tuple[UnitTask, list[Any] | None]] = field(default_factory=deque)
    seen: set[str] = field(default_factory=set)  # units queued or in flight this session
    complete: bool = False
    started: bool = False

    @property
    def data_units(self) -> list[str]:
        return sorted(u for u in self.committed if is_data_unit(u))


@dataclass
class _InFlight:
    stage: str
    kind: Literal["unit", "prepare"]
    unit: str = ""


class Scheduler:
    """Runs the enabled stages of one run over a ``WorkerPool``; see the module docstring."""

    def __init__(
        self,
        *,
        spec: RunSpec,
        run_dir: Path,
        stages: Mapping[str, Stage],
        pool: WorkerPool,
        board: ProgressBoard,
        max_in_flight: int,
        poll_s: float = 1.0,  # only the CANCEL check waits on it; results wake the loop (issue 19)
        cancel_grace_s: float = 30.0,
        preview_items: int | None = None,
    ) -> None:
        self._spec = spec
        # `agentcpt run --preview N`: each barrier stage works on its first N items only.
        self._preview_items = preview_items
        self._run_dir = run_dir
        self._rundir = RunDir(run_dir)
        self._store = ShardStore(run_dir)
        self._pool = pool
        self._board = board
        self._max_in_flight = max(1, max_in_flight)
        self._poll_s = poll_s
        self._cancel_grace_s = cancel_grace_s
        self._in_flight: dict[Any, _InFlight] = {}
        enabled = set(spec.stages.enabled())
        self._order = list(stage_names())
        self._states: dict[str, _StageState] = {}
        for name in self._order:
            stage = stages.get(name)
            st = _StageState(
                name=name,
                stage=stage,
                enabled=name in enabled and stage is not None,
                committed=self._store.committed_units(name),
            )
            if name in enabled and stage is None:
                raise StageBug(f"stage {name!r} is enabled in the spec but no implementation was given")
            if st.enabled and stage is not None and not stage.barrier:
                if len(stage.upstream) != 1 or stage.upstream[0] not in self._order:
                    raise StageBug(
                        f"map stage {name!r} must have exactly one upstream stage, has {stage.upstream}"
                    )
                st.source = stage.upstream[0]
            self._states[name] = st
        for st in self._states.values():
            if not st.enabled:
                st.complete = True
                continue
            plan = read_plan(run_dir, st.name)
            if plan is None:
                continue
            self._board.set_total(st.name, len(plan.units))
            if st.stage is not None and st.stage.barrier:
                st.planned = plan.units
                if set(plan.units) <= st.committed:
                    st.prepare = "done"
            elif plan.complete and set(plan.units) <= st.committed:
                st.complete = True

    # -- the loop -------------------------------------------------------------
    def run(self) -> RunOutcome:
        import ray

        while True:
            if self._rundir.cancel_requested():
                self._board.message("cancel requested: stopping")
                self._stop_in_flight()
                return RunOutcome("cancelled")
            try:
                self._feed()
            except (StageBug, StageFailed) as err:
                self._stop_in_flight()
                return RunOutcome("failed", str(err))
            if all(st.complete for st in self._states.values()):
                return RunOutcome("succeeded")
            self._submit()
            if not self._in_flight:
                # Nothing runs and nothing can be submitted, yet a stage is incomplete.
                stuck = [s.name for s in self._states.values() if not s.complete]
                return RunOutcome("failed", f"scheduler stalled with incomplete stages {stuck}")
            refs = list(self._in_flight)
            ready, _ = ray.wait(refs, num_returns=1, timeout=self._poll_s)
            if ready:
                rest = [r for r in refs if r not in set(ready)]
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0) if rest else ([], [])
                for ref in [*ready, *more]:
                    try:
                        error = self._collect(ref)
                    except StageBug as err:
                        error = str(err)
                    if error is not None:
                        self._board.message(f"run failed: {error}")
                        self._stop_in_flight()
                        return RunOutcome("failed", error)
            self._board.flush()

    # -- deciding what to run -------------------------------------------------------
    def _upstream_complete(self, st: _StageState) -> bool:
        assert st.stage is not None
        return all(self._states[u].complete for u in st.stage.upstream if u in self._states)

    def _feed(self) -> None:
        for name in self._order:
            st = self._states[name]
            if st.complete or not st.enabled:
                continue
            assert st.stage is not None
            if st.stage.barrier:
                self._feed_barrier(st)
            else:
                self._feed_map(st)

    def _feed_barrier(self, st: _StageState) -> None:
        if st.prepare == "todo" and self._upstream_complete(st):
            self._start(st)
            st.prepare = "running"
            st.queue.append((UnitTask(st.name, "", None), None))  # the prepare call itself
        if st.prepare == "done" and st.planned is not None and set(st.planned) <= st.committed:
            self._finish(st)

    def _feed_map(self, st: _StageState) -> None:
        assert st.source is not None
        source = self._states[st.source]
        source_units = source.data_units
        new = [u for u in source_units if u not in st.committed and u not in st.seen]
        if new:
            self._start(st)
        for unit in new:
            st.seen.add(unit)
            st.queue.append((UnitTask(st.name, unit, upstream=st.source), None))
        if source.complete:
            self._board.set_total(st.name, len(source_units))
            if set(source_units) <= st.committed:
                if not source_units:
                    self._board.message(
                        f"[{st.name}] nothing to do: upstream {st.source} has no committed units"
                    )
                self._finish(st)
        else:
            upstream_total = self._board.stage(source.name).units_total
            self._board.set_total(st.name, upstream_total)

    def _start(self, st: _StageState) -> None:
        if not st.started:
            st.started = True
            self._board.stage_started(st.name)
            self._board.message(f"[{st.name}] started")

    def _finish(self, st: _StageState) -> None:
        self._check_not_all_failed(st.name)
        st.complete = True
        previous = read_plan(self._run_dir, st.name)
        plan = previous or StagePlan(stage=st.name, units=st.data_units)
        if not plan.complete:
            write_plan(self._run_dir, plan.model_copy(update={"complete": True}))
        self._board.stage_finished(st.name)
        self._board.message(f"[{st.name}] complete: {len(st.data_units)} units")

    def _check_not_all_failed(self, name: str) -> None:
        """A stage in which every LLM call failed never ends a run as succeeded (issue 17)."""
        p = self._board.stage(name)
        failed = sum(p.llm.failures.values())
        # Calls that got an answer: first attempts (requests - retries) and cache hits, less failures.
        answered = p.llm.requests - p.llm.retries + p.llm.cache_hits - failed
        if p.records == 0 and failed and answered <= 0:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(p.llm.failures.items()))
            raise StageFailed(
                f"{name}: no record written and every LLM call failed ({kinds}); "
                f"the failed ledger has them (agentcpt stats RUN_ID --sql 'select * from {name}_failed')"
            )

    def _submit(self) -> None:
        # Downstream stages first: drain the pipeline before feeding it more.
        for name in reversed(self._order):
            st = self._states[name]
            while st.queue and len(self._in_flight) < self._max_in_flight:
                task, items = st.queue.popleft()
                if task.unit == "":
                    ref = self._pool.submit_prepare(st.name, self._spec.execution.unit_size, self._preview_items)
                    self._in_flight[ref] = _InFlight(st.name, "prepare")
                else:
                    ref = self._pool.submit_unit(task, items)
                    self._in_flight[ref] = _InFlight(st.name, "unit", task.unit)
            if len(self._in_flight) >= self._max_in_flight:
                return

    # -- results ----------------------------------------------------------------
    def _collect(self, ref: Any) -> str | None:
        """Account one finished call; returns an error message if it failed."""
        import ray

        what = self._in_flight.pop(ref)
        self._pool.done(ref)
        label = f"{what.stage} prepare" if what.kind == "prepare" else f"{what.stage} unit {what.unit}"
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if getattr(err, "cause", None) is not None else err
            if isinstance(cause, EndpointFailure):  # already one line naming the endpoint
                return str(cause)
            return f"{label}: {type(cause).__name__}: {cause}"
        except ray.exceptions.RayError as err:
            return f"{label}: {type(err).__name__}: {err}"
        st = self._states[what.stage]
        if isinstance(result, PrepareResult):
            self._planned(st, result)
        else:
            assert isinstance(result, UnitResult)
            st.committed.add(result.unit)
            self._board.unit_done(result)
        return None

    def _planned(self, st: _StageState, result: PrepareResult) -> None:
        names = result.units
        previous = read_plan(self._run_dir, st.name)
        if previous is not None and previous.units != names:
            # prepare must be deterministic (synth/stage.py); a changed plan would mix units
            # of two different cuts. Refuse rather than write inconsistent output.
            raise StageBug(
                f"{st.name}.prepare is not deterministic: {len(names)} units now, "
                f"{len(previous.units)} when the run started"
            )
        write_plan(
            self._run_dir,
            StagePlan(
                stage=st.name,
                units=names,
                items=result.items,
                items_available=result.items_available if self._preview_items is not None else None,
                dropped=result.dropped,
                unit_size=self._spec.execution.unit_size,
                sources=result.sources,
            ),
        )
        st.planned = names
        st.prepare = "done"
        self._board.usage(result.usage_source, result.usage)
        self._board.set_total(st.name, len(names))
        if result.dropped and "dropped" not in st.committed:
            st.committed.add("dropped")
            self._board.counts_dropped(st.name, result.dropped)
        self._board.message(
            f"[{st.name}] prepared {result.items_available} items in {len(names)} units, {result.dropped} dropped"
        )
        for unit in names:
            if unit not in st.committed:
                st.seen.add(unit)
                # No items here: the worker reads the unit's items that prepare wrote.
                st.queue.append((UnitTask(st.name, unit), None))

    # -- stopping -------------------------------------------------------------
    def _stop_in_flight(self) -> None:
        """Cancel what is running and wait (bounded) for it to settle; commits that land are kept."""
        import ray

        for st in self._states.values():
            st.queue.clear()
        refs = list(self._in_flight)
        for ref in refs:
            try:
                ray.cancel(ref)
            except (ValueError, TypeError, ray.exceptions.RayError):
                pass  # already finished, or not cancellable: we wait for it below
        deadline = time.monotonic() + self._cancel_grace_s
        pending = refs
        while pending and time.monotonic() < deadline:
            ready, pending = ray.wait(
                pending, num_returns=len(pending), timeout=min(1.0, self._cancel_grace_s)
            )
            for ref in ready:
                what = self._in_flight.pop(ref, None)
                self._pool.done(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError:
                    continue  # cancelled or failed: nothing was committed by it, or the commit stands
                if what is not None and isinstance(result, UnitResult):
                    self._states[what.stage].committed.add(result.unit)
                    self._board.unit_done(result)
