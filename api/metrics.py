"""Prometheus metrics of one app (its own registry, never the process-global one).

Run metrics are collected at scrape time from the job store and the run directories, so
they are right after an API restart and need no bookkeeping in handlers:

* ``agentcpt_runs{state}`` — runs by state;
* ``agentcpt_stage_records_total`` / ``agentcpt_stage_failures_total`` {run_id, stage};
* ``agentcpt_llm_requests_total``, ``agentcpt_llm_tokens_total{kind}`` {run_id, stage};
* ``agentcpt_llm_latency_ms{run_id, stage, quantile}`` — the driver reports latency as
  p50/p99 per stage (``synth.runstate.LLMUsage``), exposed as a summary-style gauge.

The API's own traffic is a real histogram: ``agentcpt_api_request_duration_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.services.runs import RunService
from synth.runstate import RunDir

RUN_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


class RunsCollector(Collector):
    """Reads runs and their progress.json at scrape time."""

    def __init__(self, runs: RunService) -> None:
        self.runs = runs

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
        latency = GaugeMetricFamily(
            "agentcpt_llm_latency_ms", "LLM request latency quantiles per stage", labels=[*labels, "quantile"]
        )
        for row in rows:
            progress = RunDir(Path(row.run_dir)).read_progress()
            for stage, sp in progress.stages.items():
                key = [row.run_id, stage]
                records.add_metric(key, sp.records)
                failures.add_metric(key, sp.failed)
                requests.add_metric(key, sp.llm.requests)
                retries.add_metric(key, sp.llm.retries)
                tokens.add_metric([*key, "prompt"], sp.llm.prompt_tokens)
                tokens.add_metric([*key, "completion"], sp.llm.completion_tokens)
                if sp.llm.latency_p50_ms is not None:
                    latency.add_metric([*key, "0.5"], sp.llm.latency_p50_ms)
                if sp.llm.latency_p99_ms is not None:
                    latency.add_metric([*key, "0.99"], sp.llm.latency_p99_ms)
        yield from (records, failures, requests, retries, tokens, latency)


class ApiMetrics:
    """The registry of one app: run metrics collected at scrape time, and the API's own traffic."""

    def __init__(self, runs: RunService) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(RunsCollector(runs))
        self.requests = Counter(
            "agentcpt_api_requests",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "agentcpt_api_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )


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
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.duration.labels(method, route).observe(time.perf_counter() - start)
