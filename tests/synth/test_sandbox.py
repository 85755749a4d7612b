"""The python tool's sandbox: limits stop runaway code with a clear message, normal analysis
code works, the layers below seccomp hold on their own, and a host without isolation gets a
disabled tool (attacks are in test_sandbox_attacks.py)."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path

import pytest

from synth.records import ToolAction
from synth.tools.environment import ToolEnvironment
from synth.tools.sandbox import (
    Isolation,
    SandboxLimits,
    SandboxResult,
    format_python_observation,
    host_isolation,
    python_tool_notice,
    run_python,
)
from synth.tools.sandbox_backends import BwrapBackend, ChildConfig, Detection, detect_backend, new_root_dir
from synth.tools.sandbox_cgroup import host_cgroups
from synth.tools.search import SearchIndex

FAST = SandboxLimits(cpu_s=1, wall_s=3.0, memory_mb=512, max_output_chars=2000)


def run(
    code: str, limits: SandboxLimits = FAST, isolation: Isolation | None = None
) -> tuple[SandboxResult, str]:
    result = asyncio.run(run_python(code, limits, isolation))
    return result, format_python_observation(result, limits)


def no_isolation(tmp_path: Path) -> Isolation:
    """What a host without bubblewrap and unshare looks like: detection on an empty PATH."""
    return Isolation(detect_backend(search_path=str(tmp_path)), host_cgroups())


def leftover_processes(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# ---------------------------------------------------------------------------
# This host
# ---------------------------------------------------------------------------


def test_this_host_isolates_with_bubblewrap() -> None:
    # CI installs bubblewrap (.ci/run); as root it can also make a cgroup per call.
    iso = host_isolation()
    assert isinstance(iso.detection.backend, BwrapBackend)
    result, _ = run("print('ok')")
    assert result.isolation == "bwrap"
    assert result.tree_limits == (iso.cgroups.name if iso.cgroups else "summed")
    assert python_tool_notice(allow_unisolated=False) is None


# ---------------------------------------------------------------------------
# Normal analysis code
# ---------------------------------------------------------------------------


def test_prints_come_back_as_stdout() -> None:
    result, obs = run("print(sum(range(10)))")
    assert result.exit_code == 0 and result.stopped is None
    assert obs == "stdout:\n45"


def test_normal_analysis_code_works() -> None:
    code = """
import json, re, statistics, math, threading, collections, datetime
data = json.loads('{"years": [1987, 1990, 2001], "name": "Bridge No. 7"}')
print(statistics.mean(data["years"]), statistics.median(data["years"]), round(math.sqrt(2), 3))
print(re.findall(r"\\d+", data["name"]), collections.Counter("abca").most_common(1))
with open("notes.txt", "w") as f:
    f.write("scratch works")
with open("/tmp/sub.json", "w") as f:
    json.dump(data, f)
print(open("notes.txt").read(), json.load(open("/tmp/sub.json"))["years"][-1])
out = []
t = threading.Thread(target=lambda: out.append(6 * 7)); t.start(); t.join()
print(out[0], datetime.date(2020, 1, 31) + datetime.timedelta(days=1))
"""
    result, obs = run(code)
    assert result.stopped is None and result.exit_code == 0, obs
    assert result.stdout.splitlines() == [
        "1992.6666666666667 1990 1.414",
        "['7'] [('a', 2)]",
        "scratch works 2001",
        "42 2020-02-01",
    ]


def test_installed_packages_are_importable_read_only() -> None:
    result, _ = run("import numpy\nprint(numpy.arange(5).sum())")
    assert result.stdout.strip() == "10"


def test_scratch_is_fresh_for_every_call() -> None:
    from synth.tools.sandbox_backends import interpreter_paths

    # A checkout under /tmp shows its read-only interpreter's mount point in scratch.
    mounts = sorted({p.split("/")[2] for p in interpreter_paths() if p.startswith("/tmp/")})
    first, _ = run(
        "open('/tmp/left.txt', 'w').write('x')\nimport os\nprint(os.getcwd(), sorted(os.listdir('.')))"
    )
    assert first.stdout.strip() == f"/tmp {sorted(['left.txt', 'main.py', *mounts])}"
    second, _ = run("import os\nprint(sorted(os.listdir('/tmp')))")
    assert second.stdout.strip() == str(sorted(["main.py", *mounts]))


def test_an_uncaught_error_shows_its_traceback_without_the_bootstrap() -> None:
    result, obs = run("x = 1\n1 / x0")
    assert result.exit_code == 1
    assert "NameError" in obs and 'File "main.py", line 2' in obs
    assert "exec(compile" not in obs


def test_code_that_prints_nothing_says_so() -> None:
    _, obs = run("x = 2 + 2")
    assert "printed nothing" in obs


# ---------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------


def test_infinite_loop_is_stopped_by_the_cpu_limit() -> None:
    # A generous wall clock: on a loaded machine the loop may get well under one CPU second per second.
    result, obs = run("while True:\n    pass", FAST.model_copy(update={"wall_s": 60.0}))
    assert result.stopped == "cpu_time"
    assert obs.startswith("[python] Stopped: the code used more than 1 s of CPU time")


def test_sleeping_code_is_stopped_by_the_wall_clock_limit() -> None:
    limits = FAST.model_copy(update={"wall_s": 1.0})
    started = time.monotonic()
    result, obs = run("import time\nprint('start', flush=True)\ntime.sleep(60)", limits)
    assert time.monotonic() - started < limits.wall_s + 1
    assert result.stopped == "wall_clock"
    assert "ran longer than the 1 s time limit" in obs
    assert "start" in obs  # output printed before the kill is kept


def test_ten_gigabyte_allocation_is_stopped_by_the_memory_limit() -> None:
    result, obs = run("x = bytearray(10 * 1024**3)\nprint('allocated')")
    assert result.stopped == "memory"
    assert obs.startswith("[python] Stopped: the code tried to use more than 512 MB of memory")
    assert "allocated" not in obs


def test_output_flood_is_truncated() -> None:
    result, obs = run("for i in range(200000):\n    print('line', i)")
    assert result.stdout_truncated
    assert len(result.stdout) <= FAST.max_output_chars
    assert obs.startswith("stdout (truncated):")


def test_socket_connect_is_refused_with_a_readable_message() -> None:
    code = "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('/run/x.sock')\nprint('connected')"
    result, obs = run(code)
    assert result.stopped == "denied"
    assert obs.startswith("[python] Blocked: network access is disabled in this sandbox (socket.connect)")


def test_dns_lookup_is_refused() -> None:
    result, obs = run("import socket\nprint(socket.getaddrinfo('example.com', 80))")
    assert result.stopped == "denied" and "socket.getaddrinfo" in obs


# ---------------------------------------------------------------------------
# The layers under seccomp, with process creation allowed
# ---------------------------------------------------------------------------

SPAWNING = FAST.model_copy(
    update={"allow_subprocesses": True, "wall_s": 4.0, "cpu_s": 3, "max_processes": 16}
)
BUBBLEWRAP = Isolation(Detection(BwrapBackend(shutil.which("bwrap") or "bwrap")), host_cgroups())
SUMMED = Isolation(BUBBLEWRAP.detection, None)


def test_subprocesses_can_be_allowed_and_run_inside_the_sandbox() -> None:
    result, _ = run(
        "import subprocess\nprint(subprocess.run(['ls', '/'], capture_output=True, text=True).stdout.split())",
        SPAWNING,
    )
    assert "tmp" in result.stdout and "etc" not in result.stdout


@pytest.mark.parametrize("isolation", [BUBBLEWRAP, SUMMED], ids=["cgroup", "summed"])
def test_four_children_of_700_mb_are_stopped_by_the_tree_memory_limit(isolation: Isolation) -> None:
    code = (
        "import os, time\nfor _ in range(4):\n    if os.fork() == 0:\n"
        "        x = b'x' * (700 << 20)\n        time.sleep(30)\n        os._exit(0)\n"
        "for _ in range(4):\n    os.wait()\nprint('ALL ALLOCATED')\n"
    )
    limits = SPAWNING.model_copy(update={"memory_mb": 1024, "wall_s": 8.0})
    result, obs = run(code, limits, isolation)
    assert "ALL ALLOCATED" not in result.stdout
    assert result.stopped == "memory", obs
    assert obs.startswith("[python] Stopped: the code tried to use more than 1024 MB of memory")
    assert result.tree_limits == ("summed" if isolation is SUMMED else isolation.cgroups.name)  # type: ignore[union-attr]


@pytest.mark.parametrize("isolation", [BUBBLEWRAP, SUMMED], ids=["cgroup", "summed"])
def test_fork_bomb_is_bounded_and_nothing_survives(isolation: Isolation) -> None:
    marker = f"agentcpt-bomb-{uuid.uuid4().hex}"
    code = (
        "import os, time\nn = 0\nwhile True:\n    try:\n        pid = os.fork()\n    except OSError:\n"
        "        time.sleep(0.01)\n        continue\n"
        f"    if pid == 0:\n        os.execv('/bin/sleep', [{marker!r}, '600'])\n"
    )
    limits = SPAWNING.model_copy(update={"wall_s": 2.0})
    started = time.monotonic()
    result, _ = run(code, limits, isolation)
    assert time.monotonic() - started < limits.wall_s + 1
    assert result.stopped in ("wall_clock", "processes")
    assert leftover_processes(marker) == []


def test_setsid_daemon_holding_the_pipes_dies_with_the_call() -> None:
    marker = f"agentcpt-daemon-{uuid.uuid4().hex}"
    # The daemon keeps stdout open and outlives its parent: before the pid namespace this
    # blocked run_python far past its wall limit.
    code = (
        f"import os\nif os.fork() == 0:\n    os.setsid()\n    os.execv('/bin/sleep', [{marker!r}, '600'])\n"
        "print('parent done')\n"
    )
    started = time.monotonic()
    result, _ = run(code, SPAWNING, BUBBLEWRAP)
    assert time.monotonic() - started < 2.0
    assert result.stdout.strip() == "parent done" and result.stopped is None
    assert leftover_processes(marker) == []


def test_setsid_daemon_of_a_sleeping_parent_is_killed_at_the_wall_limit() -> None:
    marker = f"agentcpt-daemon-{uuid.uuid4().hex}"
    code = (
        f"import os, time\nif os.fork() == 0:\n    os.setsid()\n    os.execv('/bin/sleep', [{marker!r}, '600'])\n"
        "time.sleep(600)\n"
    )
    limits = SPAWNING.model_copy(update={"wall_s": 1.0})
    started = time.monotonic()
    result, _ = run(code, limits, BUBBLEWRAP)
    assert time.monotonic() - started < limits.wall_s + 1
    assert result.stopped == "wall_clock"
    assert leftover_processes(marker) == []


# ---------------------------------------------------------------------------
# A host that cannot isolate
# ---------------------------------------------------------------------------


def test_without_bubblewrap_or_unshare_the_tool_is_disabled(tmp_path: Path) -> None:
    iso = no_isolation(tmp_path)
    assert iso.detection.backend is None
    assert iso.detection.problems == ("bwrap: not installed", "unshare: not installed")
    result, obs = run("print('hello')", FAST, iso)
    assert result.stopped == "unavailable" and result.isolation is None
    assert obs == (
        "[python] Unavailable: the python tool is disabled on this host because it cannot be sandboxed. "
        "Answer with the other tools."
    )
    notice = python_tool_notice(allow_unisolated=False, isolation=iso)
    assert notice is not None and notice.startswith("python tool disabled: no sandbox can isolate it")


def test_allow_unisolated_runs_with_limits_only_and_says_so(tmp_path: Path) -> None:
    iso = no_isolation(tmp_path)
    limits = FAST.model_copy(update={"allow_unisolated": True})
    result, obs = run(
        "import os, ctypes\nprint(ctypes.CDLL(None).fork())\nprint(os.path.exists('/etc/passwd'))",
        limits,
        iso,
    )
    assert result.isolation == "none"
    # seccomp still refuses fork; the host filesystem is visible, which is what the flag accepts.
    assert result.stdout.split() == ["-1", "True"], obs
    notice = python_tool_notice(allow_unisolated=True, isolation=iso)
    assert notice is not None and notice.startswith("python tool runs WITHOUT a sandbox")


def test_environment_answers_python_calls_with_the_disabled_observation(tmp_path: Path) -> None:
    env = ToolEnvironment(
        index=SearchIndex.from_documents([]), sandbox=FAST, isolation=no_isolation(tmp_path)
    )
    obs = asyncio.run(env.run(ToolAction(tool="python", arguments={"code": "print(1)"})))
    assert obs.startswith("[python] Unavailable: the python tool is disabled on this host")


# ---------------------------------------------------------------------------
# A checkout (and its virtualenv) under /tmp, as CI clones may be
# ---------------------------------------------------------------------------


def test_the_unshare_root_never_covers_an_interpreter_path() -> None:
    assert new_root_dir(["/usr", "/opt/venv"]) == "/tmp"
    chosen = new_root_dir(["/usr", "/tmp/ci/main/.venv"])
    assert chosen != "/tmp" and not "/tmp/ci/main/.venv".startswith(chosen + "/")


def test_bubblewrap_mounts_scratch_before_the_interpreter_so_a_venv_in_tmp_stays_visible(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from synth.tools import sandbox_backends

    monkeypatch.setattr(sandbox_backends, "interpreter_paths", lambda: ["/usr", "/tmp/ci/main/.venv"])
    child = ChildConfig(
        cpu_s=1, memory_bytes=1, file_bytes=1, max_processes=1, scratch="/tmp", scratch_bytes=1,
        allow_subprocesses=False, seccomp=False,
    )
    argv = BwrapBackend("bwrap").command(child)
    assert argv.index("--tmpfs") < argv.index("/tmp/ci/main/.venv")
