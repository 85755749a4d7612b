"""Helpers to run the control plane as a real server, shared by end-to-end tests and ``bench/api.py``.

``ApiServer`` starts ``agentcpt serve`` in its own process (so a test can kill it like a
crash would), waits until ``/healthz`` answers, and stops it. ``stop_driver`` ends a run's
driver the way an operator would (SIGTERM, then SIGKILL) so a failing test leaves nothing
running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil

from synth.runstate import TERMINAL_STATES, RunDir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiServer:
    """``agentcpt serve`` on 127.0.0.1 in a child process, with a data dir and a token."""

    def __init__(
        self,
        data_dir: Path,
        token: str,
        port: int | None = None,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.extra_env = env or {}
        self.token = token
        self.port = port or free_port()
        self.log_path = log_path or self.data_dir / f"api-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, timeout_s: float = 60) -> ApiServer:
        env = {
            **os.environ,
            **self.extra_env,
            "AGENTCPT_DATA_DIR": str(self.data_dir),
            "AGENTCPT_API_TOKEN": self.token,
        }
        cmd = [sys.executable, "-m", "agentcpt.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=self.data_dir, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agentcpt serve exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(
            f"agentcpt serve did not answer /healthz within {timeout_s} s; see {self.log_path}"
        )

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would end it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def wait_for_state(
    client: httpx.Client, run_id: str, states: frozenset[str] = TERMINAL_STATES, timeout_s: float = 300
) -> dict[str, Any]:
    """Poll ``GET /v1/runs/{id}`` until the run's state is in ``states``; returns the run."""
    deadline = time.monotonic() + timeout_s
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = client.get(f"/v1/runs/{run_id}")
        resp.raise_for_status()
        run = resp.json()
        if run["state"] in states:
            return run
        time.sleep(0.25)
    raise TimeoutError(f"run {run_id} still {run.get('state')} after {timeout_s} s")


def stop_driver(run_dir: Path, grace_s: float = 20) -> None:
    """End a run's driver if it still runs: SIGTERM (it marks the run cancelled), then SIGKILL."""
    status = RunDir(run_dir).read_status()
    if status is None or status.pid is None or status.state in TERMINAL_STATES:
        return
    try:
        proc = psutil.Process(status.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.NoSuchProcess:
        pass
