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


def test_the_embedded_endpoint_starts_beside_ray_and_is_stopped_when_ray_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    calls: list[str] = []
    ray_started = threading.Event()

    class StartedEndpoint:
        base_url = "http://127.0.0.1:1/v1"
        started_here = True

        def stop(self) -> None:
            calls.append("stop")

    def ensure_endpoint(**kwargs: Any) -> StartedEndpoint:
        calls.append("start")
        # The model loads while Ray starts: both are under way at once.
        calls.append("ray already starting" if ray_started.wait(timeout=10) else "ray not started")
        return StartedEndpoint()

    class RayWontStart(Exception):
        pass

    def failing_ray_session(address: Any) -> Any:
        ray_started.set()
        time.sleep(0.2)
        raise RayWontStart("no cluster at that address")

    monkeypatch.setattr("synth.llm.embedded.ensure_endpoint", ensure_endpoint)
    monkeypatch.setattr("pipelines.runner.ray_session", failing_ray_session)
    spec = parse_spec({"name": "embedded", "llm": {"base_url": "embedded"}, "stages": {"planning": {}}, "output_dir": "runs"})
    buf = io.StringIO()
    result = run_session(
        spec, base_dir=tmp_path, stages=toy_pipeline(4, corpus=False, use_llm=True),
        display=LogDisplay(buf), out=buf, print_summary=False,
    )  # fmt: skip
    assert result.outcome.state == "failed" and "no cluster" in (result.outcome.error or "")
    assert calls == ["start", "ray already starting", "stop"]  # started early, and not left running


def test_an_endpoint_started_beside_ray_outlives_the_thread_that_launched_it(
    tmp_path: Path, ray_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server asks for SIGTERM when its parent dies, and Linux means the launching *thread*:
    a starter thread that returned would take the server with it."""
    import socket
    import sys
    import time

    from synth.llm import embedded
    from synth.llm.embedded import EmbeddedEndpoint, served_models

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model_dir = tmp_path / "models" / "tiny"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (model_dir / "model.safetensors").write_bytes(b"\0")
    monkeypatch.setattr(embedded, "ensure_model_dir", lambda: model_dir)
    monkeypatch.setattr(
        EmbeddedEndpoint, "command",
        lambda self, d: [sys.executable, "-m", "testing.fake_llm_server", "--port", str(self.port)],
    )  # fmt: skip
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    spec = parse_spec({"name": "x", "llm": {"base_url": "embedded", "embedded_port": port}, "output_dir": "runs"})
    endpoints = RunEndpoints(spec, run_id="r", needed=True).start_embedded()
    try:
        endpoints.open()
        proc = endpoints._embedded._proc
        assert proc is not None
        time.sleep(1.5)
        assert proc.poll() is None and served_models(f"http://127.0.0.1:{port}/v1") is not None
    finally:
        endpoints.close()
    assert proc.wait(timeout=15) is not None  # and close() still stops it
