"""bench/pipeline.py — the planning stage end to end on Ray, against the LLM request limit.

Setup: 5,000 questions (with one memory statement each) are committed into a run as if the
questions and memory stages had run; then a spec enabling only ``planning`` resumes that run
(``run_session``, the code behind ``agentcpt run --run-id``). Every question costs one
planning call and, when the plan passes the tool check, one judge call, against a fake
OpenAI-compatible server (a separate process) answering after a fixed 200 ms, with
``llm.max_concurrency: 64``. The endpoint therefore caps the pipeline at

    limit = 64 / 0.2 s = 320 requests/s  →  320 / (requests per question) questions/s

and the ratio printed is

    ratio = (questions / wall s) / (320 / (server requests / questions))

i.e. achieved end-to-end questions/s divided by the questions/s the endpoint limit allows
at the measured calls per question (the server counts the requests). Wall time runs from
the session's start (worker actors starting, the driver, the cluster limiter, LLM reply
validation, Parquet shard writes, manifest commits, the request cache) to its end; the Ray
cluster itself is started before the clock starts. Goal: ≥ 0.9, with the pipeline's own CPU
(every process but the fake endpoint's) ≤ 1.5 ms per request (issue 19).

Each session also pays a fixed cost that does not grow with the run: worker actors start
and import the stages (~1 CPU-s each), the first unit waits for its input, the last ones
drain. At 10k requests that is a quarter of the CPU and a tenth of the wall; at paper scale
(10^7-10^8 requests) it is nothing. So the one-node phase runs two sessions, ``--questions``
and ``--small-questions``, and the goal is judged on the difference, the steady state:

    CPU per request = (CPU_large - CPU_small) / (requests_large - requests_small)
    ratio           = ((q_large - q_small) / (wall_large - wall_small)) / limit_questions_per_s

with the fixed cost (the intercept) and each session's whole-run figures printed beside it.

A second phase runs the same on a two-node Ray cluster on this machine (one limiter actor
shared by both nodes' workers) and checks the fake server's peak of requests in flight
never exceeded the ceiling of 64.

Run: ``.venv/bin/python bench/pipeline.py`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import os
import sys

# `python bench/pipeline.py` puts bench/ first on sys.path, where bench/tokenize.py would
# shadow the standard library's tokenize (imported by logging via linecache).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import psutil  # noqa: E402

from pipelines.progress import LogDisplay  # noqa: E402
from pipelines.runner import run_session  # noqa: E402
from synth.shards import ShardStore  # noqa: E402
from synth.spec import parse_spec  # noqa: E402
from testing.fake_llm_server import FakeOpenAIServer, FakeServerConfig  # noqa: E402
from testing.toy_stages import planning_responder, seed_questions  # noqa: E402

assert planning_responder  # the server imports it by name: testing.toy_stages:planning_responder


class CpuMeter:
    """CPU seconds used by this process and all its descendants (Ray, workers, the fake server).

    Sampled every 0.2 s, keeping each process's last reading, so processes that exit
    during the run (worker actors end with the session) count up to their last sample.
    Processes in ``exclude`` (and their descendants) are counted apart, as ``excluded_cpu_s``:
    the fake endpoint is not the pipeline. Neither is this meter: scanning /proc five times
    a second costs ~2 CPU-s per minute in the driver process, so its own thread's CPU time
    is measured and taken off the driver's (``meter_cpu_s``).
    """

    def __init__(self, exclude: set[int] | None = None) -> None:
        self._exclude = exclude or set()
        self._excluded: set[tuple[int, float]] = set()
        self._seen: dict[tuple[int, float], float] = {}
        self._kinds: dict[tuple[int, float], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.meter_cpu_s = 0.0

    def _sample(self) -> None:
        me = psutil.Process()
        excluded = set(self._exclude)
        for pid in self._exclude:
            with contextlib.suppress(psutil.Error):
                excluded.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        for proc in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                key = (proc.pid, proc.create_time())
                self._seen[key] = times.user + times.system
                # Re-read each time: a pooled worker process becomes an actor after it starts.
                kind = _process_kind(proc, me.pid)
                if kind != "other" or key not in self._kinds:  # an exiting process reads as "other"
                    self._kinds[key] = kind
                if proc.pid in excluded:
                    self._excluded.add(key)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            t = time.thread_time()
            self._sample()
            self.meter_cpu_s += time.thread_time() - t

    def __enter__(self) -> CpuMeter:
        self._sample()
        self._start = dict(self._seen)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def cpu_s(self) -> float:
        """CPU seconds of every process but the excluded ones (and this meter's own thread)."""
        total = sum(v - self._start.get(k, 0.0) for k, v in self._seen.items() if k not in self._excluded)
        return total - self.meter_cpu_s

    def by_kind(self) -> dict[str, float]:
        """CPU seconds per kind of process (driver, worker actors, limiter, Ray daemons), endpoint excluded."""
        out: dict[str, float] = {"driver": -self.meter_cpu_s}
        for k, v in self._seen.items():
            if k not in self._excluded:
                kind = self._kinds.get(k, "other")
                out[kind] = out.get(kind, 0.0) + v - self._start.get(k, 0.0)
        return {kind: round(cpu, 2) for kind, cpu in sorted(out.items())}

    @property
    def excluded_cpu_s(self) -> float:
        return sum(v - self._start.get(k, 0.0) for k, v in self._seen.items() if k in self._excluded)


def _process_kind(proc: psutil.Process, driver_pid: int) -> str:
    if proc.pid == driver_pid:
        return "driver"
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "other"
    if cmd.startswith("ray::"):
        name = cmd.split()[0][5:].split(".")[0]
        return {"UnitWorker": "worker actors", "ClusterLimiter": "limiter actor"}.get(name, f"ray::{name}")
    for daemon in ("raylet", "gcs_server", "log_monitor", "dashboard", "monitor"):
        if daemon in cmd:
            return f"ray {daemon}"
    return "other"


def measure(questions: int, latency_s: float, concurrency: int, unit_size: int, label: str) -> dict[str, Any]:
    """One planning session over ``questions`` seeded questions; returns the figures."""
    config = FakeServerConfig(latency_s=latency_s, responder="testing.toy_stages:planning_responder")
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp, FakeOpenAIServer(config) as server:
        base = Path(tmp)
        run_id = f"bench-{label}"
        run_dir = base / "runs" / run_id
        seed_questions(run_dir, run_id, questions, unit_size)
        spec = parse_spec(
            {
                "name": "bench",
                "llm": {
                    "base_url": server.base_url,
                    "model": "fake-model",
                    "max_concurrency": concurrency,
                    "temperature": 0.0,
                },
                "stages": {"planning": {}},
                "execution": {"unit_size": unit_size},
                "output_dir": "runs",
            }
        )
        server.reset()
        log = io.StringIO()
        with CpuMeter(exclude={server._proc.pid}) as cpu:
            t0 = time.perf_counter()
            result = run_session(
                spec, run_id=run_id, base_dir=base, display=LogDisplay(log), out=log, print_summary=False
            )
            wall_s = time.perf_counter() - t0
        if result.outcome.state != "succeeded":
            sys.exit(f"{label}: run {result.outcome.state}: {result.outcome.error}\n{log.getvalue()[-3000:]}")
        stats = server.stats()
        store = ShardStore(run_dir)
        records = store.read_table("planning").num_rows
        failed = store.read_table("planning", kind="failed").num_rows
        workers = {r.worker for r in store.manifest_rows("planning")}
    limit_rps = concurrency / latency_s
    calls_per_question = stats.requests / questions
    question_limit = limit_rps / calls_per_question
    return {
        "phase": label,
        "questions": questions,
        "planning_records": records,
        "planning_failed": failed,
        "server_requests": stats.requests,
        "calls_per_question": round(calls_per_question, 3),
        "wall_s": round(wall_s, 2),
        "questions_per_s": round(questions / wall_s, 1),
        "limit_requests_per_s": limit_rps,
        "limit_questions_per_s": round(question_limit, 1),
        "ratio": round((questions / wall_s) / question_limit, 3),
        # The pipeline's own CPU (driver, Ray, workers, limiter), the fake endpoint excluded.
        "pipeline_cpu_s": round(cpu.cpu_s, 3),
        "pipeline_cpu_ms_per_request": round(1000 * cpu.cpu_s / stats.requests, 3),
        "endpoint_cpu_ms_per_request": round(1000 * cpu.excluded_cpu_s / stats.requests, 3),
        "pipeline_cpu_s_by_process": cpu.by_kind(),
        "meter_cpu_s_excluded": round(cpu.meter_cpu_s, 2),
        "server_peak_in_flight": stats.peak_in_flight,
        "ceiling": concurrency,
        "nodes_in_manifest": len(workers),
    }


def steady_state(small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    """What the extra questions of the larger session cost: the per-request path without the
    session's fixed cost (the intercept of CPU and wall against requests)."""
    extra_requests = large["server_requests"] - small["server_requests"]
    extra_questions = large["questions"] - small["questions"]
    if extra_requests <= 0 or extra_questions <= 0:
        raise SystemExit("--questions must exceed --small-questions")
    extra_cpu_s = large["pipeline_cpu_s"] - small["pipeline_cpu_s"]
    extra_wall_s = large["wall_s"] - small["wall_s"]
    per_request_s = extra_cpu_s / extra_requests
    wall_per_question_s = extra_wall_s / extra_questions
    return {
        "phase": "steady",
        "questions": extra_questions,
        "requests": extra_requests,
        "wall_s": round(extra_wall_s, 2),
        "ratio": round((extra_questions / extra_wall_s) / large["limit_questions_per_s"], 3),
        "pipeline_cpu_ms_per_request": round(1000 * per_request_s, 3),
        "session_cpu_s": round(large["pipeline_cpu_s"] - per_request_s * large["server_requests"], 2),
        "session_wall_s": round(large["wall_s"] - wall_per_question_s * large["questions"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=5000)
    parser.add_argument(
        "--small-questions", type=int, default=1000, help="the second one-node session, for the steady state"
    )
    parser.add_argument("--two-node-questions", type=int, default=2000)
    parser.add_argument("--latency-s", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--unit-size", type=int, default=256)
    args = parser.parse_args(argv)

    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    results = []
    load = os.getloadavg()
    # Client, server, Ray and the driver share this machine's cores: other work skews the ratio.
    print(f"machine load average (1/5/15 min) at the start: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")

    # -- phase 1: local Ray, sized to the machine ---------------------------------------
    t = time.perf_counter()
    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    print(
        f"ray.init (local, {int(ray.cluster_resources()['CPU'])} CPUs): {time.perf_counter() - t:.1f} s",
        flush=True,
    )
    try:
        small = measure(args.small_questions, args.latency_s, args.concurrency, args.unit_size, "local-small")
        print(json.dumps(small), flush=True)
        results.append(measure(args.questions, args.latency_s, args.concurrency, args.unit_size, "local"))
    finally:
        ray.shutdown()
    print(json.dumps(results[-1]), flush=True)
    steady = steady_state(small, results[-1])
    print(json.dumps(steady), flush=True)

    # -- phase 2: two Ray nodes on this machine, one limiter ----------------------------
    t = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        print(f"two-node cluster: {time.perf_counter() - t:.1f} s", flush=True)
        results.append(
            measure(args.two_node_questions, args.latency_s, args.concurrency, args.unit_size, "two-nodes")
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(results[-1]), flush=True)

    print()
    for r in [small, *results]:
        print(
            f"{r['phase']:>11}: {r['questions']} questions in {r['wall_s']} s = {r['questions_per_s']} q/s; "
            f"{r['calls_per_question']} requests/question -> limit {r['limit_questions_per_s']} q/s "
            f"(= {r['limit_requests_per_s']:.0f} req/s / {r['calls_per_question']}); "
            f"ratio {r['ratio']:.3f}; server peak in flight {r['server_peak_in_flight']}/{r['ceiling']}; "
            f"nodes {r['nodes_in_manifest']}"
        )
        # What the pipeline (driver, Ray, workers, limiter; not the fake endpoint) spends per
        # request bounds what 2 uncontended cores could sustain.
        cores_needed = r["pipeline_cpu_ms_per_request"] * r["limit_requests_per_s"] / 1000
        print(
            f"{'':>11}pipeline CPU {r['pipeline_cpu_ms_per_request']} ms/request (goal <= 1.5; the fake "
            f"endpoint's {r['endpoint_cpu_ms_per_request']} ms excluded) -> the limit needs "
            f"{cores_needed:.2f} of {os.cpu_count()} cores"
        )
    load = os.getloadavg()
    print(
        f"machine load average (1/5/15 min) at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"   steady: {steady['questions']} more questions in {steady['wall_s']} s more "
        f"({args.questions} vs {args.small_questions}); ratio {steady['ratio']:.3f}; pipeline CPU "
        f"{steady['pipeline_cpu_ms_per_request']} ms/request (goal <= 1.5)\n"
        f"{'':>11}fixed cost of a session: {steady['session_cpu_s']} CPU-s, {steady['session_wall_s']} s wall "
        "(worker start and imports, first unit, drain)"
    )
    ok = (
        steady["ratio"] >= 0.9
        and steady["pipeline_cpu_ms_per_request"] <= 1.5
        and all(r["server_peak_in_flight"] <= r["ceiling"] for r in [small, *results])
    )
    print(
        "goal (one node, steady state: ratio >= 0.9 and pipeline CPU <= 1.5 ms/request; peak in flight "
        f"<= ceiling everywhere): {'met' if ok else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
