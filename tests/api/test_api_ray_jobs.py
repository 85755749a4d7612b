"""With ``AGENTCPT_RAY_ADDRESS`` set, a submitted run goes through the Ray Jobs API and runs there.

A one-node cluster (``ray start --head`` with its dashboard, which serves the Jobs API) and
the API server run in their own processes with ``RAY_AUTH_MODE=token``: Ray 2.60 clusters
use token auth, and their job agent never registers without it. The driver (``agentcpt
run … --ray-address auto``) runs as a Ray job, joins that cluster and writes the run
directory, which the API reads as for a local run. The spec names no cluster: the operator's
setting decides.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from testing.api_server import ApiServer, free_port, wait_for_state

PAGES = Path(__file__).resolve().parents[2] / "configs" / "quickstart" / "pages"
TOKEN = "ray-jobs-test-token-0123456789"


def _stop_ray_head(temp_dir: str) -> None:
    """Stop only this test's cluster: processes naming its temp dir, and their children."""
    roots = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    procs = {p.pid: p for p in roots}
    for p in roots:
        try:
            procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    for p in procs.values():
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _wait_for_job_agent(
    ray_bin: str, dashboard_url: str, env: dict[str, str], timeout_s: float = 240
) -> None:
    """A fresh head refuses jobs ("No available agent") until its job agent registers; on a
    loaded machine that took over a minute. The cluster being ready is this test's premise."""
    deadline = time.monotonic() + timeout_s
    while True:
        probe = subprocess.run(
            [ray_bin, "job", "submit", "--address", dashboard_url, "--no-wait", "--", "true"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Ray job agent never became available: {probe.stderr[-500:]}")
        time.sleep(2)


@pytest.mark.slow
def test_with_agentcpt_ray_address_a_run_runs_as_a_ray_job_on_that_cluster(tmp_path, fake_llm):
    data_dir = tmp_path / "data"
    (data_dir / "inputs").mkdir(parents=True)
    for page in sorted(PAGES.glob("*.html"))[:2]:
        shutil.copy(page, data_dir / "inputs")
    # Short: Ray puts unix sockets under it, and socket paths are limited to ~107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="acpt-ray-", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    gcs_port, dashboard_port = free_port(), free_port()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    try:
        # Every port explicit and free: the defaults (52365 for the job agent, 10001 for the
        # client server) collide with any other Ray head on this machine, and a job agent that
        # cannot bind leaves the Jobs API answering "No available agent" forever.
        ports = {
            "--port": gcs_port,
            "--dashboard-port": dashboard_port,
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--ray-client-server-port": free_port(),
            "--metrics-export-port": free_port(),
            "--runtime-env-agent-port": free_port(),
        }
        subprocess.run(
            [ray_bin, "start", "--head", *(f"{k}={v}" for k, v in ports.items()), "--include-dashboard=true"]
            + ["--num-cpus=1", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
            env=env,
            check=True,
            capture_output=True,
            timeout=180,
        )
        _wait_for_job_agent(ray_bin, f"http://127.0.0.1:{dashboard_port}", env)
        spec = {
            "name": "on-ray",
            "inputs": {"web": ["inputs/*.html"]},
            "llm": {"base_url": fake_llm.base_url, "model": "fake-model"},
            "stages": {"documents": {"min_chars": 100}},
        }
        server_env = {
            "RAY_AUTH_MODE": "token",
            "AGENTCPT_RAY_ADDRESS": f"http://127.0.0.1:{dashboard_port}",
            "AGENTCPT_LLM_ENDPOINTS": json.dumps([{"base_url": fake_llm.base_url}]),
        }
        with (
            ApiServer(data_dir, TOKEN, env=server_env) as server,
            httpx.Client(base_url=server.base_url, headers=server.headers, timeout=120) as client,
        ):
            resp = client.post("/v1/runs", json=spec)
            assert resp.status_code == 201, resp.text
            assert resp.json()["backend"] == "ray"
            run_id = resp.json()["run_id"]
            run = wait_for_state(client, run_id, timeout_s=300)
            assert run["state"] == "succeeded", run
            assert run["stages"][0]["stage"] == "documents" and run["stages"][0]["records"] == 2
            samples = client.get(f"/v1/runs/{run_id}/samples?stage=documents").json()
            assert samples["count"] == 2 and samples["data"][0]["text"]
    finally:
        _stop_ray_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
