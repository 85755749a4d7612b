"""The worker side: one class that runs units of any stage and commits them through the shard store.

``UnitWorker`` is a plain class; the driver runs one copy per CPU as an async Ray actor
(``pipelines.cluster``). Being async, one worker overlaps many units' LLM calls on one
event loop and one connection pool; being an actor, it builds its stage context (LLM
clients with the request cache and the cluster limiter, the stage reader) once, not per
unit. Tests call it directly, without Ray.

Exactly-once: a unit is committed by ``ShardStore.write_unit``, which refuses a unit that
is already committed. A unit found committed before it starts is skipped; a retry of a
unit whose earlier attempt committed and then died (``FileExistsError``) reports the
committed unit. Either way nothing is written twice.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.fence import register_worker
from pipelines.units import DROPPED_UNIT, PrepareResult, UnitResult, UnitTask, cut_units, preview_cut
from synth.dedup import DEDUP_SOURCES, write_unit_signatures
from synth.layout import RunLayout
from synth.llm.cache import cache_scope
from synth.records import Record
from synth.shards import ManifestRow, ShardStore, atomic_write_bytes, default_worker
from synth.spec import RunSpec
from synth.stage import Stage, StageContext, StageOutput


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker needs to build its context; pickled once per worker by Ray."""

    run_id: str
    run_dir: str
    base_dir: str
    spec: RunSpec
    stages: Mapping[str, Stage]
    # LLM limiter actor name per endpoint URL (empty when no stage needs an LLM, or in tests).
    limiters: Mapping[str, str] = field(default_factory=dict)
    # False when no stage of the session calls an LLM: workers then build no clients.
    needs_llm: bool = True
    # The driver session; workers register under it for fencing (pipelines.fence). "" = don't.
    session: str = ""


class StageReader:
    """``StageContext.read_stage`` over committed records, cached per stage while its manifest is unchanged.

    The cache key is the stage's committed (unit, sha256) pairs, so a stage read again after
    more of its units committed is re-read, and one read twice is not.
    """

    def __init__(self, store: ShardStore) -> None:
        self._store = store
        self._cache: dict[str, tuple[tuple[tuple[str, str], ...], list[Record]]] = {}
        self._lock = threading.Lock()

    def __call__(self, stage: str) -> list[Record]:
        key = tuple((r.unit, r.sha256) for r in self._store.manifest_rows(stage) if r.kind == "records")
        with self._lock:
            hit = self._cache.get(stage)
            if hit is not None and hit[0] == key:
                return hit[1]
        records = self._store.read_records(stage)
        with self._lock:
            self._cache[stage] = (key, records)
        return records


def _counts(rows: list[ManifestRow]) -> tuple[int, int]:
    records = sum(r.rows for r in rows if r.kind == "records")
    failed = sum(r.rows for r in rows if r.kind == "failed")
    return records, failed


class UnitWorker:
    """Runs ``prepare`` and units of any stage of one run; see the module docstring."""

    def __init__(self, job: WorkerJob, worker_name: str | None = None) -> None:
        self._job = job
        self._store = ShardStore(job.run_dir)
        self._layout = RunLayout(Path(job.run_dir))
        self._reader = StageReader(self._store)
        self._worker_name = worker_name or _ray_node_id() or default_worker()
        # Usage snapshots are cumulative per process: a restarted worker is a new source.
        self._source = f"{_ray_actor_id() or 'local'}:{os.getpid()}"
        self._ctx: StageContext | None = None
        self._llms: Any = None
        self._ctx_lock: asyncio.Lock | None = None
        if job.session:
            register_worker(Path(job.run_dir), job.session, _ray_actor_name())

    # -- Ray-visible methods -------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Where this worker runs: its manifest worker name (Ray node id) and pid."""
        return {"worker": self._worker_name, "pid": os.getpid(), "source": self._source}

    async def prepare(self, stage_name: str, unit_size: int, limit: int | None = None) -> PrepareResult:
        """Run a barrier stage's ``prepare``, cut its items into units and write each unit's
        items to the run directory; commit the dropped inputs once (unit ``dropped``).

        Only unit names and counts go back to the driver: a stage's items (the memory
        stage's chunks, the corpus's texts) grow with the corpus, the driver must not
        (issue 19). ``limit`` keeps the first items of each source only (``--preview``).
        """
        stage = self._job.stages[stage_name]
        ctx = (await self._context()).scoped_to(stage)
        prepared = await asyncio.to_thread(stage.prepare, ctx)
        if prepared.dropped and not self._store.unit_entry_rows(stage_name, DROPPED_UNIT):
            try:
                await asyncio.to_thread(
                    self._store.write_unit,
                    stage_name,
                    DROPPED_UNIT,
                    [],
                    prepared.dropped,
                    worker=self._worker_name,
                    run_id=self._job.run_id,
                )
            except FileExistsError:
                pass  # committed by a concurrent or earlier attempt: the ledger has them once
        items = list(prepared.items)
        def source_of(item: Any) -> str:
            return stage.item_origin(item).source

        used = items if limit is None else preview_cut(items, limit, source_of)
        units = cut_units(used, unit_size, source_of)
        await asyncio.to_thread(self._write_unit_items, stage_name, units)
        # Counted over every item, not a preview's first ones: --preview scales each source.
        sources = await asyncio.to_thread(stage.item_sources, items, ctx.spec)
        if limit is not None:
            sampled = Counter(stage.item_origin(item).source for item in used)
            sources = [s.model_copy(update={"sampled": sampled.get(s.source, 0)}) for s in sources]
        return PrepareResult(
            units=[name for name, _ in units],
            items=len(used),
            items_available=len(items),
            sources=sources,
            dropped=len(prepared.dropped),
            usage=self._usage_snapshot(),
            usage_source=self._source,
        )

    async def run_unit(self, task: UnitTask, items: list[Any] | None = None) -> UnitResult:
        """Compute and commit one unit, or report it committed already."""
        t0 = time.monotonic()
        if self._store.unit_entry_rows(task.stage, task.unit):
            return self._committed(task, t0)
        stage = self._job.stages[task.stage]
        ctx = (await self._context()).scoped_to(stage)
        if task.upstream is not None:
            items = await asyncio.to_thread(self._store.read_unit_records, task.upstream, task.unit)
        elif items is None:
            items = await asyncio.to_thread(self._read_unit_items, task.stage, task.unit)
        items = list(items or [])
        # An empty unit (every upstream input failed) is committed empty, so that the unit
        # numbering stays one-to-one with upstream; the stage is not asked about nothing.
        # Requests of this unit are cached under it: a retry (any worker) finds them.
        with cache_scope(task.stage, task.unit):
            output = await stage.process(items, ctx) if items else StageOutput()
        for record in output.records:
            record.prompt_fingerprint = stage.prompt_fingerprint  # which prompts wrote it (resume check)
        if output.records and self._signs(task.stage):
            # MinHash signatures for the downstream barrier's dedup, made here in parallel
            # (synth.dedup); written before the commit, so a committed unit has its side file.
            path = self._layout.signatures(task.stage, task.unit)
            await asyncio.to_thread(write_unit_signatures, path, output.records)
        try:
            rows = await asyncio.to_thread(
                self._store.write_unit,
                task.stage,
                task.unit,
                output.records,
                output.failures,
                worker=self._worker_name,
                run_id=self._job.run_id,
            )
        except FileExistsError:
            # An earlier attempt of this unit (a worker Ray retried after it died) committed it.
            self._publish_cache(task)
            return self._committed(task, t0)
        self._publish_cache(task)
        self._layout.unit_items(task.stage, task.unit).unlink(missing_ok=True)  # committed: not needed again
        records, failed = _counts(rows)
        return UnitResult(
            stage=task.stage,
            unit=task.unit,
            records=records,
            failed=failed,
            worker=self._worker_name,
            elapsed_s=time.monotonic() - t0,
            usage=self._usage_snapshot(),
            usage_source=self._source,
        )

    async def usage(self) -> dict[str, Any] | None:
        return self._usage_snapshot()

    async def close(self) -> None:
        """Flush the limiter reports and close HTTP sessions (the driver calls this at the end)."""
        if self._llms is not None:
            await self._llms.aclose()
            self._llms = None

    # -- internals ------------------------------------------------------------
    def _write_unit_items(self, stage: str, units: list[tuple[str, list[Any]]]) -> None:
        """One file per unit not yet committed (a resumed run rewrites the same items)."""
        committed = self._store.committed_units(stage)
        for name, chunk in units:
            if name not in committed:
                # Pickle, as Ray would ship them: items are whatever prepare returns (models,
                # dataclasses, tuples) and never leave this run's directory.
                data = pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)
                atomic_write_bytes(self._layout.unit_items(stage, name), data, sync_dir=False)

    def _read_unit_items(self, stage: str, unit: str) -> list[Any]:
        path = self._layout.unit_items(stage, unit)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: the items of {stage} unit {unit} are missing (its prepare did not write them)"
            ) from None
        return list(pickle.loads(data))  # noqa: S301 (written by this run's prepare, above)

    def _committed(self, task: UnitTask, t0: float) -> UnitResult:
        rows = self._store.unit_entry_rows(task.stage, task.unit)
        records, failed = _counts(rows)
        return UnitResult(
            stage=task.stage,
            unit=task.unit,
            records=records,
            failed=failed,
            worker=rows[0].worker if rows else self._worker_name,
            already_committed=True,
            elapsed_s=time.monotonic() - t0,
            usage=self._usage_snapshot(),
            usage_source=self._source,
        )

    async def _context(self) -> StageContext:
        if self._ctx is not None:
            return self._ctx
        if self._ctx_lock is None:
            self._ctx_lock = asyncio.Lock()
        async with self._ctx_lock:
            if self._ctx is None:
                from pipelines.llm_setup import UnavailableLLM, open_worker_llms

                job = self._job
                if job.needs_llm:
                    self._llms = open_worker_llms(
                        job.spec, Path(job.run_dir), job.limiters, client_id=self._source
                    )
                    llm, judge_llm = self._llms.llm, self._llms.judge_llm
                else:
                    llm = judge_llm = UnavailableLLM()
                self._ctx = StageContext(
                    run_id=job.run_id,
                    spec=job.spec,
                    llm=llm,
                    judge_llm=judge_llm,
                    run_dir=Path(job.run_dir),
                    seed=job.spec.execution.seed,
                    read_stage=self._reader,
                    base_dir=Path(job.base_dir),
                )
        return self._ctx

    def _publish_cache(self, task: UnitTask) -> None:
        """Seal this unit's request-cache segment: one file per unit, whatever its requests."""
        if self._llms is not None:
            self._llms.cache.publish(task.stage, task.unit)

    def _signs(self, stage: str) -> bool:
        """Whether ``stage``'s records are deduplicated downstream in this run (see synth.dedup)."""
        consumer = DEDUP_SOURCES.get(stage)
        return consumer is not None and consumer in self._job.spec.stages.enabled()

    def _usage_snapshot(self) -> dict[str, Any] | None:
        return self._llms.snapshot() if self._llms is not None else None


def _ray_node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _ray_actor_name() -> str | None:
    import ray

    return ray.get_runtime_context().get_actor_name() if ray.is_initialized() else None


def _ray_actor_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None
