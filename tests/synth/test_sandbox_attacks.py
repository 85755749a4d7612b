"""Hostile code in the python tool: every attempt fails, and the agent is told what happened.

Each attack runs under both namespace backends: bubblewrap (what CI installs) and the
``unshare`` fallback. The attack code prints what it managed; the tests check the host
side too (the victim file still there, the listener got no connection, the victim process
alive, no process left behind).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import synth
from synth.tools.sandbox import Isolation, SandboxLimits, SandboxResult, format_python_observation, run_python
from synth.tools.sandbox_backends import BwrapBackend, Detection, UnshareBackend
from synth.tools.sandbox_cgroup import host_cgroups

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = (REPO / ".." / "shared" / "data").resolve()
LIMITS = SandboxLimits(cpu_s=2, wall_s=4.0, memory_mb=512, scratch_mb=16, max_output_chars=3000)


def _backend(name: str) -> Isolation:
    exe = shutil.which("bwrap" if name == "bwrap" else "unshare")
    assert exe, f"{name} must be installed (.ci/run installs bubblewrap)"
    backend = BwrapBackend(exe) if name == "bwrap" else UnshareBackend(exe)
    return Isolation(Detection(backend), host_cgroups())


@pytest.fixture(params=["bwrap", "unshare"])
def isolation(request: pytest.FixtureRequest) -> Isolation:
    return _backend(request.param)


def run(code: str, isolation: Isolation, limits: SandboxLimits = LIMITS) -> tuple[SandboxResult, str]:
    result = asyncio.run(run_python(code, limits, isolation))
    return result, format_python_observation(result, limits)


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


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A process of the same user holding a secret in its environment."""
    proc = subprocess.Popen(["sleep", "60"], env={"PATH": os.environ["PATH"], "VICTIM_SECRET": "hunter2"})
    yield proc
    proc.kill()
    proc.wait()


# ---------------------------------------------------------------------------
# Reading the host
# ---------------------------------------------------------------------------


def test_cannot_read_the_run_dir_data_dir_source_tree_or_shadow(isolation: Isolation, tmp_path: Path) -> None:
    shard = tmp_path / "runs" / "r1" / "shards" / "documents" / "part-0.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_text("SHARD-SECRET")
    targets = [shard, DATA_DIR / "README.md", Path(synth.__file__), Path("/etc/shadow"), Path("/etc/passwd")]
    assert all(t.exists() for t in targets)
    code = (
        f"for p in {[str(t) for t in targets]!r}:\n"
        "    try:\n        print('READ', p, open(p).read(20))\n"
        "    except OSError as err:\n        print('refused', type(err).__name__)\n"
    )
    result, obs = run(code, isolation)
    assert "READ" not in result.stdout
    assert result.stdout.count("refused FileNotFoundError") == len(targets)
    assert obs.startswith("stdout:\nrefused FileNotFoundError")


def test_cannot_list_another_directory(isolation: Isolation) -> None:
    code = (
        "import os\nprint(sorted(os.listdir('/')))\n"
        f"for d in [{str(REPO)!r}, {str(DATA_DIR)!r}, '/home', '/etc', '/var/run']:\n"
        "    try:\n        print('listed', d, os.listdir(d))\n"
        "    except OSError as err:\n        print('refused', d, type(err).__name__)\n"
    )
    result, _ = run(code, isolation)
    # The checkout shows only the mount point of its read-only virtualenv, if that lives there.
    visible_in_repo = {".venv"} if Path(sys.prefix).parent == REPO else set()
    lines = result.stdout.splitlines()
    assert any(
        line in (f"listed {REPO} {sorted(visible_in_repo)}", f"refused {REPO} FileNotFoundError")
        for line in lines
    )
    assert sum(line.startswith("refused") for line in lines[2:]) == 4
    top = set(eval(lines[0]))  # noqa: S307 - a list literal the sandbox printed
    assert not {"etc", "var", "run", "sys", "home"} & top
    assert {"usr", "tmp", "proc", "dev"} <= top


def test_cannot_read_another_process_environment(
    isolation: Isolation, victim: subprocess.Popen[bytes]
) -> None:
    code = (
        f"try:\n    print('READ', open('/proc/{victim.pid}/environ').read())\n"
        "except OSError as err:\n    print('refused', type(err).__name__)\n"
        "import os\nfor pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n        print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError:\n        pass\n"
    )
    result, _ = run(code, isolation)
    assert "refused FileNotFoundError" in result.stdout
    assert "hunter2" not in result.stdout and "OPENAI" not in result.stdout


def test_parent_environment_is_not_passed(isolation: Isolation, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    result, _ = run("import os\nprint(sorted(os.environ))", isolation)
    assert "OPENAI_API_KEY" not in result.stdout and result.exit_code == 0


# ---------------------------------------------------------------------------
# Writing the host
# ---------------------------------------------------------------------------


def test_cannot_write_or_delete_outside_scratch(isolation: Isolation, tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("original")
    source_file = REPO / "synth" / "__init__.py"
    code = (
        "import os, sys\n"
        f"for p in [{str(tmp_path / 'new.txt')!r}, '/usr/pwned', '/pwned', {str(source_file)!r}, sys.executable]:\n"
        "    try:\n        open(p, 'a').write('x')\n        print('WROTE', p)\n"
        "    except OSError as err:\n        print('write refused', type(err).__name__)\n"
        f"for p in [{str(keep)!r}, {str(source_file)!r}, sys.executable]:\n"
        "    try:\n        os.remove(p)\n        print('DELETED', p)\n"
        "    except OSError as err:\n        print('delete refused', type(err).__name__)\n"
    )
    result, _ = run(code, isolation)
    assert "WROTE" not in result.stdout and "DELETED" not in result.stdout
    assert result.stdout.count("write refused") == 5 and result.stdout.count("delete refused") == 3
    assert keep.read_text() == "original" and not (tmp_path / "new.txt").exists()
    assert source_file.exists() and Path(sys.executable).exists()


def test_filling_scratch_stops_at_its_size(isolation: Isolation) -> None:
    code = (
        "chunk = b'x' * (1 << 20)\nwritten = 0\n"
        "try:\n"
        "    with open('/tmp/fill.bin', 'wb') as f:\n"
        "        while written < (64 << 20):\n            f.write(chunk)\n            f.flush()\n"
        "            written += len(chunk)\n"
        "except OSError as err:\n    print('stopped after', written >> 20, 'MiB:', err.strerror)\n"
    )
    result, obs = run(code, isolation)
    assert "No space left on device" in result.stdout
    assert int(result.stdout.split()[2]) <= LIMITS.scratch_mb
    assert obs.startswith("stdout:\nstopped after")


# ---------------------------------------------------------------------------
# Processes and signals
# ---------------------------------------------------------------------------


def test_spawning_through_ctypes_is_refused(isolation: Isolation) -> None:
    code = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print('system', libc.system(b'touch /tmp/pwned'))\n"
        "pid = libc.fork()\nprint('fork', pid, os.strerror(ctypes.get_errno()))\n"
        "if pid == 0:\n    os._exit(0)\n"
        "print('pwned exists', os.path.exists('/tmp/pwned'))\n"
    )
    result, obs = run(code, isolation)
    assert "fork -1 Operation not permitted" in result.stdout
    assert "pwned exists False" in result.stdout
    assert obs.startswith("stdout:\nsystem")


def test_spawning_through_posixsubprocess_is_refused(isolation: Isolation) -> None:
    code = (
        "import _posixsubprocess, os\n"
        "r, w = os.pipe()\n"
        # CPython 3.11's signature (what subprocess.Popen calls, minus the audit event).
        "_posixsubprocess.fork_exec([b'/bin/true'], [b'/bin/true'], True, (), None, None,"
        " -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False)\n"
        "print('SPAWNED')\n"
    )
    result, obs = run(code, isolation)
    assert "SPAWNED" not in result.stdout
    assert "PermissionError: [Errno 1] Operation not permitted" in obs
    assert obs.startswith("[python] The code raised an error")


def test_subprocess_module_is_refused_with_a_readable_message(isolation: Isolation) -> None:
    result, obs = run("import subprocess\nsubprocess.run(['echo', 'hi'])", isolation)
    assert result.stopped == "denied"
    assert obs.startswith(
        "[python] Blocked: starting processes is disabled in this sandbox (subprocess.Popen)"
    )


def test_cannot_signal_another_process(isolation: Isolation, victim: subprocess.Popen[bytes]) -> None:
    code = (
        f"import os, signal\ntry:\n    os.kill({victim.pid}, signal.SIGTERM)\n    print('SIGNALLED')\n"
        "except OSError as err:\n    print('refused', type(err).__name__)\n"
        "print('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
    )
    result, _ = run(code, isolation)
    assert "refused ProcessLookupError" in result.stdout
    pids = eval(result.stdout.split("pids ", 1)[1])  # noqa: S307 - a list literal the sandbox printed
    assert max(pids) < 10  # its own pid namespace: only the sandbox's few processes
    time.sleep(0.1)
    assert victim.poll() is None


def test_fork_bomb_is_refused(isolation: Isolation) -> None:
    code = (
        "import ctypes\nlibc = ctypes.CDLL(None)\nn = 0\n"
        "while n < 1000 and libc.fork() != 0:\n    n += 1\nprint('forks that failed', n)\n"
    )
    result, _ = run(code, isolation)
    assert "forks that failed 1000" in result.stdout


def test_four_children_of_700_mb_are_refused(isolation: Isolation) -> None:
    code = (
        "import os\nfor _ in range(4):\n    if os.fork() == 0:\n"
        "        x = b'x' * (700 << 20)\n        os._exit(0)\nprint('FORKED')\n"
    )
    result, obs = run(code, isolation, LIMITS.model_copy(update={"memory_mb": 1024}))
    assert result.stopped == "denied" and "FORKED" not in result.stdout
    assert obs.startswith("[python] Blocked: starting processes is disabled in this sandbox (os.fork)")


# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------


def test_cannot_reach_a_unix_socket_or_loopback_tcp(isolation: Isolation, tmp_path: Path) -> None:
    path_sock = socket.socket(socket.AF_UNIX)
    path_sock.bind(str(tmp_path / "s.sock"))
    abstract = f"agentcpt-test-{uuid.uuid4().hex}"
    abstract_sock = socket.socket(socket.AF_UNIX)
    abstract_sock.bind("\0" + abstract)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    listeners = [path_sock, abstract_sock, tcp]
    for s in listeners:
        s.listen(4)
        s.setblocking(False)
    port = tcp.getsockname()[1]
    # The socket module is refused by the audit hook; raw libc calls go around it and meet
    # seccomp (no inet sockets) and the namespaces (no host paths, another network).
    code = f"""
import ctypes, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
for addr in [{str(tmp_path / "s.sock")!r}, ('127.0.0.1', {port})]:
    try:
        s = socket.socket(socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET)
        s.connect(addr)
        print('CONNECTED', addr)
    except OSError as err:
        print('socket module refused:', err)
def raw(family, sockaddr):
    fd = libc.socket(family, 1, 0)
    if fd < 0:
        return 'socket() errno %d' % ctypes.get_errno()
    rc = libc.connect(fd, sockaddr, len(sockaddr))
    return 'CONNECTED' if rc == 0 else 'connect() errno %d' % ctypes.get_errno()
print('raw path', raw(1, struct.pack('H', 1) + {str(tmp_path / "s.sock").encode()!r}))
print('raw abstract', raw(1, struct.pack('H', 1) + b'\\0' + {abstract.encode()!r}))
print('raw tcp', raw(2, struct.pack('<H', 2) + struct.pack('!H', {port}) + bytes([127, 0, 0, 1]) + bytes(8)))
"""
    result, obs = run(code, isolation)
    for s in listeners:
        with pytest.raises(BlockingIOError):
            s.accept()  # nothing ever connected
        s.close()
    assert "CONNECTED" not in result.stdout
    assert (
        "socket module refused: network access is disabled in this sandbox (socket.connect)" in result.stdout
    )
    assert "socket module refused: [Errno 13] Permission denied" in result.stdout  # no inet socket at all
    assert "raw path connect() errno 2" in result.stdout  # ENOENT: the path is not in the sandbox
    assert "raw abstract connect() errno 111" in result.stdout  # ECONNREFUSED: another network namespace
    assert "raw tcp socket() errno 13" in result.stdout  # EACCES: seccomp allows only AF_UNIX
    assert obs.startswith("stdout:\nsocket module refused")


def test_the_sandbox_has_its_own_empty_network(isolation: Isolation) -> None:
    result, _ = run("print(open('/proc/net/dev').read())", isolation)
    interfaces = [line.split(":")[0].strip() for line in result.stdout.splitlines() if ":" in line]
    assert interfaces == ["lo"]


# ---------------------------------------------------------------------------
# Time: nothing outlives the call
# ---------------------------------------------------------------------------


def test_a_setsid_daemon_is_refused_and_the_call_returns_in_time(isolation: Isolation) -> None:
    marker = f"agentcpt-daemon-{uuid.uuid4().hex}"
    code = (
        "import ctypes, os, time\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "pid = libc.fork()\n"
        f"if pid == 0:\n    os.setsid()\n    os.execv('/bin/sleep', [{marker!r}, '600'])\n"
        "print('fork', pid, os.strerror(ctypes.get_errno()), flush=True)\ntime.sleep(600)\n"
    )
    limits = LIMITS.model_copy(update={"wall_s": 1.5})
    started = time.monotonic()
    result, obs = run(code, isolation, limits)
    assert time.monotonic() - started < limits.wall_s + 1
    assert "fork -1 Operation not permitted" in result.stdout
    assert result.stopped == "wall_clock" and "ran longer than the 1.5 s time limit" in obs
    assert leftover_processes(marker) == []


def test_code_ignoring_signals_is_killed_at_the_wall_limit(isolation: Isolation) -> None:
    code = "import signal, time\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.01)"
    limits = LIMITS.model_copy(update={"wall_s": 1.0})
    started = time.monotonic()
    result, _ = run(code, isolation, limits)
    assert time.monotonic() - started < limits.wall_s + 1
    assert result.stopped == "wall_clock"
