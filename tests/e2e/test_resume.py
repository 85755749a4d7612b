"""Exactly-once under failure: the driver killed with SIGKILL and resumed; a worker killed mid-unit.

The driver-kill test runs the real ``agentcpt run`` (and the real planning stage) in a
subprocess against the session's Ray cluster and the fake OpenAI server, whose replies are
a function of the request alone, so an uninterrupted run of the same spec is the reference.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.progress import LogDisplay
from pipelines.runner import run_session
from synth.runstate import RunDir
from synth.shards import ShardStore
from synth.spec import parse_spec
from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig
from testing.toy_stages import (
    Behaviour,
    planning_responder,
    read_trace,
    seed_questions,
    toy_pipeline,
    unit_key,
)

assert planning_responder  # the fake server imports it by name

QUESTIONS, UNIT_SIZE, CONCURRENCY = 120, 10, 8


def planning_spec(base_url: str) -> dict[str, Any]:
    return {
        "name": "resume",
        "llm": {"base_url": base_url, "model": "fake-model", "max_concurrency": CONCURRENCY, "temperature": 0.0},
        "stages": {"planning": {}},
        "execution": {"unit_size": UNIT_SIZE, "max_units_in_flight": 2},
        "output_dir": "runs",
    }


def ids_by_stage(run_dir: Path) -> dict[str, list[str]]:
    store = ShardStore(run_dir)
    out = {s: sorted(store.read_table(s).column("id").to_pylist()) for s in ("questions", "planning")}
    out["planning-failed"] = sorted(
        i for ids in store.read_table("planning", kind="failed").column("input_ids").to_pylist() for i in ids
    )
    return out


def agentcpt(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from agentcpt.cli import main; sys.exit(main())", *args]


@pytest.mark.slow
def test_resume_after_driver_sigkill_gives_the_ids_of_an_uninterrupted_run(
    tmp_path: Path, ray_cluster: Any
) -> None:
    config = FakeServerConfig(latency_s=0.05, responder="testing.toy_stages:planning_responder")
    with FakeOpenAIServer(config) as server:
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(planning_spec(server.base_url)))

        # The reference: the same spec, uninterrupted, in this process.
        seed_questions(tmp_path / "runs" / "reference", "reference", QUESTIONS, UNIT_SIZE)
        reference = run_session(
            parse_spec(planning_spec(server.base_url)),
            run_id="reference",
            base_dir=tmp_path,
            display=LogDisplay(io.StringIO()),
            out=io.StringIO(),
            print_summary=False,
        )
        assert reference.outcome.state == "succeeded", reference.outcome.error
        reference_requests = server.stats().requests

        # The victim: a real `agentcpt run` driver on its own local Ray instance (the default),
        # SIGKILLed once some units are committed. Its Ray instance dies with it; its workers
        # linger for a moment, which the resumed session must fence off (pipelines.fence).
        victim_dir = tmp_path / "runs" / "victim"
        seed_questions(victim_dir, "victim", QUESTIONS, UNIT_SIZE)
        server.reset()
        log = open(tmp_path / "driver.log", "w")  # noqa: SIM115 (closed below)
        cmd = agentcpt("run", str(spec_path), "--run-id", "victim")
        driver = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while len(ShardStore(victim_dir).committed_units("planning")) < 3:
                assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no planning unit committed in time"
                time.sleep(0.05)
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait()
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
            log.close()
        committed_at_kill = ShardStore(victim_dir).committed_units("planning")
        assert len(committed_at_kill) < QUESTIONS // UNIT_SIZE, "the run finished before the kill"
        assert RunDir(victim_dir).read_status().state == "running"  # type: ignore[union-attr]  # as the kill left it

        # Resumed at once, on the session's (already running) cluster.
        resumed = subprocess.run(
            agentcpt("run", str(spec_path), "--run-id", "victim", "--ray-address", ray_cluster.address),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        # The CLI says where the shards are and prints the stats table.
        assert "resuming run victim" in resumed.stdout and "shards: " in resumed.stdout
        assert "planning" in resumed.stdout and "succeeded" in resumed.stdout
        victim_requests = server.stats().requests

    assert RunDir(victim_dir).read_status().state == "succeeded"  # type: ignore[union-attr]
    expected, got = ids_by_stage(reference.run_dir), ids_by_stage(victim_dir)
    assert got == expected
    assert len(set(got["planning"])) == len(got["planning"])
    assert ShardStore(victim_dir).verify() == []
    # Requests answered before the kill came from the request cache: the two sessions
    # together asked little more than one run does (at most what was in flight at the kill).
    assert victim_requests <= reference_requests + 2 * CONCURRENCY


@pytest.mark.slow
def test_a_worker_killed_mid_unit_is_retried_and_the_run_has_no_duplicates(
    tmp_path: Path, ray_cluster: Any
) -> None:
    trace = tmp_path / "trace.log"
    victim_unit = unit_key(24, 6)
    stages = toy_pipeline(
        48,
        questions=Behaviour(trace=str(trace)),
        planning=Behaviour(delay_s=0.2, trace=str(trace), kill_unit=victim_unit),
    )
    spec = parse_spec(
        {
            "name": "kill-worker",
            "stages": {"questions": {}, "planning": {}, "corpus": {}},
            "execution": {"unit_size": 6},
            "output_dir": "runs",
        }
    )
    result = run_session(
        spec,
        base_dir=tmp_path,
        stages=stages,
        display=LogDisplay(io.StringIO()),
        out=io.StringIO(),
        print_summary=False,
    )
    assert result.outcome.state == "succeeded", result.outcome.error
    assert trace.with_suffix(f".killed-planning-{victim_unit}").exists(), "the worker was not killed"
    attempts = [
        e for e in read_trace(trace) if e.stage == "planning" and e.key == victim_unit and e.event == "start"
    ]
    assert len(attempts) == 2 and attempts[0].pid != attempts[1].pid  # retried in a new process
    for stage in ("questions", "planning", "corpus"):
        stage_ids = ShardStore(result.run_dir).read_table(stage).column("id").to_pylist()
        assert len(stage_ids) == 48 and len(set(stage_ids)) == 48, stage
