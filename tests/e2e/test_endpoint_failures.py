"""Real endpoint failures end a run loudly: ``agentcpt run`` against broken endpoints.

Each case runs the real CLI (and the real planning stage, over seeded questions) against the
fake OpenAI server playing a broken provider, and asserts the exit code, the run's state
and its one-line message. Time from start to ``failed`` is printed for the dead-endpoint
cases (run pytest with ``-s`` to see it).

``10.255.255.1`` is used only as a connect target that never answers.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.progress import LogDisplay
from pipelines.runner import run_session
from synth.llm.preflight import PREFLIGHT_MESSAGES
from synth.runstate import RunDir
from synth.shards import ShardStore
from synth.spec import parse_spec
from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig, FaultPlan, messages_digest
from testing.toy_stages import planning_responder, seed_questions

assert planning_responder  # the fake server imports it by name

pytestmark = pytest.mark.slow

QUESTIONS, UNIT_SIZE, CONCURRENCY = 40, 10, 8
RESPONDER = "testing.toy_stages:planning_responder"
UNROUTABLE = "10.255.255.1"  # a connect target that never answers; nothing is sent anywhere else


def planning_spec(base_url: str, **llm: Any) -> dict[str, Any]:
    return {
        "name": "endpoint",
        "llm": {"base_url": base_url, "model": "fake-model", "max_concurrency": CONCURRENCY, "temperature": 0.0,
                "backoff_base_s": 0.2, **llm},
        "stages": {"planning": {}},
        "execution": {"unit_size": UNIT_SIZE, "max_units_in_flight": 4},
        "output_dir": "runs",
    }  # fmt: skip


def agentcpt(*args: str) -> list[str]:
    return [sys.executable, "-m", "agentcpt.cli", *args]


def start_run(tmp_path: Path, spec: dict[str, Any], run_id: str, ray_address: str, env: dict[str, str] | None = None,
              seed: bool = True) -> subprocess.Popen[str]:  # fmt: skip
    spec_path = tmp_path / f"{run_id}.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    if seed:
        seed_questions(tmp_path / "runs" / run_id, run_id, QUESTIONS, UNIT_SIZE)
    return subprocess.Popen(
        agentcpt("run", str(spec_path), "--run-id", run_id, "--ray-address", ray_address),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout_s: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, out, err


def run_cli(tmp_path: Path, spec: dict[str, Any], run_id: str, ray_address: str, **kw: Any) -> tuple[int, str, str, float]:
    t0 = time.monotonic()
    code, out, err = finish(start_run(tmp_path, spec, run_id, ray_address, **kw))
    return code, out, err, time.monotonic() - t0


def assert_failed_with(tmp_path: Path, run_id: str, code: int, out: str, err: str, message: str | re.Pattern[str]) -> str:
    """Exit 1, state failed, and the one-line message in status.json and on stdout; returns it."""
    assert code == 1, out[-3000:] + err[-3000:]
    status = RunDir(tmp_path / "runs" / run_id).read_status()
    assert status is not None and status.state == "failed"
    assert status.error is not None and "\n" not in status.error
    if isinstance(message, re.Pattern):
        assert message.fullmatch(status.error), status.error
    else:
        assert status.error == message
    assert f"run {run_id} FAILED: {status.error}" in out
    assert "Traceback" not in err, err[-3000:]
    return status.error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_closed_port_fails_the_run_in_seconds(tmp_path: Path, ray_cluster: Any) -> None:
    port = free_port()
    code, out, err, seconds = run_cli(tmp_path, planning_spec(f"http://127.0.0.1:{port}/v1"), "closed", ray_cluster.address)
    assert_failed_with(tmp_path, "closed", code, out, err, f"llm: http://127.0.0.1:{port}/v1 unreachable: connection refused")
    assert not ShardStore(tmp_path / "runs" / "closed").committed_units("planning")
    print(f"\n[time to failed] closed port: {seconds:.1f} s")
    assert seconds < 30


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A local port whose accept queue is full: a connect gets no answer at all (SYNs are dropped)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=2)  # takes the one slot
    try:
        yield port
    finally:
        filler.close()
        server.close()


def test_a_host_that_never_answers_fails_the_run_in_the_connect_timeout(
    tmp_path: Path, ray_cluster: Any, unanswered_port: int
) -> None:
    url = f"http://127.0.0.1:{unanswered_port}/v1"
    code, out, err, seconds = run_cli(tmp_path, planning_spec(url), "silent", ray_cluster.address)
    assert_failed_with(tmp_path, "silent", code, out, err, f"llm: {url} unreachable: no connection within 10 s (connect timeout)")
    print(f"\n[time to failed] host that never answers (local, full accept queue): {seconds:.1f} s")
    assert seconds < 30


def test_an_unroutable_address_fails_the_run_in_seconds(tmp_path: Path, ray_cluster: Any) -> None:
    url = f"http://{UNROUTABLE}/v1"
    code, out, err, seconds = run_cli(tmp_path, planning_spec(url), "unroutable", ray_cluster.address)
    # Where 10.255.255.1 is unroutable, the connect timeout ends it; some sandboxes intercept the
    # address (answering or refusing): then that is the one line.
    assert_failed_with(
        tmp_path, "unroutable", code, out, err,
        re.compile(re.escape(f"llm: {url} ") + r"(unreachable: (no connection within 10 s \(connect timeout\)"
                   r"|connection refused|cannot connect \(.+\))|answered \d+: .*)"),
    )  # fmt: skip
    print(f"\n[time to failed] unroutable {UNROUTABLE}: {seconds:.1f} s ({RunDir(tmp_path / 'runs' / 'unroutable').read_status().error})")  # type: ignore[union-attr]
    assert seconds < 30


def test_a_wrong_key_fails_at_preflight_before_any_stage(tmp_path: Path, ray_cluster: Any) -> None:
    with FakeOpenAIServer(FakeServerConfig(api_key="sk-right", responder=RESPONDER)) as server:
        spec = planning_spec(server.base_url, api_key_env="AGENTCPT_E2E_KEY")
        code, out, err, seconds = run_cli(tmp_path, spec, "badkey", ray_cluster.address, env={"AGENTCPT_E2E_KEY": "sk-wrong"})
        stats = server.stats()
    assert_failed_with(tmp_path, "badkey", code, out, err, f"llm: {server.base_url} answered 401: Incorrect API key provided")
    assert stats.requests == 0 and stats.refused == {"401": 1}  # GET /models only: nothing was spent
    assert "[planning] started" not in out
    print(f"\n[time to failed] 401 at preflight: {seconds:.1f} s")


def test_a_refused_max_tokens_fails_naming_it_then_max_completion_tokens_succeeds(tmp_path: Path, ray_cluster: Any) -> None:
    with FakeOpenAIServer(FakeServerConfig(reject_params=["max_tokens"], responder=RESPONDER)) as server:
        code, out, err, _ = run_cli(tmp_path, planning_spec(server.base_url), "maxtok", ray_cluster.address)
        message = assert_failed_with(
            tmp_path, "maxtok", code, out, err,
            re.compile(re.escape(f"llm: {server.base_url} answered 400: Unsupported parameter: 'max_tokens'") + r".*"
                       + re.escape("(set llm.max_tokens_param: max_completion_tokens)")),
        )  # fmt: skip
        # The fix, then a resume of the same run.
        fixed = planning_spec(server.base_url, max_tokens_param="max_completion_tokens")
        code, out, err, _ = run_cli(tmp_path, fixed, "maxtok", ray_cluster.address, seed=False)
    assert code == 0, out[-3000:] + err[-3000:]
    assert RunDir(tmp_path / "runs" / "maxtok").read_status().state == "succeeded"  # type: ignore[union-attr]
    store = ShardStore(tmp_path / "runs" / "maxtok")
    assert store.read_table("planning").num_rows + store.read_table("planning", kind="failed").num_rows == QUESTIONS
    assert "'max_tokens'" in message


def test_thirty_percent_of_500s_are_retried_the_run_succeeds_and_the_ledger_counts_them(tmp_path: Path, ray_cluster: Any) -> None:
    config = FakeServerConfig(faults=FaultPlan(rates={"server_error": 0.3}), responder=RESPONDER, seed=3)
    with FakeOpenAIServer(config) as server:
        code, out, err, _ = run_cli(tmp_path, planning_spec(server.base_url, backoff_base_s=0.05), "flaky", ray_cluster.address)
        stats = server.stats()
    assert code == 0, out[-3000:] + err[-3000:]
    assert RunDir(tmp_path / "runs" / "flaky").read_status().state == "succeeded"  # type: ignore[union-attr]
    usage = json.loads((tmp_path / "runs" / "flaky" / "progress.json").read_text())["stages"]["planning"]["llm"]
    injected = stats.faults["server_error"]
    assert injected > 0.2 * stats.requests
    # Every injected 500 was retried and counted; the preflight (not a stage) may have met up to 2.
    assert injected - 2 <= usage["retries"] <= injected
    assert usage["failures"] == {}
    store = ShardStore(tmp_path / "runs" / "flaky")
    assert store.read_table("planning").num_rows + store.read_table("planning", kind="failed").num_rows == QUESTIONS
    assert "http_error" not in set(store.read_table("planning", kind="failed").column("error_kind").to_pylist())


def answered(log: Path) -> list[str]:
    """Digests of the stage requests a server answered (its request log, less the preflights)."""
    preflight = messages_digest(PREFLIGHT_MESSAGES)
    if not log.exists():
        return []
    return [d for d in (json.loads(line)["digest"] for line in log.read_text().splitlines()) if d != preflight]


def planning_ids(run_dir: Path) -> tuple[list[str], list[str]]:
    store = ShardStore(run_dir)
    failed = [i for ids in store.read_table("planning", kind="failed").column("input_ids").to_pylist() for i in ids]
    return sorted(store.read_table("planning").column("id").to_pylist()), sorted(failed)


def test_an_endpoint_dying_mid_run_trips_the_breaker_and_a_resume_pays_nothing_twice(tmp_path: Path, ray_cluster: Any) -> None:
    # The reference: the same spec, uninterrupted.
    with FakeOpenAIServer(FakeServerConfig(latency_s=0.02, responder=RESPONDER, request_log=str(tmp_path / "a.log"))) as a:
        seed_questions(tmp_path / "runs" / "reference", "reference", QUESTIONS, UNIT_SIZE)
        reference = run_session(
            parse_spec(planning_spec(a.base_url)), run_id="reference", base_dir=tmp_path,
            display=LogDisplay(io.StringIO()), out=io.StringIO(), print_summary=False,
        )  # fmt: skip
    assert reference.outcome.state == "succeeded", reference.outcome.error

    # The victim: its endpoint dies after about half of the run's requests.
    port = free_port()
    dying = FakeServerConfig(
        latency_s=0.02, responder=RESPONDER, request_log=str(tmp_path / "b.log"), die_after_requests=QUESTIONS
    )
    server = FakeOpenAIServer(dying, port=port).start()
    try:
        t0 = time.monotonic()
        driver = start_run(tmp_path, planning_spec(server.base_url), "victim", ray_cluster.address)
        assert server._proc is not None
        while server._proc.poll() is None and driver.poll() is None:
            time.sleep(0.02)
        died_at = time.monotonic()
        code, out, err = finish(driver)
        failed_at = time.monotonic()
    finally:
        server.stop()
    url = f"http://127.0.0.1:{port}/v1"
    message = assert_failed_with(
        tmp_path, "victim", code, out, err,
        re.compile(re.escape(f"llm: {url} ") + r"(unreachable: connection refused|the server closed the connection without a reply)"
                   + r" \(\d+ failed requests in a row; circuit breaker\)"),
    )  # fmt: skip
    print(f"\n[time to failed] endpoint died mid-run: {failed_at - t0:.1f} s from start, "
          f"{failed_at - died_at:.1f} s from the death ({message})")  # fmt: skip
    committed = ShardStore(tmp_path / "runs" / "victim").committed_units("planning")
    assert 0 < len(committed) < QUESTIONS // UNIT_SIZE
    failed_kinds = ShardStore(tmp_path / "runs" / "victim").read_table("planning", kind="failed").column("error_kind")
    assert "connection_error" not in set(failed_kinds.to_pylist())  # no committed row says "endpoint down"

    # The endpoint comes back on the same address; the run resumes.
    back = FakeServerConfig(latency_s=0.02, responder=RESPONDER, request_log=str(tmp_path / "c.log"))
    with FakeOpenAIServer(back, port=port):
        code, out, err, _ = run_cli(tmp_path, planning_spec(url), "victim", ray_cluster.address, seed=False)
    assert code == 0, out[-3000:] + err[-3000:]
    assert RunDir(tmp_path / "runs" / "victim").read_status().state == "succeeded"  # type: ignore[union-attr]
    assert planning_ids(tmp_path / "runs" / "victim") == planning_ids(reference.run_dir)
    paid = answered(tmp_path / "b.log") + answered(tmp_path / "c.log")
    assert len(paid) == len(set(paid)), "a request was answered twice"
    assert sorted(paid) == sorted(answered(tmp_path / "a.log"))  # exactly the uninterrupted run's requests


def test_a_stage_in_which_every_llm_call_failed_never_ends_the_run_succeeded(tmp_path: Path, ray_cluster: Any) -> None:
    from testing.toy_stages import toy_pipeline

    # Every reply is unparseable: each call fails as invalid_output, row by row.
    config = FakeServerConfig(faults=FaultPlan(rates={"garbage": 1.0}))
    with FakeOpenAIServer(config) as server:
        spec = planning_spec(server.base_url, max_invalid_retries=0)
        spec["stages"] = {"questions": {}, "planning": {}}
        result = run_session(
            parse_spec(spec), run_id="garbage", base_dir=tmp_path, stages=toy_pipeline(12, corpus=False, use_llm=True),
            display=LogDisplay(io.StringIO()), out=io.StringIO(), print_summary=False,
        )  # fmt: skip
    assert result.outcome.state == "failed" and result.exit_code == 1
    assert result.outcome.error == (
        "planning: no record written and every LLM call failed (12 invalid_output); the failed ledger has them "
        "(agentcpt stats RUN_ID --sql 'select * from planning_failed')"
    )
    assert ShardStore(result.run_dir).read_table("planning", kind="failed").num_rows == 12
