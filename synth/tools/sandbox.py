"""The `python` tool: untrusted code in a child interpreter with CPU, memory, time and network limits.

Isolation, layer by layer, and why each one:

* **A fresh interpreter per call** (``python -I``: no PYTHON* variables, no user site, the
  script's directory not on ``sys.path``) in a temporary working directory that is deleted
  afterwards, with a minimal environment (``HOME``/``TMPDIR`` point into it).
* **Resource limits set inside the child before user code runs** (``RLIMIT_CPU``,
  ``RLIMIT_AS``, ``RLIMIT_FSIZE``, no core files). Setting them in the child's bootstrap
  rather than in a ``preexec_fn`` avoids ``preexec_fn``'s deadlock risk in threaded
  parents (Ray workers are threaded). An infinite loop dies of ``SIGXCPU``; a 10 GB
  allocation raises ``MemoryError`` (address-space limit) instead of swapping the host.
* **A wall-clock limit** enforced by the parent, which kills the child's whole process
  group: ``time.sleep(1e9)`` uses no CPU time.
* **No network, two layers.** (1) Always: an audit hook (PEP 578) installed by the
  bootstrap refuses ``socket.connect``/``bind``/``sendto``/``getaddrinfo`` and process
  creation (a child process would not inherit the hook), with a message the agent can read.
  Audit hooks are not a security boundary (``ctypes`` can bypass them), hence (2): when the
  host allows it, the child runs under ``unshare -rn`` — a new user + network namespace
  with only a downed loopback — so even raw syscalls find no route. The probe runs once per
  process; containers whose seccomp profile forbids user namespaces fall back to (1).
* **Output captured and capped while it streams**: a print loop cannot fill the parent's
  memory; the rest is drained and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

# Exit codes the bootstrap uses to tell the parent why user code stopped (written as literals
# in _BOOTSTRAP too).
EXIT_MEMORY = 86
EXIT_DENIED = 87

# The child's entry point. argv: cpu seconds, address-space bytes, max file bytes.
# Kept free of f-string braces: it is passed verbatim with ``-c``.
_BOOTSTRAP = r"""
import os, resource, sys, traceback

cpu_s, mem_bytes, fsize_bytes = (int(x) for x in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_bytes, fsize_bytes))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

class SandboxDenied(PermissionError):
    pass

_NETWORK = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
                      "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"})
_PROCESS = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn",
                      "os.fork", "os.forkpty", "pty.spawn"})

def _audit(event, args):
    if event in _NETWORK:
        raise SandboxDenied("network access is disabled in this sandbox (" + event + ")")
    if event in _PROCESS:
        raise SandboxDenied("starting processes is disabled in this sandbox (" + event + ")")

sys.addaudithook(_audit)
del _audit

with open("main.py", encoding="utf-8") as f:
    _src = f.read()
try:
    exec(compile(_src, "main.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
except MemoryError:
    # Printing a traceback may itself need memory: report briefly and leave.
    try:
        sys.stdout.flush()
        sys.stderr.write("MemoryError\n")
        sys.stderr.flush()
    finally:
        os._exit(86)
except SystemExit:
    raise
except BaseException as err:
    et, ev, tb = sys.exc_info()
    traceback.print_exception(et, ev, tb.tb_next)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(87 if isinstance(err, SandboxDenied) else 1)
"""

StopReason = Literal["cpu_time", "memory", "wall_clock", "denied", "output_file_size"]


class SandboxLimits(BaseModel):
    """Limits of one python tool call."""

    model_config = ConfigDict(extra="forbid")
    cpu_s: PositiveInt = Field(5, description="CPU seconds before SIGXCPU")
    memory_mb: PositiveInt = Field(1024, description="address-space limit (RLIMIT_AS) in MiB")
    wall_s: PositiveFloat = Field(10.0, description="wall-clock seconds before the process group is killed")
    max_output_chars: PositiveInt = Field(
        4000, description="stdout and stderr are each cut to this many characters"
    )
    max_file_mb: PositiveInt = Field(64, description="largest file the code may write (RLIMIT_FSIZE) in MiB")
    network_namespace: bool = Field(True, description="run under `unshare -rn` when the host allows it")


class SandboxResult(BaseModel):
    """What one run produced, and why it stopped if it did not finish on its own."""

    model_config = ConfigDict(extra="forbid")
    stdout: str
    stderr: str
    exit_code: int | None = Field(description="the child's exit status; negative = killed by that signal")
    stopped: StopReason | None = Field(
        None, description="limit or rule that stopped the code; None = it ended"
    )
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    isolated_network: bool = Field(description="ran in its own network namespace (else: audit hook only)")


@functools.cache
def network_namespace_available() -> bool:
    """Whether ``unshare -rn`` works here (probed once per process; user namespaces may be forbidden)."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        done = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


async def _read_capped(stream: asyncio.StreamReader, max_bytes: int) -> tuple[bytes, bool]:
    """Read a stream to EOF, keeping its first ``max_bytes``; returns (kept, truncated)."""
    kept = bytearray()
    truncated = False
    while chunk := await stream.read(65536):
        room = max_bytes - len(kept)
        if room > 0:
            kept += chunk[:room]
        if len(chunk) > room:
            truncated = True
    return bytes(kept), truncated


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _stop_reason(exit_code: int, timed_out: bool) -> StopReason | None:
    if timed_out:
        return "wall_clock"
    if exit_code in (-signal.SIGXCPU, -signal.SIGKILL):
        # SIGKILL we did not send comes from RLIMIT_CPU's hard limit (soft + 1 s).
        return "cpu_time"
    if exit_code == -signal.SIGXFSZ:
        return "output_file_size"
    if exit_code == EXIT_MEMORY:
        return "memory"
    if exit_code == EXIT_DENIED:
        return "denied"
    return None


async def run_python(code: str, limits: SandboxLimits) -> SandboxResult:
    """Run ``code`` as a script in a fresh sandboxed interpreter; never raises for what the code does."""
    use_netns = limits.network_namespace and network_namespace_available()
    prefix = ["unshare", "-rn"] if use_netns else []
    max_bytes = limits.max_output_chars * 4  # UTF-8: at most 4 bytes a character
    with tempfile.TemporaryDirectory(prefix="agentcpt-py-") as tmp:
        Path(tmp, "main.py").write_text(code, encoding="utf-8")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": tmp,
            "TMPDIR": tmp,
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            # One BLAS thread: per-thread buffers would eat the address-space budget.
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        argv = [
            *prefix,
            sys.executable,
            "-I",
            "-c",
            _BOOTSTRAP,
            str(limits.cpu_s),
            str(limits.memory_mb * 1024 * 1024),
            str(limits.max_file_mb * 1024 * 1024),
        ]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=tmp,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, so a kill reaches everything it started
        )
        assert proc.stdout is not None and proc.stderr is not None
        readers = asyncio.gather(_read_capped(proc.stdout, max_bytes), _read_capped(proc.stderr, max_bytes))
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), timeout=limits.wall_s)
        except TimeoutError:
            timed_out = True
        finally:
            # Always kill the group: a finished child may have left a descendant holding the pipes,
            # and a cancelled caller must not leave a runaway process behind.
            _kill_group(proc.pid)
        exit_code = await proc.wait()
        (out, out_cut), (err, err_cut) = await readers

    stdout = out.decode("utf-8", errors="replace")
    stderr = err.decode("utf-8", errors="replace")
    limit = limits.max_output_chars
    return SandboxResult(
        stdout=stdout[:limit],
        stderr=stderr[:limit],
        exit_code=exit_code,
        stopped=_stop_reason(exit_code, timed_out),
        stdout_truncated=out_cut or len(stdout) > limit,
        stderr_truncated=err_cut or len(stderr) > limit,
        isolated_network=use_netns,
    )


_DENIED_RE = re.compile(r"SandboxDenied: (.+)")


def _denial_message(stderr: str) -> str:
    found = _DENIED_RE.findall(stderr)
    return (
        found[-1].strip() + "." if found else "the sandbox has no network access and cannot start processes."
    )


def format_python_observation(result: SandboxResult, limits: SandboxLimits) -> str:
    """The tool response the agent reads: why it stopped (if it did), then stdout and stderr."""
    headline = {
        "cpu_time": f"Stopped: the code used more than {limits.cpu_s} s of CPU time (an endless loop?).",
        "memory": f"Stopped: the code tried to use more than {limits.memory_mb} MB of memory (MemoryError).",
        "wall_clock": f"Stopped: the code ran longer than the {limits.wall_s:g} s time limit.",
        "denied": "Blocked: " + _denial_message(result.stderr),
        "output_file_size": f"Stopped: the code wrote a file larger than {limits.max_file_mb} MB.",
    }
    parts: list[str] = []
    if result.stopped is not None:
        parts.append(f"[python] {headline[result.stopped]}")
    elif result.exit_code:
        parts.append(f"[python] The code raised an error (exit code {result.exit_code}).")
    cut = " (truncated)"
    if result.stdout:
        parts.append(f"stdout{cut if result.stdout_truncated else ''}:\n{result.stdout.rstrip()}")
    if result.stderr:
        parts.append(f"stderr{cut if result.stderr_truncated else ''}:\n{result.stderr.rstrip()}")
    if not result.stdout and not result.stderr and result.stopped is None and not result.exit_code:
        parts.append("(the code printed nothing; use print() to see values)")
    return "\n".join(parts)
