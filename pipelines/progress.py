"""Per-stage progress of a run: counted as units commit, stored in ``progress.json``, shown live.

``ProgressBoard`` owns the numbers (units and records done/total/failed, LLM usage, ETA)
and writes them through ``RunDir.write_progress`` — throttled, since a fast stage commits
many units per second — so that ``agentcpt status`` and the API read them from the run
directory. How they are shown is a ``ProgressDisplay``: rich progress bars on a terminal
(``RichDisplay``), one plain line per committed unit otherwise (``LogDisplay``).

Counts start from the manifest, so a resumed run shows what earlier sessions committed.
LLM usage is summed from the workers' cumulative snapshots (one per worker process), on
top of what earlier sessions recorded in ``progress.json``.

The board also appends the cumulative counters to ``progress.jsonl`` every couple of
seconds (``pipelines.series``): the dashboard's charts over time are drawn from it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Protocol

from pipelines.series import ProgressSeries
from pipelines.units import UnitResult, is_data_unit
from synth.layout import RunLayout
from synth.llm.accounting import StageUsage, UsageSnapshot, UsageTracker
from synth.records import utc_now
from synth.runstate import LLMUsage, RunDir, RunProgress, StageProgress
from synth.shards import ShardStore


def add_usage(a: LLMUsage, b: LLMUsage) -> LLMUsage:
    """Sum two usage records. Latency histograms add up exactly, and the percentiles are read
    from the sum; only for records without a histogram (older progress files) is the larger
    of each percentile kept, an upper bound."""

    def larger(x: float | None, y: float | None) -> float | None:
        known = [v for v in (x, y) if v is not None]
        return max(known) if known else None

    failures = dict(a.failures)
    for kind, n in b.failures.items():
        failures[kind] = failures.get(kind, 0) + n
    merged = StageUsage(latency_histogram=dict(a.latency_histogram))
    merged.add(StageUsage(latency_histogram=b.latency_histogram))
    # Exact when every side that measured latency also kept its histogram.
    exact = not any(
        not u.latency_histogram and (u.latency_p50_ms is not None or u.latency_p99_ms is not None) for u in (a, b)
    )
    cost = None if a.cost_usd is None and b.cost_usd is None else (a.cost_usd or 0.0) + (b.cost_usd or 0.0)
    return LLMUsage(
        requests=a.requests + b.requests,
        retries=a.retries + b.retries,
        cache_hits=a.cache_hits + b.cache_hits,
        failures=failures,
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
        reasoning_tokens=a.reasoning_tokens + b.reasoning_tokens,
        latency_p50_ms=merged.latency_quantile_ms(0.50) if exact else larger(a.latency_p50_ms, b.latency_p50_ms),
        latency_p99_ms=merged.latency_quantile_ms(0.99) if exact else larger(a.latency_p99_ms, b.latency_p99_ms),
        latency_histogram=merged.latency_histogram,
        cost_usd=cost,
    )


def total_usage(progress: RunProgress) -> LLMUsage:
    total = LLMUsage()
    for sp in progress.stages.values():
        total = add_usage(total, sp.llm)
    return total


# --------------------------------------------------------------------------------------
# Displays
# --------------------------------------------------------------------------------------


class ProgressDisplay(Protocol):
    """How progress is shown while a run executes."""

    def unit_committed(self, result: UnitResult, progress: StageProgress) -> None: ...

    def message(self, text: str) -> None: ...

    def refresh(self, progress: RunProgress) -> None: ...

    def close(self) -> None: ...


def _fmt_eta(eta_s: float | None) -> str:
    if eta_s is None:
        return "?"
    if eta_s < 90:
        return f"{eta_s:.0f}s"
    if eta_s < 5400:
        return f"{eta_s / 60:.0f}m"
    return f"{eta_s / 3600:.1f}h"


def _fmt_units(p: StageProgress) -> str:
    return f"{p.units_done}/{p.units_total if p.units_total is not None else '?'}"


class LogDisplay:
    """Plain lines: one per committed unit and one per stage event. For logs and pipes."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stdout

    def unit_committed(self, result: UnitResult, progress: StageProgress) -> None:
        tokens = progress.llm.prompt_tokens + progress.llm.completion_tokens
        note = " (already committed)" if result.already_committed else ""
        self._print(
            f"[{result.stage}] unit {result.unit}{note}: {result.records} records, {result.failed} failed"
            f" | units {_fmt_units(progress)}, records {progress.records}, failed {progress.failed},"
            f" tokens {tokens}, eta {_fmt_eta(progress.eta_s)}"
        )

    def message(self, text: str) -> None:
        self._print(text)

    def refresh(self, progress: RunProgress) -> None:
        pass

    def close(self) -> None:
        self._stream.flush()

    def _print(self, line: str) -> None:
        print(line, file=self._stream, flush=True)


class RichDisplay:
    """One rich progress bar per stage (units), with records, failures, tokens and ETA."""

    def __init__(self, stages: list[str], stream: IO[str] | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description:<10}"),
            BarColumn(),
            TextColumn("{task.fields[units]:>11} units"),
            TextColumn("{task.fields[records]:>8} rec"),
            TextColumn("{task.fields[failed]:>6} failed"),
            TextColumn("{task.fields[tokens]:>10} tok"),
            TextColumn("eta {task.fields[eta]:>5}"),
            TimeElapsedColumn(),
            console=Console(file=stream) if stream is not None else None,
            transient=False,
        )
        self._tasks = {
            s: self._progress.add_task(s, total=None, units="0/?", records=0, failed=0, tokens=0, eta="?")
            for s in stages
        }
        self._progress.start()

    def unit_committed(self, result: UnitResult, progress: StageProgress) -> None:
        self._update(result.stage, progress)

    def message(self, text: str) -> None:
        self._progress.console.log(text)

    def refresh(self, progress: RunProgress) -> None:
        for stage, p in progress.stages.items():
            if stage in self._tasks:
                self._update(stage, p)

    def close(self) -> None:
        self._progress.stop()

    def _update(self, stage: str, p: StageProgress) -> None:
        self._progress.update(
            self._tasks[stage],
            total=p.units_total,
            completed=p.units_done,
            units=_fmt_units(p),
            records=p.records,
            failed=p.failed,
            tokens=p.llm.prompt_tokens + p.llm.completion_tokens,
            eta=_fmt_eta(p.eta_s),
        )


def default_display(stages: list[str], stream: IO[str] | None = None) -> ProgressDisplay:
    """Rich bars on an interactive terminal, plain lines otherwise."""
    out = stream or sys.stdout
    return RichDisplay(stages, out) if out.isatty() else LogDisplay(out)


# --------------------------------------------------------------------------------------
# The board
# --------------------------------------------------------------------------------------


class ProgressBoard:
    """The numbers behind ``progress.json``; see the module docstring."""

    def __init__(
        self,
        run_dir: RunDir,
        stages: list[str],
        display: ProgressDisplay,
        *,
        write_interval_s: float = 0.5,
        series_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run_dir = run_dir
        self._display = display
        self._interval_s = write_interval_s
        self._clock = clock
        self._last_write = float("-inf")
        self._series = ProgressSeries(RunLayout(run_dir.path).progress_series, series_interval_s, clock)
        previous = run_dir.read_progress()
        store = ShardStore(run_dir.path)
        self.progress = RunProgress()
        self._base_usage: dict[str, LLMUsage] = {}
        for stage in stages:
            rows = store.manifest_rows(stage)
            before = previous.stages.get(stage)
            self._base_usage[stage] = before.llm if before else LLMUsage()
            self.progress.stages[stage] = StageProgress(
                units_done=len({r.unit for r in rows if is_data_unit(r.unit)}),
                units_total=before.units_total if before else None,
                records=sum(r.rows for r in rows if r.kind == "records"),
                failed=sum(r.rows for r in rows if r.kind == "failed"),
                llm=self._base_usage[stage],
                started_at=before.started_at if before else None,
                finished_at=before.finished_at if before else None,
            )
        self._snapshots: dict[str, UsageSnapshot] = {}
        self._session_start: dict[str, float] = {}
        self._session_units: dict[str, int] = {}

    def stage(self, name: str) -> StageProgress:
        return self.progress.stages[name]

    def stage_started(self, name: str) -> None:
        p = self.stage(name)
        p.started_at = p.started_at or utc_now()
        p.finished_at = None
        self._session_start.setdefault(name, self._clock())

    def stage_finished(self, name: str) -> None:
        p = self.stage(name)
        p.finished_at = utc_now()
        p.units_total = p.units_done
        p.eta_s = 0.0
        self.flush(force=True)

    def set_total(self, name: str, units_total: int | None) -> None:
        p = self.stage(name)
        if p.units_total != units_total:
            p.units_total = units_total
            p.eta_s = self._eta(name)

    def counts_dropped(self, name: str, failed: int) -> None:
        """Failed-ledger rows a barrier stage's prepare committed (its ``dropped`` unit)."""
        self.stage(name).failed += failed
        self.flush()

    def unit_done(self, result: UnitResult) -> None:
        p = self.stage(result.stage)
        if is_data_unit(result.unit):
            p.units_done += 1
            self._session_units[result.stage] = self._session_units.get(result.stage, 0) + 1
        p.records += result.records
        p.failed += result.failed
        self.usage(result.usage_source, result.usage)
        p.eta_s = self._eta(result.stage)
        self._display.unit_committed(result, p)
        self.flush()

    def usage(self, source: str, snapshot: UsageSnapshot | None) -> None:
        """The latest cumulative usage of one worker process (replaces its previous snapshot).

        Snapshots of this session merge exactly (latency histograms included); earlier
        sessions are only known as ``LLMUsage`` and are added with ``add_usage``.
        """
        if snapshot is None:
            return
        self._snapshots[source] = snapshot
        merged = UsageTracker(price=snapshot.price)
        for snap in self._snapshots.values():
            merged.merge(snap)
        by_stage = merged.snapshot().by_stage
        for stage, p in self.progress.stages.items():
            session = by_stage.get(stage)
            p.llm = add_usage(self._base_usage[stage], session) if session else self._base_usage[stage]

    def message(self, text: str) -> None:
        self._display.message(text)

    def flush(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last_write < self._interval_s:
            return
        self._last_write = now
        self._run_dir.write_progress(self.progress)
        self._series.sample(self.progress, total_usage(self.progress), force=force)
        self._display.refresh(self.progress)

    def close(self) -> None:
        self.flush(force=True)
        self._display.close()

    def _eta(self, name: str) -> float | None:
        p = self.stage(name)
        done_here = self._session_units.get(name, 0)
        start = self._session_start.get(name)
        if p.units_total is None or start is None or done_here == 0:
            return None
        rate = done_here / max(1e-6, self._clock() - start)
        return max(0, p.units_total - p.units_done) / rate



def print_stage_times(progress: RunProgress, out: IO[str], *, session_wall_s: float | None = None) -> None:
    """Where a run's time went: per stage its start (from the first stage's), wall time,
    LLM requests and completion tokens, and completion tokens per wall second.

    Stages overlap when units stream from one stage to the next, so the walls need not add
    up to the total; ``session_wall_s`` (the command's own wall time, Ray and model start-up
    included) is printed last.
    """
    timed = {name: p for name, p in progress.stages.items() if p.started_at is not None}
    if not timed:
        return
    origin = min(p.started_at for p in timed.values() if p.started_at is not None)
    print(f"{'stage':<10} {'start':>7} {'wall':>8} {'requests':>9} {'completion tok':>15} {'tok/s':>7}", file=out)
    for name, p in timed.items():
        assert p.started_at is not None
        start = (p.started_at - origin).total_seconds()
        wall = (p.finished_at - p.started_at).total_seconds() if p.finished_at is not None else None
        rate = f"{p.llm.completion_tokens / wall:.1f}" if wall and p.llm.completion_tokens else ""
        wall_text = f"{wall:.0f}s" if wall is not None else "unfinished"
        print(
            f"{name:<10} {f'+{start:.0f}s':>7} {wall_text:>8} {p.llm.requests:>9} {p.llm.completion_tokens:>15} {rate:>7}",
            file=out,
        )
    if session_wall_s is not None:
        print(f"wall time of this command: {session_wall_s:.0f}s", file=out, flush=True)
