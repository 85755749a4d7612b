"""Fencing: when a session of a run starts, no worker of an earlier session may still be writing.

Why: a driver killed with SIGKILL leaves its workers alive for a moment (measured here:
1–3 s on a local instance; on a long-lived cluster until the GCS notices the driver is
gone). A new session that deleted orphan files (``ShardStore.cleanup_orphans``) while such
a zombie was between writing a shard and committing its manifest entry would end with an
entry whose shard was deleted — a lost unit. So before cleaning up, the new session ends
every worker of earlier sessions.

How: each worker process registers itself on start (``workers.jsonl`` in the run
directory: session, host, pid, process start time, Ray actor name). A new session kills
the ones still alive — by pid on this host (only if the process is the same one: its
start time matches), and by actor name through Ray for other hosts — and waits for them
to exit. A worker restarted by Ray registers again, so its new pid is known too.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synth.layout import RunLayout
from synth.shards import atomic_write_bytes

WORKER_NAMESPACE = "agentcpt"


class WorkerRecord(BaseModel):
    """One worker process of one session of a run."""

    model_config = ConfigDict(extra="forbid")
    session: str = Field(description="the driver session that started it")
    host: str
    pid: int
    create_time: float = Field(description="the process's start time (psutil), to tell a reused pid apart")
    actor_name: str | None = Field(None, description="its Ray actor name in the agentcpt namespace")


def register_worker(run_dir: Path, session: str, actor_name: str | None) -> None:
    """Append this process to the run's worker registry (one short line; O_APPEND keeps lines whole)."""
    record = WorkerRecord(
        session=session,
        host=socket.gethostname(),
        pid=os.getpid(),
        create_time=psutil.Process().create_time(),
        actor_name=actor_name,
    )
    fd = os.open(RunLayout(run_dir).workers, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (record.model_dump_json() + "\n").encode())
    finally:
        os.close(fd)


def read_registry(run_dir: Path) -> list[WorkerRecord]:
    path = RunLayout(run_dir).workers
    if not path.exists():
        return []
    records: list[WorkerRecord] = []
    for line in path.read_text().splitlines():
        try:
            records.append(WorkerRecord.model_validate(json.loads(line)))
        except (ValueError, ValidationError):
            continue  # a line torn by a crash names no live process we could trust
    return records


def fence_previous_sessions(run_dir: Path, session: str, timeout_s: float = 30.0) -> int:
    """End every still-running worker of earlier sessions of this run; returns how many were ended.

    Afterwards the registry holds nothing from earlier sessions (they are all gone).
    """
    host = socket.gethostname()
    stale = [r for r in read_registry(run_dir) if r.session != session]
    local: list[psutil.Process] = []
    remote: list[str] = []
    for r in stale:
        if r.host == host:
            proc = _same_process(r)
            if proc is not None:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
                    local.append(proc)
        elif r.actor_name and _kill_actor(r.actor_name):
            remote.append(r.actor_name)
    _, alive = psutil.wait_procs(local, timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while remote and time.monotonic() < deadline:
        remote = [name for name in remote if _actor_exists(name)]
        time.sleep(0.2)
    if alive or remote:
        raise RuntimeError(
            f"workers of an earlier session would not exit: pids {[p.pid for p in alive]}, actors {remote}"
        )
    keep = [r for r in read_registry(run_dir) if r.session == session]
    atomic_write_bytes(RunLayout(run_dir).workers, "".join(r.model_dump_json() + "\n" for r in keep).encode())
    return len(local) + len(remote)


def _same_process(r: WorkerRecord) -> psutil.Process | None:
    """The registered process if it still runs (same pid and same start time), else None."""
    try:
        proc = psutil.Process(r.pid)
        if abs(proc.create_time() - r.create_time) > 0.5 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def _kill_actor(name: str) -> bool:
    """Kill a live worker actor of an earlier session through Ray; True if there was one."""
    import ray

    if not ray.is_initialized():
        return False
    try:
        handle: Any = ray.get_actor(name, namespace=WORKER_NAMESPACE)
    except ValueError:
        return False  # gone already
    with contextlib.suppress(ray.exceptions.RayError):
        ray.kill(handle, no_restart=True)
    return True


def _actor_exists(name: str) -> bool:
    import ray

    try:
        ray.get_actor(name, namespace=WORKER_NAMESPACE)
    except ValueError:
        return False
    return True
