"""The python tool's sandbox: limits stop runaway code with a clear message, and nothing leaves the box."""

from __future__ import annotations

import asyncio
import os

import pytest

from synth.tools.sandbox import (
    SandboxLimits,
    SandboxResult,
    format_python_observation,
    network_namespace_available,
    run_python,
)

FAST = SandboxLimits(cpu_s=1, wall_s=3.0, memory_mb=512, max_output_chars=2000)


def run(code: str, limits: SandboxLimits = FAST) -> tuple[SandboxResult, str]:
    result = asyncio.run(run_python(code, limits))
    return result, format_python_observation(result, limits)


def test_prints_come_back_as_stdout() -> None:
    result, obs = run("print(sum(range(10)))")
    assert result.exit_code == 0 and result.stopped is None
    assert obs == "stdout:\n45"


def test_an_uncaught_error_shows_its_traceback_without_the_bootstrap() -> None:
    result, obs = run("x = 1\n1 / x0")
    assert result.exit_code == 1
    assert "NameError" in obs and 'File "main.py", line 2' in obs
    assert "exec(compile" not in obs


def test_infinite_loop_is_stopped_by_the_cpu_limit() -> None:
    # A generous wall clock: on a loaded machine the loop may get well under one CPU second per second.
    result, obs = run("while True:\n    pass", FAST.model_copy(update={"wall_s": 60.0}))
    assert result.stopped == "cpu_time"
    assert obs.startswith("[python] Stopped: the code used more than 1 s of CPU time")


def test_sleeping_code_is_stopped_by_the_wall_clock_limit() -> None:
    result, obs = run(
        "import time\nprint('start', flush=True)\ntime.sleep(60)", FAST.model_copy(update={"wall_s": 1.0})
    )
    assert result.stopped == "wall_clock"
    assert "ran longer than the 1 s time limit" in obs
    assert "start" in obs  # output printed before the kill is kept


def test_ten_gigabyte_allocation_is_stopped_by_the_memory_limit() -> None:
    result, obs = run("x = bytearray(10 * 1024**3)\nprint('allocated')")
    assert result.stopped == "memory"
    assert "more than 512 MB of memory" in obs
    assert "allocated" not in obs


@pytest.mark.parametrize("namespace", [True, False], ids=["netns+audit", "audit-hook-only"])
def test_socket_connect_is_refused(namespace: bool) -> None:
    code = (
        "import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('1.1.1.1', 80))\nprint('connected')"
    )
    result, obs = run(code, FAST.model_copy(update={"network_namespace": namespace}))
    assert result.stopped == "denied"
    assert obs.startswith("[python] Blocked: network access is disabled in this sandbox (socket.connect)")
    assert "connected" not in result.stdout
    assert result.isolated_network == (namespace and network_namespace_available())


def test_dns_lookup_is_refused() -> None:
    result, obs = run("import socket\nprint(socket.getaddrinfo('example.com', 80))")
    assert result.stopped == "denied" and "socket.getaddrinfo" in obs


def test_starting_a_process_is_refused() -> None:
    result, obs = run("import subprocess\nsubprocess.run(['echo', 'hi'])")
    assert result.stopped == "denied"
    assert "starting processes is disabled" in obs


def test_output_flood_is_truncated() -> None:
    result, obs = run("for i in range(200000):\n    print('line', i)")
    assert result.stdout_truncated
    assert len(result.stdout) <= FAST.max_output_chars
    assert obs.startswith("stdout (truncated):")


def test_code_runs_in_a_temporary_directory_that_is_removed() -> None:
    code = "import os\nopen('scratch.txt', 'w').write('x')\nprint(os.getcwd())"
    result, _ = run(code)
    cwd = result.stdout.strip()
    assert "agentcpt-py-" in cwd
    assert not os.path.exists(cwd)


def test_environment_variables_of_the_parent_are_not_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "secret-value")
    result, _ = run("import os\nprint(os.environ.get('OPENAI_API_KEY'))")
    assert result.stdout.strip() == "None"


def test_code_that_prints_nothing_says_so() -> None:
    _, obs = run("x = 2 + 2")
    assert "printed nothing" in obs
