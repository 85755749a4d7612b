"""Prometheus metrics of one app (its own registry, never the process-global one).

Run metrics are collected at scrape time from the job store and the run directories, so
they are right after an API restart, include runs started from the CLI, and need no
bookkeeping in handlers:

* ``agentcpt_runs{state}`` — runs by state (all runs);
* per run and stage (``{run_id, stage}``), for runs that are active or finished less than
  ``metrics_retention_s`` ago (so ``run_id`` values do not grow without bound):
  ``agentcpt_stage_records_total``, ``agentcpt_stage_failures_total``,
  ``agentcpt_llm_requests_total``, ``agentcpt_llm_retries_total``,
  ``agentcpt_llm_tokens_total{kind}`` and ``agentcpt_llm_latency_seconds`` — a histogram of
  successful LLM attempts, built from the driver's merged per-worker histograms, so its
  buckets add up across workers, stages and runs (``histogram_quantile`` over
  ``sum by (le)``). The driver's buckets are about 9% wide; each is counted in the first
  Prometheus bucket at or above its upper bound (counts are exact to that resolution,
  ``_sum`` is estimated from bucket midpoints).

The API's own traffic: ``agentcpt_api_requests_total{method, route, status}`` and the
histogram ``agentcpt_api_request_duration_seconds{method, route}``. ``route`` is the matched
route's template (``/v1/runs/{run_id}``) or ``unmatched``; ``method`` is one of a fixed set
or ``other``: whatever clients send, the label values stay bounded. No ``*_created`` series
are emitted (all families are built here, without creation timestamps).
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.services.runs import RunService
from synth.llm.accounting import latency_bucket_ms
from synth.records import utc_now
from synth.runstate import TERMINAL_STATES, RunDir

RUN_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LLM_LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
API_DURATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _le(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


def latency_histogram_seconds(
    histogram: Mapping[int, int], bounds_s: tuple[float, ...] = LLM_LATENCY_BUCKETS_S
) -> tuple[list[tuple[str, float]], float]:
    """The driver's log-bucket histogram as cumulative Prometheus buckets (seconds), and its sum."""
    counts = [0] * (len(bounds_s) + 1)
    total_s = 0.0
    for index, n in histogram.items():
        upper_ms, mid_ms = latency_bucket_ms(int(index))
        counts[bisect_left(bounds_s, upper_ms / 1000.0 - 1e-12)] += n
        total_s += n * mid_ms / 1000.0
    cumulative, running = [], 0
    for bound, n in zip((*bounds_s, float("inf")), counts, strict=True):
        running += n
        cumulative.append((_le(bound), float(running)))
    return cumulative, total_s


def _reported(finished_at: datetime | None, state: str, now: datetime, retention_s: int) -> bool:
    """Whether a run still has per-run series: active, or finished within the retention window."""
    if state not in TERMINAL_STATES or finished_at is None:
        return True
    return (now - finished_at).total_seconds() <= retention_s


class RunsCollector(Collector):
    """Reads runs and their progress.json at scrape time."""

    def __init__(
        self, runs: RunService, retention_s: int, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self.runs = runs
        self.retention_s = retention_s
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        self.runs.reconcile_active()
        rows = self.runs.all_rows()
        by_state = GaugeMetricFamily("agentcpt_runs", "Runs in the job store by state", labels=["state"])
        counts = dict.fromkeys(RUN_STATES, 0)
        for row in rows:
            counts[row.state] = counts.get(row.state, 0) + 1
        for state, n in counts.items():
            by_state.add_metric([state], n)
        yield by_state

        labels = ["run_id", "stage"]
        records = CounterMetricFamily("agentcpt_stage_records", "Records committed per stage", labels=labels)
        failures = CounterMetricFamily(
            "agentcpt_stage_failures", "Failed-ledger rows per stage", labels=labels
        )
        requests = CounterMetricFamily("agentcpt_llm_requests", "LLM requests per stage", labels=labels)
        retries = CounterMetricFamily("agentcpt_llm_retries", "LLM request retries per stage", labels=labels)
        tokens = CounterMetricFamily("agentcpt_llm_tokens", "LLM tokens per stage", labels=[*labels, "kind"])
        latency = HistogramMetricFamily(
            "agentcpt_llm_latency_seconds",
            "Latency of successful LLM attempts per stage (send to reply)",
            labels=labels,
        )
        now = self._clock()
        for row in rows:
            if not _reported(row.finished_at, row.state, now, self.retention_s):
                continue
            progress = RunDir(Path(row.run_dir)).read_progress()
            for stage, sp in progress.stages.items():
                key = [row.run_id, stage]
                records.add_metric(key, sp.records)
                failures.add_metric(key, sp.failed)
                requests.add_metric(key, sp.llm.requests)
                retries.add_metric(key, sp.llm.retries)
                tokens.add_metric([*key, "prompt"], sp.llm.prompt_tokens)
                tokens.add_metric([*key, "completion"], sp.llm.completion_tokens)
                if sp.llm.latency_histogram:
                    buckets, total_s = latency_histogram_seconds(sp.llm.latency_histogram)
                    latency.add_metric(key, buckets, sum_value=total_s)
        yield from (records, failures, requests, retries, tokens, latency)


class TrafficCollector(Collector):
    """The API's own requests, with bounded labels (see the module docstring)."""

    def __init__(self, buckets_s: tuple[float, ...] = API_DURATION_BUCKETS_S) -> None:
        self._bounds = buckets_s
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._durations: dict[tuple[str, str], tuple[list[int], float]] = {}

    @staticmethod
    def method_label(method: str) -> str:
        return method if method in METHODS else "other"

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = self.method_label(method)
        status_label = str(status) if 100 <= status <= 599 else "other"
        with self._lock:
            key = (method, route, status_label)
            self._requests[key] = self._requests.get(key, 0) + 1
            counts, total = self._durations.get((method, route), ([0] * (len(self._bounds) + 1), 0.0))
            counts[bisect_left(self._bounds, seconds)] += 1
            self._durations[(method, route)] = (counts, total + seconds)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            requests = dict(self._requests)
            durations = {k: (list(c), t) for k, (c, t) in self._durations.items()}
        counter = CounterMetricFamily(
            "agentcpt_api_requests", "HTTP requests served", labels=["method", "route", "status"]
        )
        for labels, n in sorted(requests.items()):
            counter.add_metric(list(labels), n)
        yield counter
        histogram = HistogramMetricFamily(
            "agentcpt_api_request_duration_seconds", "HTTP request latency", labels=["method", "route"]
        )
        for labels, (counts, total) in sorted(durations.items()):
            cumulative, running = [], 0
            for bound, n in zip((*self._bounds, float("inf")), counts, strict=True):
                running += n
                cumulative.append((_le(bound), float(running)))
            histogram.add_metric(list(labels), cumulative, sum_value=total)
        yield histogram


class ApiMetrics:
    """The registry of one app: run metrics collected at scrape time, and the API's own traffic."""

    def __init__(self, runs: RunService, retention_s: int = 3600) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.run_collector = RunsCollector(runs, retention_s)
        self.registry.register(self.run_collector)
        self.traffic = TrafficCollector()
        self.registry.register(self.traffic)


class MetricsMiddleware:
    """Pure ASGI middleware timing every HTTP request (BaseHTTPMiddleware costs ~2x per request)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # The route template (/v1/runs/{run_id}), not the raw path: bounded label values.
            # The router stores the matched route in the (shared) scope.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.traffic.observe(method, route, status, time.perf_counter() - start)
