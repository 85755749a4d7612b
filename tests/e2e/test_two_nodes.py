"""Two Ray nodes on this machine, started with the real ``ray start`` CLI, run one spec.

The cluster is a head (``ray start --head``) and a second node (``ray start --address``),
each with one CPU, in their own temp dir (so ``ray.init()`` elsewhere on this machine never
finds them) and with ``RAY_AUTH_MODE=token`` for every command (NOTES.md: without it the
second node is refused). ``agentcpt run --ray-address`` then runs the real planning stage
against the fake OpenAI server: the manifest's ``worker`` column must name both nodes, and
the one cluster-wide limiter must keep the server's peak of requests in flight at or under
``llm.max_concurrency``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from synth.runstate import RunDir
from synth.shards import ShardStore
from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig
from testing.toy_stages import planning_responder, seed_questions

assert planning_responder  # the fake server imports it by name

RAY = str(Path(sys.executable).with_name("ray"))
QUESTIONS, UNIT_SIZE, CEILING = 160, 10, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """End a `ray start --block` and every process it started (they share its process group)."""
    for sig, wait_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def ray_two_nodes() -> Iterator[tuple[str, dict[str, str]]]:
    """(address, env) of a two-node cluster started with `ray start`; torn down after the test."""
    # A short temp dir: Ray's unix socket paths must stay under ~100 characters.
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus=1", "--object-store-memory=134217728", "--block"]
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str]) -> None:
        procs.append(
            subprocess.Popen(
                [RAY, "start", *args, *common],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, so teardown reaches raylet & co.
            )
        )

    try:
        start(["--head", f"--port={free_port()}", "--include-dashboard=false"])
        address_file = Path(tmp) / "ray" / "ray_current_cluster"
        deadline = time.monotonic() + 120
        while not (address_file.exists() and address_file.read_text().strip()):
            assert procs[0].poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the head node did not come up"
            time.sleep(0.2)
        address = address_file.read_text().strip()
        start([f"--address={address}"])
        yield address, env
    finally:
        for proc in reversed(procs):
            stop_group(proc)
        subprocess.run(["rm", "-rf", tmp], check=False)


@pytest.mark.slow
def test_two_ray_nodes_run_a_spec_and_share_one_llm_limiter(
    tmp_path: Path, ray_two_nodes: tuple[str, dict[str, str]]
) -> None:
    address, env = ray_two_nodes
    config = FakeServerConfig(latency_s=0.05, responder="testing.toy_stages:planning_responder")
    with FakeOpenAIServer(config) as server:
        spec = {
            "name": "two-nodes",
            "llm": {"base_url": server.base_url, "model": "fake-model", "max_concurrency": CEILING, "temperature": 0.0},
            "stages": {"planning": {}},
            "execution": {"unit_size": UNIT_SIZE},
            "output_dir": "runs",
        }
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
        run_dir = tmp_path / "runs" / "two-nodes"
        seed_questions(run_dir, "two-nodes", QUESTIONS, UNIT_SIZE)
        # The driver waits for the second node before it builds its worker pool.
        wait_for_nodes = (
            "import ray, sys, time; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "t = time.monotonic() + 120\n"
            "while sum(n['Alive'] for n in ray.nodes()) < 2 and time.monotonic() < t: time.sleep(0.2)\n"
            "sys.exit(0 if sum(n['Alive'] for n in ray.nodes()) >= 2 else 1)"
        )
        assert (
            subprocess.run([sys.executable, "-c", wait_for_nodes, address], env=env, timeout=180).returncode
            == 0
        )
        cmd = [sys.executable, "-c", "import sys; from agentcpt.cli import main; sys.exit(main())"]
        run = subprocess.run(
            [*cmd, "run", "spec.yaml", "--run-id", "two-nodes", "--ray-address", address],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        stats = server.stats()

    assert RunDir(run_dir).read_status().state == "succeeded"  # type: ignore[union-attr]
    manifest = pq.read_table(run_dir / "manifest.parquet").to_pylist()
    planning_workers = {row["worker"] for row in manifest if row["stage"] == "planning"}
    assert len(planning_workers) == 2, planning_workers
    store = ShardStore(run_dir)
    records = store.read_table("planning").column("id").to_pylist()
    failed = store.read_table("planning", kind="failed").num_rows
    assert len(records) == len(set(records)) and len(records) + failed == QUESTIONS
    assert stats.requests >= QUESTIONS
    assert stats.peak_in_flight <= CEILING
