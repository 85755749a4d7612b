"""LLM usage accounting per stage: requests, retries, cache hits, failures, tokens, latency, cost.

``UsageTracker`` is what the client writes into; ``usage(stage)`` gives the
``synth.runstate.LLMUsage`` that progress files, ``agentcpt status`` and the API show.

Many Ray workers each keep their own tracker; the driver merges them. ``snapshot()`` returns
plain data (a pydantic model, JSON-able and picklable) and ``merge()`` adds one in. Latency
is kept as a log-bucketed histogram (about 9% resolution: 8 buckets per doubling, from 0.1 ms
to beyond an hour), which merges exactly and stays a few hundred integers in size whatever
the number of requests.

Counting rules:

* ``requests``: HTTP attempts sent to the endpoint (what a provider counts and bills).
* ``retries``: attempts beyond the first of a call, whatever the reason (transient error
  or invalid output); ``retries_by_kind`` in the snapshot says why.
* ``cache_hits``: calls answered from the request cache (no attempt sent).
* ``failures``: calls that ended in an ``LLMError``, by ``kind``.
* ``reasoning_tokens``: the part of the completion tokens a thinking model spent reasoning
  (``usage.completion_tokens_details.reasoning_tokens`` when the endpoint reports it, else
  estimated from the share of characters in ``reasoning_content`` or a ``<think>`` prefix).
* latency: per successful HTTP attempt, send to reply (not time spent queued for a permit).
"""

from __future__ import annotations

import math
import threading
from collections import Counter

from pydantic import BaseModel, ConfigDict, Field

from synth.llm.config import PriceTable
from synth.runstate import LLMUsage

_BUCKETS_PER_DOUBLING = 8
_MIN_MS = 0.1


def _bucket(latency_ms: float) -> int:
    if latency_ms <= _MIN_MS:
        return 0
    return 1 + int(math.log2(latency_ms / _MIN_MS) * _BUCKETS_PER_DOUBLING)


def _bucket_value_ms(index: int) -> float:
    """A representative latency of a bucket: the geometric middle of its bounds."""
    if index == 0:
        return _MIN_MS
    return _MIN_MS * 2 ** ((index - 0.5) / _BUCKETS_PER_DOUBLING)


def latency_bucket_ms(index: int) -> tuple[float, float]:
    """(upper bound, representative value) in ms of a ``latency_histogram`` bucket."""
    upper = _MIN_MS if index == 0 else _MIN_MS * 2 ** (index / _BUCKETS_PER_DOUBLING)
    return upper, _bucket_value_ms(index)


class StageUsage(BaseModel):
    """Mergeable counters of one stage."""

    model_config = ConfigDict(extra="forbid")
    requests: int = Field(0, description="HTTP attempts sent")
    retries: int = Field(0, description="attempts beyond the first of a call")
    retries_by_kind: dict[str, int] = Field(
        default_factory=dict, description="retries by the reason for them"
    )
    cache_hits: int = Field(0, description="calls answered from the request cache")
    calls: int = Field(0, description="complete() calls finished (answered, cached or failed)")
    failures: dict[str, int] = Field(default_factory=dict, description="failed calls by error kind")
    prompt_tokens: int = Field(0, description="prompt tokens reported by the endpoint")
    completion_tokens: int = Field(0, description="completion tokens reported by the endpoint")
    reasoning_tokens: int = Field(
        0, description="of completion_tokens, a thinking model's reasoning (reported, or estimated by its share of characters)"
    )
    latency_histogram: dict[int, int] = Field(
        default_factory=dict,
        description="successful-attempt latency: log2 bucket index (8 per doubling from 0.1 ms) -> count",
    )

    def add(self, other: StageUsage) -> None:
        self.requests += other.requests
        self.retries += other.retries
        self.cache_hits += other.cache_hits
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.reasoning_tokens += other.reasoning_tokens
        for mine, theirs in (
            (self.retries_by_kind, other.retries_by_kind),
            (self.failures, other.failures),
            (self.latency_histogram, other.latency_histogram),
        ):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v  # type: ignore[index]

    def latency_quantile_ms(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of successful-attempt latency, or None without data."""
        total = sum(self.latency_histogram.values())
        if total == 0:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for index in sorted(self.latency_histogram):
            seen += self.latency_histogram[index]
            if seen >= rank:
                return round(_bucket_value_ms(index), 3)
        return round(_bucket_value_ms(max(self.latency_histogram)), 3)


class UsageSnapshot(BaseModel):
    """Plain-data state of a ``UsageTracker``: send it between processes and ``merge`` it."""

    model_config = ConfigDict(extra="forbid")
    stages: dict[str, StageUsage] = Field(default_factory=dict, description="counters per stage name")
    price: PriceTable | None = Field(None, description="price table of the tracker that took it")

    @property
    def by_stage(self) -> dict[str, LLMUsage]:
        """``LLMUsage`` per stage name (p50/p99 from the histogram, cost from ``price``)."""
        return {name: UsageTracker.to_llm_usage(s, self.price) for name, s in sorted(self.stages.items())}

    def total(self) -> LLMUsage:
        """``LLMUsage`` of all stages together."""
        total = StageUsage()
        for s in self.stages.values():
            total.add(s)
        return UsageTracker.to_llm_usage(total, self.price)


class UsageTracker:
    """Thread-safe per-stage usage counters with an optional price table."""

    def __init__(self, price: PriceTable | None = None) -> None:
        self.price = price
        self._stages: dict[str, StageUsage] = {}
        self._lock = threading.Lock()

    def _stage(self, stage: str) -> StageUsage:
        s = self._stages.get(stage)
        if s is None:
            s = self._stages[stage] = StageUsage()
        return s

    # -- recording (called by the client) -------------------------------------------------

    def record_attempt(
        self, stage: str, *, ok: bool, latency_s: float | None = None, prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:  # fmt: skip
        """One HTTP attempt sent; ``latency_s`` and tokens when it got a reply."""
        with self._lock:
            s = self._stage(stage)
            s.requests += 1
            s.prompt_tokens += prompt_tokens
            s.completion_tokens += completion_tokens
            if ok and latency_s is not None:
                b = _bucket(latency_s * 1000.0)
                s.latency_histogram[b] = s.latency_histogram.get(b, 0) + 1

    def record_reasoning(self, stage: str, tokens: int) -> None:
        """Reasoning tokens of one answered attempt (already counted in its completion tokens)."""
        if tokens <= 0:
            return
        with self._lock:
            self._stage(stage).reasoning_tokens += tokens

    def record_retry(self, stage: str, reason: str) -> None:
        """A call is about to send another attempt because of ``reason`` (an error kind)."""
        with self._lock:
            s = self._stage(stage)
            s.retries += 1
            s.retries_by_kind[reason] = s.retries_by_kind.get(reason, 0) + 1

    def record_call(self, stage: str, *, failure_kind: str | None = None, cache_hit: bool = False) -> None:
        """A ``complete()`` call finished: answered, answered from cache, or failed."""
        with self._lock:
            s = self._stage(stage)
            s.calls += 1
            if cache_hit:
                s.cache_hits += 1
            if failure_kind is not None:
                s.failures[failure_kind] = s.failures.get(failure_kind, 0) + 1

    # -- reading ----------------------------------------------------------------------------

    def stages(self) -> list[str]:
        with self._lock:
            return sorted(self._stages)

    def stage_usage(self, stage: str | None = None) -> StageUsage:
        """Counters of one stage, or of all stages together when ``stage`` is None."""
        with self._lock:
            if stage is not None:
                return self._stages.get(stage, StageUsage()).model_copy(deep=True)
            total = StageUsage()
            for s in self._stages.values():
                total.add(s)
            return total

    def usage(self, stage: str | None = None) -> LLMUsage:
        """``LLMUsage`` of one stage (or the whole run when ``stage`` is None)."""
        return self.to_llm_usage(self.stage_usage(stage), self.price)

    def by_stage(self) -> dict[str, LLMUsage]:
        """``LLMUsage`` per stage name."""
        return {name: self.usage(name) for name in self.stages()}

    @staticmethod
    def to_llm_usage(s: StageUsage, price: PriceTable | None = None) -> LLMUsage:
        cost = None
        if price is not None:
            cost = round(
                s.prompt_tokens * price.prompt_usd_per_mtok / 1e6
                + s.completion_tokens * price.completion_usd_per_mtok / 1e6,
                6,
            )
        return LLMUsage(
            requests=s.requests,
            retries=s.retries,
            cache_hits=s.cache_hits,
            failures=dict(Counter(s.failures)),
            prompt_tokens=s.prompt_tokens,
            completion_tokens=s.completion_tokens,
            reasoning_tokens=s.reasoning_tokens,
            latency_p50_ms=s.latency_quantile_ms(0.50),
            latency_p99_ms=s.latency_quantile_ms(0.99),
            latency_histogram=dict(s.latency_histogram),
            cost_usd=cost,
        )

    # -- across processes -------------------------------------------------------------------

    def snapshot(self) -> UsageSnapshot:
        """A deep copy of all counters as plain data."""
        with self._lock:
            stages = {k: v.model_copy(deep=True) for k, v in self._stages.items()}
            return UsageSnapshot(stages=stages, price=self.price)

    def merge(self, snapshot: UsageSnapshot) -> None:
        """Add another tracker's snapshot into this one (counts add up; nothing is lost)."""
        with self._lock:
            for name, s in snapshot.stages.items():
                self._stage(name).add(s)

    def reset(self) -> UsageSnapshot:
        """Return the counters and zero them (for workers that ship deltas)."""
        with self._lock:
            snap = UsageSnapshot(stages=self._stages, price=self.price)
            self._stages = {}
            return snap
