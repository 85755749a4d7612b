"""/metrics: runs by state, per-stage records and failures, LLM requests, tokens and latency."""

from __future__ import annotations

from api_helpers import AUTH
from prometheus_client.parser import text_string_to_metric_families


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_expose_runs_stages_and_llm_usage(make_api):
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
    assert m[("agentcpt_llm_latency_ms", key(stage="planning", quantile="0.5"))] == 120.0
    assert m[("agentcpt_llm_latency_ms", key(stage="planning", quantile="0.99"))] == 450.0
    route = (("method", "GET"), ("route", "/v1/runs"), ("status", "200"))
    assert m[("agentcpt_api_requests_total", route)] >= 1
    assert ("agentcpt_api_request_duration_seconds_count", (("method", "GET"), ("route", "/v1/runs"))) in m


def test_each_app_has_its_own_registry(make_api):
    first, second = make_api(), make_api()
    assert first.client.app.state.ctx.metrics.registry is not second.client.app.state.ctx.metrics.registry
    assert first.client.get("/metrics", headers=AUTH).status_code == 200
    assert second.client.get("/metrics", headers=AUTH).status_code == 200
