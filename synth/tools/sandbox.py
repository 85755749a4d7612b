"""The `python` tool: code a model wrote, run where it cannot touch the host.

The code comes from the rollouts agent, and web pages in the corpus steer what it writes,
so it is treated as hostile. Each call starts a fresh interpreter in a sandbox that is
thrown away afterwards. What is isolated, layer by layer:

* **Namespaces** (``synth.tools.sandbox_backends``): bubblewrap when it works here, else
  util-linux ``unshare``; both give the code its own user, mount, pid, IPC, UTS and network
  namespaces. The code runs as ``nobody`` (bubblewrap) or a capability-less root of its own
  user namespace (``unshare``); outside, it keeps the worker's uid.
* **Filesystem**: a new root holding only ``/usr`` (and the ``/lib``/``/bin`` links), the
  interpreter's prefix and the virtualenv, all read-only; a private ``/proc`` (``/proc/sys``
  read-only), a minimal ``/dev``, and a fresh tmpfs of ``scratch_mb`` at ``/tmp`` as the only
  writable place (also ``HOME``, ``TMPDIR`` and the working dir). No run dir, data dir,
  home, source checkout, ``/etc`` or Unix socket of the host is visible.
* **Processes**: a private pid namespace (no other process can be seen or signalled); by
  default no process creation at all (seccomp refuses ``fork``/``exec``/non-thread
  ``clone``, the audit hook says so first); ``RLIMIT_NPROC`` and a ``pids`` cgroup bound
  tasks when ``allow_subprocesses`` lets it start some.
* **Kernel surface**: all capabilities dropped, ``no_new_privs``, and a seccomp filter that
  refuses ``ptrace``, mounts, namespaces, keyrings, BPF, ``io_uring``, modules and perf
  events, and every socket but ``AF_UNIX`` (see ``synth.tools.sandbox_child``).
* **Network**: an empty network namespace (no route out; its loopback reaches nothing of
  the host's), inet sockets refused by seccomp, and an audit hook whose message the agent
  can read.
* **Resources**: ``RLIMIT_CPU``, ``RLIMIT_AS`` and ``RLIMIT_FSIZE`` per process; memory and
  tasks of the whole tree through a cgroup per call, else summed accounting
  (``synth.tools.sandbox_cgroup``); the scratch tmpfs has a size.
* **Time**: at ``wall_s`` the launcher's process group, the cgroup and the pid namespace
  are killed (the namespace dies with its pid 1, ``setsid`` daemons included) and
  ``run_python`` returns by ``wall_s + 1`` s whatever the code does.
* **Environment**: only ``PATH``, ``HOME``, ``TMPDIR``, locale and BLAS thread settings;
  nothing of the worker's (API keys) is passed, and the worker's ``/proc`` is not visible.

When no backend can isolate the filesystem (no bubblewrap, user namespaces forbidden),
the tool is disabled: every call answers with an observation saying so, and rollouts warn
at run start — unless the spec sets ``rollouts.allow_unisolated_python``, which runs the
code with the per-process limits, seccomp and the audit hook only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from synth.tools.sandbox_backends import (
    BackendName,
    ChildConfig,
    Detection,
    SandboxBackend,
    UnisolatedBackend,
    host_backend,
    sandbox_env,
)
from synth.tools.sandbox_cgroup import (
    EXIT_JOIN_FAILED,
    POLL_S,
    CgroupFactory,
    TreeLimitName,
    host_cgroups,
    open_tree_group,
)

log = logging.getLogger(__name__)

# Exit codes the bootstrap uses (see synth.tools.sandbox_child).
EXIT_MEMORY = 86
EXIT_DENIED = 87
EXIT_SETUP = 88
_SIGKILL, _SIGXCPU, _SIGXFSZ = 9, 24, 25
# After the kill, how long the pipes may take to reach EOF before they are closed anyway.
_DRAIN_GRACE_S = 0.8

StopReason = Literal[
    "cpu_time",
    "memory",
    "processes",
    "wall_clock",
    "denied",
    "output_file_size",
    "unavailable",
    "setup_failed",
]


class SandboxLimits(BaseModel):
    """Limits of one python tool call."""

    model_config = ConfigDict(extra="forbid")
    cpu_s: PositiveInt = Field(5, description="CPU seconds before SIGXCPU (per process)")
    memory_mb: PositiveInt = Field(
        1024,
        description="memory in MiB: RLIMIT_AS per process and the limit of the whole tree (scratch included)",
    )
    wall_s: PositiveFloat = Field(
        10.0, description="wall-clock seconds before everything the call started is killed"
    )
    max_output_chars: PositiveInt = Field(
        4000, description="stdout and stderr are each cut to this many characters"
    )
    max_file_mb: PositiveInt = Field(64, description="largest file the code may write (RLIMIT_FSIZE) in MiB")
    scratch_mb: PositiveInt = Field(
        64, description="size of the private tmpfs at /tmp, the only writable place"
    )
    max_processes: PositiveInt = Field(
        16, description="tasks (processes and threads) of the code at once: RLIMIT_NPROC and pids cgroup"
    )
    allow_subprocesses: bool = Field(
        False, description="let the code start processes inside the sandbox (off: seccomp refuses fork/exec)"
    )
    allow_unisolated: bool = Field(
        False,
        description="run even where no namespace sandbox works (rlimits, seccomp, audit hook only): "
        "the code can then read what the worker can",
    )


class SandboxResult(BaseModel):
    """What one run produced, and why it stopped if it did not finish on its own."""

    model_config = ConfigDict(extra="forbid")
    stdout: str
    stderr: str
    exit_code: int | None = Field(description="the code's exit status; negative = killed by that signal")
    stopped: StopReason | None = Field(
        None, description="limit or rule that stopped the code; None = it ended"
    )
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    isolation: BackendName | None = Field(description="the sandbox backend; None = the tool was not run")
    tree_limits: TreeLimitName | None = Field(
        None, description="how the whole tree's memory/tasks were bounded"
    )
    detail: str | None = Field(None, description="why the tool was unavailable or its setup failed")
    elapsed_s: float = Field(0.0, description="wall time of the call")


@dataclass(frozen=True)
class Isolation:
    """The sandbox a call uses: a backend (None: the host has none) and the cgroup maker."""

    detection: Detection
    cgroups: CgroupFactory | None


def host_isolation() -> Isolation:
    """What this host offers, probed once per process."""
    return Isolation(host_backend(), host_cgroups())


def python_tool_notice(allow_unisolated: bool, isolation: Isolation | None = None) -> str | None:
    """The warning rollouts log at run start when the python tool is not isolated; None when it is."""
    detection = (isolation or host_isolation()).detection
    if detection.backend is not None:
        return None
    why = "; ".join(detection.problems)
    if allow_unisolated:
        return (
            "python tool runs WITHOUT a sandbox (rollouts.allow_unisolated_python): model-written code "
            f"can read what this worker can read ({why})"
        )
    return f"python tool disabled: no sandbox can isolate it on this host ({why}); install bubblewrap"


def _choose_backend(limits: SandboxLimits, detection: Detection) -> tuple[SandboxBackend | None, bool]:
    """(backend, seccomp) for a call; backend None = the tool is unavailable."""
    if detection.backend is not None:
        return detection.backend, True
    if limits.allow_unisolated:
        return UnisolatedBackend(), detection.unisolated_seccomp
    return None, False


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


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    # The bootstrap reads the code first thing; a sandbox that fails earlier closes the pipe.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        stdin.write(data)
        await stdin.drain()
        stdin.close()


def _normalize_exit(code: int, backend: SandboxBackend) -> int:
    if backend.signal_as_128_plus and 128 < code < 160:
        return -(code - 128)
    return code


def _stop_reason(exit_code: int, timed_out: bool, over: str | None, oom: bool) -> StopReason | None:
    if over in ("memory", "processes"):
        return over  # type: ignore[return-value]
    if timed_out:
        return "wall_clock"
    if oom:
        return "memory"
    if exit_code in (-_SIGXCPU, -_SIGKILL):
        # A SIGKILL we did not send comes from RLIMIT_CPU's hard limit (soft + 1 s).
        return "cpu_time"
    if exit_code == -_SIGXFSZ:
        return "output_file_size"
    if exit_code == EXIT_MEMORY:
        return "memory"
    if exit_code == EXIT_DENIED:
        return "denied"
    if exit_code in (EXIT_SETUP, EXIT_JOIN_FAILED):
        return "setup_failed"
    return None


def _unavailable(detection: Detection) -> SandboxResult:
    return SandboxResult(
        stdout="", stderr="", exit_code=None, stopped="unavailable", isolation=None,
        detail="; ".join(detection.problems) or "no sandbox backend",
    )  # fmt: skip


async def run_python(code: str, limits: SandboxLimits, isolation: Isolation | None = None) -> SandboxResult:
    """Run ``code`` as a script in a fresh sandbox (module docstring); never raises for what the code does.

    ``isolation`` defaults to what this host offers; tests pass another to exercise a fallback.
    """
    iso = isolation or host_isolation()
    backend, seccomp = _choose_backend(limits, iso.detection)
    if backend is None:
        return _unavailable(iso.detection)
    memory_bytes = limits.memory_mb * 1024 * 1024
    group = open_tree_group(iso.cgroups, memory_bytes, limits.max_processes)
    started = time.monotonic()
    deadline = started + limits.wall_s
    max_bytes = limits.max_output_chars * 4  # UTF-8: at most 4 bytes a character
    try:
        with tempfile.TemporaryDirectory(prefix="agentcpt-py-") as host_tmp:
            scratch = backend.scratch_dir(host_tmp)
            child = backend.child_config(
                ChildConfig(
                    cpu_s=limits.cpu_s, memory_bytes=memory_bytes, file_bytes=limits.max_file_mb * 1024 * 1024,
                    max_processes=limits.max_processes, scratch=scratch, scratch_bytes=limits.scratch_mb * 1024 * 1024,
                    allow_subprocesses=limits.allow_subprocesses, seccomp=seccomp,
                )
            )  # fmt: skip
            proc = await asyncio.create_subprocess_exec(
                *group.wrap(backend.command(child)),
                cwd=host_tmp,
                env=sandbox_env(scratch),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group, so one kill reaches the launcher chain
            )
            assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
            feeder = asyncio.ensure_future(_feed(proc.stdin, code.encode("utf-8", errors="replace")))
            readers = asyncio.ensure_future(
                asyncio.gather(_read_capped(proc.stdout, max_bytes), _read_capped(proc.stderr, max_bytes))
            )
            timed_out, over = False, None
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        timed_out = True
                        break
                    try:
                        await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=min(POLL_S, remaining))
                        break
                    except TimeoutError:
                        over = group.over_limit(proc.pid)
                        if over:
                            break
            finally:
                # Always: a finished child may have left a descendant holding the pipes, and a
                # cancelled caller must not leave a runaway process behind.
                group.kill_all(proc.pid)
                feeder.cancel()
            exit_code = await proc.wait()
            oom = group.oom_killed()
            try:
                grace = max(0.05, min(_DRAIN_GRACE_S, deadline + _DRAIN_GRACE_S - time.monotonic()))
                (out, out_cut), (err, err_cut) = await asyncio.wait_for(
                    asyncio.shield(readers), timeout=grace
                )
            except TimeoutError:
                # Something outside the sandbox's reach holds a pipe open: stop reading, keep the deadline.
                readers.cancel()
                out, out_cut, err, err_cut = b"", True, b"", True
                for stream in (proc.stdout, proc.stderr):
                    stream.feed_eof()
    finally:
        group.close()

    exit_code = _normalize_exit(exit_code, backend)
    stdout = out.decode("utf-8", errors="replace")
    stderr = err.decode("utf-8", errors="replace")
    limit = limits.max_output_chars
    stopped = _stop_reason(exit_code, timed_out, over, oom)
    detail = None
    if stopped == "setup_failed":
        # The agent is told only that the tool is unavailable; the operator needs the cause.
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {exit_code}"
        log.warning("python sandbox (%s) could not be set up: %s", backend.name, detail)
    return SandboxResult(
        stdout=stdout[:limit],
        stderr=stderr[:limit],
        exit_code=exit_code,
        stopped=stopped,
        stdout_truncated=out_cut or len(stdout) > limit,
        stderr_truncated=err_cut or len(stderr) > limit,
        isolation=backend.name,
        tree_limits=group.name,
        detail=detail,
        elapsed_s=round(time.monotonic() - started, 3),
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
        "memory": f"Stopped: the code tried to use more than {limits.memory_mb} MB of memory.",
        "processes": f"Stopped: the code started more than {limits.max_processes} processes.",
        "wall_clock": f"Stopped: the code ran longer than the {limits.wall_s:g} s time limit.",
        "denied": "Blocked: " + _denial_message(result.stderr),
        "output_file_size": f"Stopped: the code wrote a file larger than {limits.max_file_mb} MB.",
        "unavailable": "Unavailable: the python tool is disabled on this host because it cannot be "
        "sandboxed. Answer with the other tools.",
        "setup_failed": "Unavailable: the sandbox could not be set up for this call.",
    }
    parts: list[str] = []
    if result.stopped is not None:
        parts.append(f"[python] {headline[result.stopped]}")
        if result.stopped in ("unavailable", "setup_failed"):
            return parts[0]  # the host's details are for the operator's log, not the agent
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
