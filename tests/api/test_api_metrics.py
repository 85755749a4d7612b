"""/metrics: runs by state, per-stage records and failures, LLM requests, tokens, the LLM latency
histogram (seconds, summable across workers), bounded labels, retention, no ``_created``."""

from __future__ import annotations

import asyncio
import random
import string
from datetime import timedelta

import pytest
from api_helpers import AUTH
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import LLM_LATENCY_BUCKETS_S, latency_histogram_seconds
from pipelines.progress import add_usage
from synth.llm.accounting import UsageTracker
from synth.records import utc_now


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_expose_runs_stages_llm_usage_and_a_latency_histogram_in_seconds(make_api):
    api = make_api("succeed")
    run_id = api.submit()["run_id"]
    api.wait(run_id)
    api.client.get("/v1/runs", headers=AUTH)
    resp = api.client.get("/metrics", headers=AUTH)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    m = _samples(resp.text)
    assert m[("agentcpt_runs", (("state", "succeeded"),))] == 1
    assert m[("agentcpt_runs", (("state", "running"),))] == 0

    def key(**labels: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted({"run_id": run_id, **labels}.items()))

    assert m[("agentcpt_stage_records_total", key(stage="documents"))] == 7
    assert m[("agentcpt_stage_failures_total", key(stage="documents"))] == 1
    assert m[("agentcpt_llm_requests_total", key(stage="planning"))] == 8
    assert m[("agentcpt_llm_tokens_total", key(stage="planning", kind="prompt"))] == 1200
    assert m[("agentcpt_llm_tokens_total", key(stage="planning", kind="completion"))] == 300
    # 4 attempts at 0.12 s and 4 at 0.45 s, recorded by two workers' trackers.
    assert m[("agentcpt_llm_latency_seconds_count", key(stage="planning"))] == 8
    assert m[("agentcpt_llm_latency_seconds_bucket", key(stage="planning", le="0.1"))] == 0
    assert m[("agentcpt_llm_latency_seconds_bucket", key(stage="planning", le="0.25"))] == 4
    assert m[("agentcpt_llm_latency_seconds_bucket", key(stage="planning", le="0.5"))] == 8
    assert m[("agentcpt_llm_latency_seconds_bucket", key(stage="planning", le="+Inf"))] == 8
    assert m[("agentcpt_llm_latency_seconds_sum", key(stage="planning"))] == pytest.approx(4 * 0.57, rel=0.06)
    # Prometheus conventions: no summary-style gauge with a quantile label, no ms, no _created.
    assert "quantile=" not in resp.text and "latency_ms" not in resp.text
    assert "_created" not in resp.text
    route = (("method", "GET"), ("route", "/v1/runs"), ("status", "200"))
    assert m[("agentcpt_api_requests_total", route)] >= 1
    assert ("agentcpt_api_request_duration_seconds_count", (("method", "GET"), ("route", "/v1/runs"))) in m


def test_latency_buckets_of_two_workers_add_up_to_those_of_their_merged_usage():
    workers = []
    for latencies in ((0.02, 0.3, 0.3, 7.0), (0.02, 0.9, 40.0)):
        tracker = UsageTracker()
        for latency_s in latencies:
            tracker.record_attempt("rollouts", ok=True, latency_s=latency_s)
        workers.append(tracker.usage("rollouts"))
    merged = add_usage(workers[0], workers[1])
    separately = [latency_histogram_seconds(w.latency_histogram)[0] for w in workers]
    together = latency_histogram_seconds(merged.latency_histogram)[0]
    assert [(le, a[1] + b[1]) for le, a, b in zip([le for le, _ in together], *separately, strict=True)] == together
    assert together[-1] == ("+Inf", 7.0)
    # Percentiles come from the summed histogram, not the larger of the two workers' values.
    assert merged.latency_p50_ms is not None and merged.latency_p50_ms < workers[1].latency_p50_ms


def test_each_latency_lands_in_the_first_bucket_at_or_above_it():
    tracker = UsageTracker()
    for latency_s in (0.004, 0.2, 0.2, 3.0, 1000.0):
        tracker.record_attempt("planning", ok=True, latency_s=latency_s)
    buckets, total_s = latency_histogram_seconds(tracker.usage("planning").latency_histogram)
    counts = dict(buckets)
    assert counts[repr(LLM_LATENCY_BUCKETS_S[0])] == 1
    assert counts["0.1"] == 1 and counts["0.25"] == 3 and counts["5.0"] == 4 and counts["300.0"] == 4
    assert counts["+Inf"] == 5
    assert total_s == pytest.approx(1003.404, rel=0.05)


def test_finished_runs_leave_the_per_run_series_after_the_retention_window(make_api):
    api = make_api("succeed", metrics_retention_s=3600)
    run_id = api.submit()["run_id"]
    api.wait(run_id)
    assert f'run_id="{run_id}"' in api.client.get("/metrics", headers=AUTH).text
    # The same run, an hour and a bit later: gone from per-run series, still counted by state.
    api.client.app.state.ctx.metrics.run_collector._clock = lambda: utc_now() + timedelta(seconds=3700)
    text = api.client.get("/metrics", headers=AUTH).text
    assert f'run_id="{run_id}"' not in text
    assert _samples(text)[("agentcpt_runs", (("state", "succeeded"),))] == 1


def test_an_active_run_keeps_its_series_whatever_the_retention(make_api):
    api = make_api("wait", metrics_retention_s=0)
    run_id = api.submit()["run_id"]
    api.wait(run_id, frozenset({"running"}))
    assert f'agentcpt_stage_records_total{{run_id="{run_id}",stage="documents"}}' in api.client.get(
        "/metrics", headers=AUTH
    ).text
    api.client.post(f"/v1/runs/{run_id}/cancel", headers=AUTH)
    api.wait(run_id)
    assert f'run_id="{run_id}"' not in api.client.get("/metrics", headers=AUTH).text


async def _raw_requests(app, requests: list[tuple[str, str]]) -> list[int]:
    """Send requests straight into the ASGI app (no HTTP client: 20,000 of them in seconds)."""
    statuses: list[int] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for method, path in requests:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 5000),
            "server": ("testserver", 80),
            "state": {},
        }
        await app(scope, receive, send)
    return statuses


@pytest.mark.slow
def test_20000_requests_with_random_methods_and_paths_leave_metrics_under_1000_lines(make_api):
    api = make_api()
    rng = random.Random(0)
    letters = string.ascii_uppercase
    requests = [
        (
            "".join(rng.choices(letters, k=rng.randint(3, 12))),
            "/" + "".join(rng.choices(string.ascii_lowercase, k=8)) if i % 2 else "/v1/runs",
        )
        for i in range(20_000)
    ]
    statuses = asyncio.run(_raw_requests(api.client.app, requests))
    assert len(statuses) == 20_000 and set(statuses) <= {401, 404, 405}
    text = api.client.get("/metrics", headers=AUTH).text
    lines = text.count("\n")
    print(f"/metrics after 20,000 random-method requests: {lines} lines, {len(text)} bytes")
    assert lines < 1000
    methods = {
        s.labels["method"]
        for f in text_string_to_metric_families(text)
        if f.name == "agentcpt_api_requests"
        for s in f.samples
    }
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert "other" in methods


def test_each_app_has_its_own_registry(make_api):
    first, second = make_api(), make_api()
    assert first.client.app.state.ctx.metrics.registry is not second.client.app.state.ctx.metrics.registry
    assert first.client.get("/metrics", headers=AUTH).status_code == 200
    assert second.client.get("/metrics", headers=AUTH).status_code == 200
