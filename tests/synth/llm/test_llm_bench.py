"""``agentcpt llm bench`` prints its measurements as JSON."""

from __future__ import annotations

import json

import pytest

from agentcpt.cli import main
from synth.errors import UsageError
from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig


def test_llm_bench_cli_prints_json_with_rate_latency_errors_and_memory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeOpenAIServer(FakeServerConfig(latency_s=0.01), mode="thread") as server:
        code = main(
            ["llm", "bench", "--base-url", server.base_url, "--concurrency", "8", "--requests", "200"]
        )
        assert server.stats().peak_in_flight <= 8
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ok"] == 200 and result["errors"] == {}
    assert result["requests_per_s"] > 0 and result["latency_p50_ms"] >= 10
    assert result["peak_rss_mb"] > 0 and 0 < result["peak_tasks"] <= 2 * 8 + 5


def test_llm_bench_rejects_a_zero_concurrency() -> None:
    from synth.llm.bench import bench_command

    with pytest.raises(UsageError):
        bench_command("http://127.0.0.1:9/v1", concurrency=0)
