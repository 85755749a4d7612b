"""Killing the API while a run is going loses nothing: the driver runs on, and the
restarted API finds the run, reconciles it to completion and lists it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import psutil
import pytest

from synth.runstate import RunDir
from testing.api_server import ApiServer, stop_driver, wait_for_state

REPO = Path(__file__).resolve().parents[2]
PAGES = REPO / "configs" / "quickstart" / "pages"
TOKEN = "restart-test-token-0123456789"


@pytest.mark.slow
def test_run_survives_an_api_kill_and_the_restarted_api_completes_and_lists_it(tmp_path, fake_llm):
    data_dir = tmp_path / "data"
    (data_dir / "inputs").mkdir(parents=True)
    for page in sorted(PAGES.glob("*.html"))[:4]:
        shutil.copy(page, data_dir / "inputs")
    spec = {
        "name": "restart",
        "inputs": {"web": ["inputs/*.html"]},
        "llm": {"base_url": fake_llm.base_url, "model": "fake-model"},
        "stages": {"documents": {"min_chars": 100}, "memory": {}},
        "execution": {"unit_size": 2},
    }
    # REST specs may use only the endpoints the operator lists (AGENTCPT_LLM_ENDPOINTS).
    env = {"AGENTCPT_LLM_ENDPOINTS": json.dumps([{"base_url": fake_llm.base_url}])}
    first = ApiServer(data_dir, TOKEN, env=env).start()
    run_id = None
    try:
        with httpx.Client(base_url=first.base_url, headers=first.headers, timeout=30) as client:
            resp = client.post("/v1/runs", json=spec)
            assert resp.status_code == 201, resp.text
            run_id = resp.json()["run_id"]
            assert wait_for_state(client, run_id, frozenset({"running"}), timeout_s=120)["state"] == "running"
        first.kill()  # SIGKILL mid-run: no shutdown hook runs

        status = RunDir(data_dir / "runs" / run_id).read_status()
        assert status is not None and status.state == "running"
        assert psutil.pid_exists(status.pid), "the driver must outlive the API"

        with (
            ApiServer(data_dir, TOKEN, env=env) as second,
            httpx.Client(base_url=second.base_url, headers=second.headers, timeout=30) as client,
        ):
            run = wait_for_state(client, run_id, timeout_s=300)
            assert run["state"] == "succeeded", run
            assert {s["stage"] for s in run["stages"]} == {"documents", "memory"}
            assert next(s for s in run["stages"] if s["stage"] == "documents")["records"] == 4
            listed = client.get("/v1/runs").json()
            assert [r["run_id"] for r in listed["data"]] == [run_id]
            assert listed["data"][0]["state"] == "succeeded"
    finally:
        first.kill()
        if run_id is not None:
            stop_driver(data_dir / "runs" / run_id)
