"""Launchers: the Ray Jobs backend (with a stand-in client) and driver identity by pid + start time."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
from api_helpers import AUTH, minimal_spec, settings_for
from fastapi.testclient import TestClient

from api.main import create_app
from api.services.launchers import (
    DriverHandle,
    LauncherRegistry,
    LaunchRequest,
    RayJobLauncher,
    pid_is_driver,
    read_log_tail,
)


@dataclass
class JobInfo:
    status: str
    message: str | None = None


class FakeJobClient:
    """The part of ray.job_submission.JobSubmissionClient the launcher uses."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.submitted: list[dict] = []
        self.status = "PENDING"
        self.reachable = True

    def submit_job(self, *, entrypoint: str, submission_id: str, runtime_env: dict) -> str:
        self.submitted.append(
            {"entrypoint": entrypoint, "submission_id": submission_id, "runtime_env": runtime_env}
        )
        return submission_id

    def get_job_info(self, job_id: str) -> JobInfo:
        if not self.reachable:
            raise ConnectionError("cluster down")
        return JobInfo(
            self.status, "Job entrypoint command failed with exit code 1" if self.status == "FAILED" else None
        )

    def get_job_logs(self, job_id: str) -> str:
        return "line 1\nTraceback: boom\n"

    def get_version(self) -> str:
        if not self.reachable:
            raise ConnectionError("cluster down")
        return "2.60.0"


def test_ray_launcher_submits_the_driver_command_and_maps_job_states(tmp_path):
    clients: list[FakeJobClient] = []

    def factory(address: str) -> FakeJobClient:
        clients.append(FakeJobClient(address))
        return clients[-1]

    launcher = RayJobLauncher("10.0.0.5:6379", client_factory=factory)
    req = LaunchRequest(
        run_id="r1",
        spec_path=tmp_path / "runs" / "r1" / "spec.yaml",
        log_path=tmp_path / "log",
        data_dir=tmp_path,
        attempt=2,
    )
    handle = launcher.launch(req)
    (job,) = clients[0].submitted
    assert job["submission_id"] == handle.job_id and handle.job_id.startswith("agentcpt-r1-2-")
    assert f"-m agentcpt.cli run {req.spec_path} --run-id r1" in job["entrypoint"]
    assert job["runtime_env"]["env_vars"]["AGENTCPT_DATA_DIR"] == str(tmp_path)
    assert "AGENTCPT_API_TOKEN" not in job["runtime_env"]["env_vars"]

    assert launcher.probe(handle, req.log_path).alive is True
    clients[0].status = "RUNNING"
    assert launcher.probe(handle, req.log_path).alive is True
    clients[0].status = "FAILED"
    probe = launcher.probe(handle, req.log_path)
    assert probe.alive is False and "Ray job failed: Job entrypoint command failed" in probe.detail
    assert "Traceback: boom" in probe.log_tail
    clients[0].reachable = False
    assert launcher.probe(handle, req.log_path).alive is None  # cannot tell: keep the last state


def test_runs_go_to_the_cluster_of_agentcpt_ray_address_through_the_jobs_api(data_dir):
    clients: list[FakeJobClient] = []

    def factory(address: str) -> RayJobLauncher:
        def client(addr: str) -> FakeJobClient:
            clients.append(FakeJobClient(addr))
            return clients[-1]

        return RayJobLauncher(address, client_factory=client)

    settings = settings_for(data_dir, ray_address="http://10.0.0.5:8265")
    app = create_app(settings, launchers=LauncherRegistry(ray=factory))
    with TestClient(app) as client:
        resp = client.post("/v1/runs", json=minimal_spec(), headers=AUTH)
        assert resp.status_code == 201, resp.text
        run = resp.json()
        assert run["backend"] == "ray" and run["state"] == "queued"
        assert clients[0].address == "http://10.0.0.5:8265" and len(clients[0].submitted) == 1
        # The driver joins the cluster it runs on, whatever the (stored) spec says.
        assert clients[0].submitted[0]["entrypoint"].endswith("--ray-address auto")
        # The job ended without the driver writing a final state: failed, with the job's logs.
        clients[0].status = "FAILED"
        run = client.get(f"/v1/runs/{run['run_id']}", headers=AUTH).json()
        assert run["state"] == "failed" and "Traceback: boom" in run["error"]


def test_an_unreachable_operator_cluster_is_503_and_creates_nothing(data_dir):
    def factory(address: str) -> RayJobLauncher:
        def client(addr: str) -> FakeJobClient:
            raise ConnectionError(f"cannot connect to {addr}")

        return RayJobLauncher(address, client_factory=client)

    app = create_app(settings_for(data_dir, ray_address="nowhere:1"), launchers=LauncherRegistry(ray=factory))
    with TestClient(app) as client:
        resp = client.post("/v1/runs", json=minimal_spec(), headers=AUTH)
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "backend_unavailable"
        assert client.get("/v1/runs", headers=AUTH).json()["count"] == 0
        assert not (data_dir / "runs").exists() or not any((data_dir / "runs").iterdir())


def test_a_reused_pid_is_not_mistaken_for_the_driver():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = psutil.Process(proc.pid).create_time()
        assert pid_is_driver(proc.pid, started)
        assert not pid_is_driver(proc.pid, started - 3600)  # same pid, another process's start time
    finally:
        proc.kill()
        proc.wait()
    assert not pid_is_driver(proc.pid, started)


def test_read_log_tail_keeps_the_last_lines(tmp_path):
    log = tmp_path / "driver.log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    tail = read_log_tail(log, max_lines=3)
    assert tail == "line 997\nline 998\nline 999"
    assert read_log_tail(tmp_path / "missing.log") is None


def test_the_probe_of_a_handle_without_a_process_says_dead(tmp_path):
    from api.services.launchers import LocalProcessLauncher

    probe = LocalProcessLauncher().probe(DriverHandle(), Path(tmp_path / "none.log"))
    assert probe.alive is False


def test_resuming_a_ray_run_whose_cluster_is_down_is_503_and_changes_nothing(data_dir):
    clients: list[FakeJobClient] = []

    def factory(address: str) -> RayJobLauncher:
        def client(addr: str) -> FakeJobClient:
            clients.append(FakeJobClient(addr))
            return clients[-1]

        return RayJobLauncher(address, client_factory=client)

    app = create_app(settings_for(data_dir, ray_address="10.0.0.5:8265"), launchers=LauncherRegistry(ray=factory))
    with TestClient(app) as client:
        run_id = client.post("/v1/runs", json=minimal_spec(), headers=AUTH).json()["run_id"]
        clients[0].status = "FAILED"
        assert client.get(f"/v1/runs/{run_id}", headers=AUTH).json()["state"] == "failed"
        clients[0].reachable = False
        resp = client.post(f"/v1/runs/{run_id}/resume", headers=AUTH)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "backend_unavailable"
        run = client.get(f"/v1/runs/{run_id}", headers=AUTH).json()
        assert run["state"] == "failed" and run["attempts"] == 1
