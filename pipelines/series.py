"""``runs/<id>/progress.jsonl``: the run's progress counters over time, for the dashboard's charts.

``ProgressBoard`` (``pipelines.progress``) appends a ``ProgressSample`` every couple of
seconds and when a stage finishes: per-stage units, records and failures, and the run's LLM
requests, tokens, latency percentiles and cost. Counters are cumulative, so readers compute
rates from differences (``api.services.run_charts``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synth.records import utc_now
from synth.runstate import LLMUsage, RunProgress


class StagePoint(BaseModel):
    """A stage's cumulative counts at one moment."""

    model_config = ConfigDict(extra="ignore")
    units_done: int = 0
    records: int = 0
    failed: int = 0


class LLMPoint(BaseModel):
    """The run's cumulative LLM usage at one moment (latency: as the board merges it)."""

    model_config = ConfigDict(extra="ignore")
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    cost_usd: float | None = None


class ProgressSample(BaseModel):
    """One line of ``progress.jsonl``. Counters are cumulative, so a reader gets rates from
    differences, and a lost line costs resolution, not correctness. ``session`` tells the
    sessions of a resumed run apart: a rate across the gap between two would be meaningless."""

    model_config = ConfigDict(extra="ignore")
    t: datetime
    session: str
    stages: dict[str, StagePoint] = Field(default_factory=dict)
    llm: LLMPoint = Field(default_factory=LLMPoint)


def progress_sample(progress: RunProgress, usage: LLMUsage, session: str) -> ProgressSample:
    """The counters of ``progress`` and the run's total ``usage``, now."""
    return ProgressSample(
        t=utc_now(),
        session=session,
        stages={
            name: StagePoint(units_done=p.units_done, records=p.records, failed=p.failed)
            for name, p in progress.stages.items()
        },
        llm=LLMPoint(
            requests=usage.requests,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            latency_p50_ms=usage.latency_p50_ms,
            latency_p99_ms=usage.latency_p99_ms,
            cost_usd=usage.cost_usd,
        ),
    )


class ProgressSeries:
    """Appends a ``ProgressSample`` to ``progress.jsonl`` at most every ``interval_s`` (and when forced).

    Lines are appended, not rewritten: one short ``write`` each, so a reader sees whole lines
    but the last (which ``read_progress_series`` skips if it is cut)."""

    def __init__(self, path: Path, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.session = uuid.uuid4().hex[:8]
        self._interval_s = interval_s
        self._clock = clock
        self._last = float("-inf")

    def sample(self, progress: RunProgress, usage: LLMUsage, force: bool = False) -> bool:
        """Append a sample unless one was appended less than ``interval_s`` ago; whether it did."""
        now = self._clock()
        if not force and now - self._last < self._interval_s:
            return False
        self._last = now
        line = progress_sample(progress, usage, self.session).model_dump_json() + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
        return True


# A day of 2 s samples is ~40k lines; the dashboard reads only the newest part, and thins it.
MAX_SERIES_BYTES = 4 * 1024 * 1024


def read_progress_series(path: Path, max_points: int = 600) -> list[ProgressSample]:
    """The samples of ``progress.jsonl`` (newest ``MAX_SERIES_BYTES`` of it), at most ``max_points``
    of them, evenly thinned, the last one always kept. A missing file is an empty series; a
    line that does not parse (cut by a crash, or from another version) is skipped."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - MAX_SERIES_BYTES))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if size > MAX_SERIES_BYTES:
        lines = lines[1:]  # the first one is cut
    samples: list[ProgressSample] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            samples.append(ProgressSample.model_validate_json(line))
        except ValidationError:
            continue
    if len(samples) > max_points:
        step = len(samples) / max_points
        samples = [samples[int(i * step)] for i in range(max_points - 1)] + [samples[-1]]
    return samples
