"""LLM wiring of a run: the embedded endpoint started by the driver, one limiter per endpoint URL."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.llm_setup import RunEndpoints
from pipelines.progress import LogDisplay
from pipelines.runner import run_session
from synth.shards import ShardStore
from synth.spec import parse_spec
from testing.toy_stages import toy_pipeline


def test_endpoints_sharing_a_url_share_one_limiter(ray_cluster: Any) -> None:
    same = parse_spec(
        {"name": "x", "llm": {"base_url": "http://a/v1", "model": "m"}, "judge_llm": {"base_url": "http://a/v1", "model": "m"}}
    )
    other = parse_spec(
        {"name": "x", "llm": {"base_url": "http://a/v1", "model": "m"}, "judge_llm": {"base_url": "http://b/v1", "model": "m"}}
    )
    with RunEndpoints(same, run_id="r", needed=True) as endpoints:
        assert list(endpoints.limiters) == ["http://a/v1"]
    with RunEndpoints(other, run_id="r", needed=True) as endpoints:
        assert sorted(endpoints.limiters) == ["http://a/v1", "http://b/v1"]
        stats = endpoints.limiter_stats()
        assert stats["http://a/v1"].max_concurrency == 64


def test_an_embedded_run_starts_the_endpoint_gives_workers_its_url_and_stops_it(
    tmp_path: Path, ray_cluster: Any, fake_llm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []

    class StartedEndpoint:
        base_url = fake_llm.base_url
        started_here = True

        def stop(self) -> None:
            calls.append("stop")

    def ensure_endpoint(**kwargs: Any) -> StartedEndpoint:
        calls.append(kwargs)
        return StartedEndpoint()

    # Stands in for transformers serve (a slow test of its own in tests/synth/llm).
    monkeypatch.setattr("synth.llm.embedded.ensure_endpoint", ensure_endpoint)
    spec = parse_spec(
        {
            "name": "embedded",
            "llm": {"base_url": "embedded", "max_concurrency": 4, "temperature": 0.3},
            "stages": {"questions": {}, "planning": {}},
            "execution": {"unit_size": 5},
            "output_dir": "runs",
        }
    )
    buf = io.StringIO()
    result = run_session(
        spec,
        base_dir=tmp_path,
        stages=toy_pipeline(20, corpus=False, use_llm=True),
        display=LogDisplay(buf),
        out=buf,
        print_summary=False,
    )
    assert result.outcome.state == "succeeded", result.outcome.error
    assert calls[0] == {"port": 8010, "batching": True, "temperature": 0.3}
    assert calls[-1] == "stop" and len(calls) == 2
    analyses = ShardStore(result.run_dir).read_table("planning").column("analysis").to_pylist()
    assert len(analyses) == 20 and not any(a.startswith("square") for a in analyses)  # the LLM answered
    assert fake_llm.stats().requests == 20 + 1  # + the preflight's test completion
    usage = json.loads((result.run_dir / "progress.json").read_text())["stages"]["planning"]["llm"]
    assert usage["requests"] == 20 and usage["prompt_tokens"] > 0
    # The request cache is in the run: every answered request has an entry.
    from synth.llm.cache import RequestCache

    cache = RequestCache(result.run_dir / "cache" / "llm")
    assert len(cache) == 20 and len(cache.files()) <= 4  # one segment per planning unit (issue 19)
