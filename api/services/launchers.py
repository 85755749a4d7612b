"""Starting a run's driver outside the API process, and asking whether it still lives.

One small class per backend behind one interface (``RunLauncher``):

* ``LocalProcessLauncher`` — a detached ``agentcpt run SPEC --run-id ID`` process in its own
  session (``start_new_session=True``), so killing or restarting the API does not kill it;
  its stdout/stderr go to ``driver.log`` in the run directory.
* ``RayJobLauncher`` — the same command submitted through the Ray Jobs API of the cluster
  the operator names (``AGENTCPT_RAY_ADDRESS``; never a spec value); the driver then runs on
  the cluster's head and joins that cluster (``--ray-address auto``). Assumes the data dir is
  shared between the API and the cluster (one volume in compose).

A driver is identified by what survives an API restart: pid + process start time (so a
reused pid is not mistaken for our driver), or the Ray submission id. Both are stored in
the job store.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psutil

from api.settings import check_ray_address
from synth.records import utc_now

# Environment variables the driver must not inherit: it has no use for the API's token, and
# a spec can name an env var as its LLM API key (api.services.specs refuses AGENTCPT_* too).
_WITHHELD_ENV = ("AGENTCPT_API_TOKEN",)

# psutil's create_time and the recorded one come from the same clock, but are floats
# rounded differently on some platforms; one second is far below any pid-reuse interval.
_START_TIME_TOLERANCE_S = 1.0


@dataclass(frozen=True)
class LaunchRequest:
    """What a launcher needs to start (or restart) the driver of one run."""

    run_id: str
    spec_path: Path
    log_path: Path
    data_dir: Path
    attempt: int


@dataclass(frozen=True)
class DriverHandle:
    """How to find the driver again, even from a restarted API."""

    pid: int | None = None
    started: float | None = None
    job_id: str | None = None


@dataclass(frozen=True)
class DriverProbe:
    """``alive`` is None when the backend could not be asked (keep the last known state)."""

    alive: bool | None
    detail: str = ""
    log_tail: str | None = None


def driver_command(
    spec_path: Path, run_id: str, python: str | None = None, ray_address: str | None = None
) -> list[str]:
    """``agentcpt run SPEC --run-id ID [--ray-address A]`` through the API's interpreter (same venv)."""
    cmd = [python or sys.executable, "-m", "agentcpt.cli", "run", str(spec_path), "--run-id", run_id]
    return cmd + (["--ray-address", ray_address] if ray_address else [])


def driver_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _WITHHELD_ENV}
    env["AGENTCPT_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def read_log_tail(path: Path, max_bytes: int = 4096, max_lines: int = 20) -> str | None:
    """The last lines of a log file (None when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return None
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-max_lines:]) or None


class RunLauncher(ABC):
    backend: ClassVar[str]

    @abstractmethod
    def launch(self, req: LaunchRequest) -> DriverHandle:
        """Start the driver; returns as soon as it is started (never waits for the run)."""

    @abstractmethod
    def probe(self, handle: DriverHandle, log_path: Path) -> DriverProbe:
        """Whether the driver identified by ``handle`` still runs; with its log tail if it ended."""

    def check_reachable(self) -> None:
        """Raise if this backend cannot take a run now (before any run directory is made)."""
        return None  # a local process can always be started


class LocalProcessLauncher(RunLauncher):
    """Drivers as detached local processes."""

    backend: ClassVar[str] = "local"

    def __init__(self, command: Callable[[Path, str], list[str]] | None = None) -> None:
        """``command(spec_path, run_id)`` builds the driver's argv (default: ``driver_command``)."""
        self._command = command or driver_command
        # Children started by this API process, so that finished ones are reaped (no zombies)
        # and their exit codes reported. Drivers from an earlier API process are probed by pid.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def launch(self, req: LaunchRequest) -> DriverHandle:
        cmd = self._command(req.spec_path, req.run_id)
        req.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(req.log_path, "ab") as log:
            log.write(
                f"--- agentcpt api: attempt {req.attempt} at {utc_now().isoformat()}: {shlex.join(cmd)}\n".encode()
            )
            log.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=req.data_dir,
                env=driver_env(req.data_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the API's death and its process group's signals
                close_fds=True,
            )
        self._children[proc.pid] = proc
        try:
            started: float | None = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            started = None  # exited already; the probe reports it
        return DriverHandle(pid=proc.pid, started=started)

    def probe(self, handle: DriverHandle, log_path: Path) -> DriverProbe:
        if handle.pid is None:
            return DriverProbe(
                alive=False, detail="no driver process recorded", log_tail=read_log_tail(log_path)
            )
        child = self._children.get(handle.pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return DriverProbe(alive=True)
            return DriverProbe(alive=False, detail=f"exit code {code}", log_tail=read_log_tail(log_path))
        if pid_is_driver(handle.pid, handle.started):
            return DriverProbe(alive=True)
        return DriverProbe(alive=False, detail="process is gone", log_tail=read_log_tail(log_path))

    def started_pids(self) -> list[int]:
        """Pids of the drivers this launcher started that have not exited yet."""
        return [pid for pid, proc in list(self._children.items()) if proc.poll() is None]

    def reap(self) -> None:
        """Collect exit codes of finished children (called on shutdown and by probes)."""
        for proc in list(self._children.values()):
            proc.poll()


def pid_is_driver(pid: int, started: float | None) -> bool:
    """True if ``pid`` is alive, not a zombie, and (when known) started at ``started``."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            if proc.ppid() == os.getpid():
                os.waitpid(pid, os.WNOHANG)  # our orphan (e.g. the API is PID 1): reap it
            return False
        if started is not None and abs(proc.create_time() - started) > _START_TIME_TOLERANCE_S:
            return False  # the pid was reused by another process
        return True
    except (psutil.NoSuchProcess, psutil.ZombieProcess, ChildProcessError):
        return False
    except psutil.AccessDenied:
        return True  # exists, owned by someone else: cannot be ours, but cannot prove it dead either


class RayJobLauncher(RunLauncher):
    """Drivers submitted through the Ray Jobs API of the cluster at ``address``."""

    backend: ClassVar[str] = "ray"
    agent_wait_s: ClassVar[float] = 60.0

    def __init__(
        self, address: str, client_factory: Callable[[str], Any] | None = None, python: str | None = None
    ):
        # Whatever stored it (settings, an old job-store row), an address reaches Ray's client
        # only if Ray will read it as HTTP: other schemes make it import a module by name.
        self.address = check_ray_address(address)
        self._client_factory = client_factory or _job_client
        self._python = python
        self._client: Any = None

    def check_reachable(self) -> None:
        """One cheap request (connecting alone would trust a cached client of a cluster now down)."""
        try:
            self.client().get_version()
        except Exception:
            self._client = None
            raise

    def client(self) -> Any:
        """The JobSubmissionClient; connecting raises if the cluster is unreachable."""
        if self._client is None:
            self._client = self._client_factory(self.address)
        return self._client

    def launch(self, req: LaunchRequest) -> DriverHandle:
        job_id = f"agentcpt-{req.run_id}-{req.attempt}-{uuid.uuid4().hex[:6]}"
        # The driver runs as a job on the cluster: "auto" joins that cluster (the job's RAY_ADDRESS)
        # instead of starting a private instance on the head node.
        entrypoint = shlex.join(driver_command(req.spec_path, req.run_id, self._python, ray_address="auto"))
        env = {"AGENTCPT_DATA_DIR": str(req.data_dir), "PYTHONUNBUFFERED": "1"}
        deadline = time.monotonic() + self.agent_wait_s
        while True:
            try:
                self.client().submit_job(
                    entrypoint=entrypoint, submission_id=job_id, runtime_env={"env_vars": env}
                )
                return DriverHandle(job_id=job_id)
            except RuntimeError as err:
                # A head that has just (re)started answers 500 "No available agent to submit
                # job" until its node's job agent registers (seconds): wait for it, bounded.
                if "No available agent" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def probe(self, handle: DriverHandle, log_path: Path) -> DriverProbe:
        if handle.job_id is None:
            return DriverProbe(alive=False, detail="no Ray job recorded")
        try:
            client = self.client()
            info = client.get_job_info(handle.job_id)
        except Exception as err:  # any client/connection error means "cannot tell now"
            self._client = None
            return DriverProbe(alive=None, detail=f"Ray cluster not reachable: {err}")
        status = str(getattr(info.status, "value", info.status))
        if status in ("PENDING", "RUNNING"):
            return DriverProbe(alive=True)
        tail: str | None = None
        try:
            logs = client.get_job_logs(handle.job_id)
            tail = "\n".join(logs.splitlines()[-20:]) or None
        except Exception:  # logs are a courtesy; the status already answered
            tail = read_log_tail(log_path)
        detail = f"Ray job {status.lower()}" + (f": {info.message}" if getattr(info, "message", None) else "")
        return DriverProbe(alive=False, detail=detail, log_tail=tail)


class LauncherRegistry:
    """One launcher per backend (and per Ray address), kept for the app's lifetime.

    The local launcher must be a single instance: it holds the child processes it started.
    """

    def __init__(
        self,
        local: LocalProcessLauncher | None = None,
        ray: Callable[[str], RayJobLauncher] = RayJobLauncher,
    ) -> None:
        self._local = local or LocalProcessLauncher()
        self._ray_factory = ray
        self._ray: dict[str, RayJobLauncher] = {}

    def __call__(self, backend: str, ray_address: str | None) -> RunLauncher:
        if backend == "ray":
            if not ray_address:
                raise ValueError("a Ray-backed run needs a cluster address")
            if ray_address not in self._ray:
                self._ray[ray_address] = self._ray_factory(ray_address)
            return self._ray[ray_address]
        return self._local

    def close(self) -> None:
        self._local.reap()


def _job_client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient  # heavy import, only for Ray-backed runs

    return JobSubmissionClient(address)
