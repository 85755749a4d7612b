"""Usage accounting: per-stage counts, latency quantiles, cost, and exact merging across workers."""

from __future__ import annotations

import pickle
import random

import pytest

from synth.llm.accounting import UsageSnapshot, UsageTracker
from synth.llm.config import PriceTable
from synth.runstate import LLMUsage


def fill(tracker: UsageTracker, stage: str, latencies_s: list[float]) -> None:
    for lat in latencies_s:
        tracker.record_attempt(stage, ok=True, latency_s=lat, prompt_tokens=10, completion_tokens=5)
        tracker.record_call(stage)


def test_counts_are_kept_per_stage_and_returned_as_llm_usage() -> None:
    t = UsageTracker()
    fill(t, "planning", [0.1, 0.2])
    t.record_attempt("planning", ok=False)
    t.record_retry("planning", "rate_limited")
    t.record_call("planning", failure_kind="http_error")
    t.record_call("reasoning", cache_hit=True)
    usage = t.usage("planning")
    assert isinstance(usage, LLMUsage)
    assert (usage.requests, usage.retries, usage.cache_hits, usage.failures) == (3, 1, 0, {"http_error": 1})
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cost_usd) == (20, 10, None)
    assert t.usage("reasoning").cache_hits == 1
    assert set(t.by_stage()) == {"planning", "reasoning"}
    assert t.usage().requests == 3  # whole run


def test_latency_quantiles_are_within_the_histogram_resolution() -> None:
    rng = random.Random(0)
    latencies = [rng.lognormvariate(-1.5, 0.6) for _ in range(5000)]
    t = UsageTracker()
    fill(t, "s", latencies)
    latencies.sort()
    usage = t.usage("s")
    assert usage.latency_p50_ms == pytest.approx(latencies[2499] * 1000, rel=0.1)
    assert usage.latency_p99_ms == pytest.approx(latencies[4949] * 1000, rel=0.1)


def test_cost_comes_from_the_price_table() -> None:
    t = UsageTracker(price=PriceTable(prompt_usd_per_mtok=2.0, completion_usd_per_mtok=8.0))
    t.record_attempt("s", ok=True, latency_s=0.1, prompt_tokens=1_000_000, completion_tokens=500_000)
    assert t.usage("s").cost_usd == pytest.approx(6.0)


def test_merging_worker_snapshots_equals_one_tracker_that_saw_everything() -> None:
    rng = random.Random(1)
    everything = UsageTracker()
    workers = [UsageTracker() for _ in range(4)]
    for i in range(2000):
        stage = rng.choice(["planning", "reasoning"])
        lat = rng.uniform(0.01, 2.0)
        for t in (everything, workers[i % 4]):
            fill(t, stage, [lat])
            if i % 7 == 0:
                t.record_retry(stage, "server_error")
            if i % 11 == 0:
                t.record_call(stage, failure_kind="timeout")
    driver = UsageTracker()
    for w in workers:
        snap = pickle.loads(pickle.dumps(w.snapshot()))  # crosses a process boundary
        driver.merge(UsageSnapshot.model_validate_json(snap.model_dump_json()))  # and JSON
    assert driver.by_stage() == everything.by_stage()
    assert driver.snapshot().by_stage == everything.by_stage()


def test_reset_hands_over_the_counts_and_starts_from_zero() -> None:
    t = UsageTracker()
    fill(t, "s", [0.1])
    snap = t.reset()
    assert snap.by_stage["s"].requests == 1
    assert t.usage("s").requests == 0
