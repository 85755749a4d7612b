"""How the python tool's child is isolated: bubblewrap, ``unshare``, or (only when allowed) nothing.

One small class per backend behind one interface: each turns the bootstrap
(``synth.tools.sandbox_child``) and its settings into a command line. ``detect_backend``
probes them once per process by running the real sandbox on ``print('ok')`` and keeps the
first that works, so a host that forbids user namespaces (or lacks ``--size`` in an old
bubblewrap) falls through to the next instead of failing every call.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

BackendName = Literal["bwrap", "unshare", "none"]

# The sandbox's view of the host: system libraries and the interpreter, read-only.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
# Inside the sandbox the code runs as "nobody" (bubblewrap can choose the uid it shows).
SANDBOX_UID = 65534
SCRATCH_DIR = "/tmp"
_PROBE_TIMEOUT_S = 20.0


@functools.cache
def child_source() -> str:
    """The bootstrap's text, passed with ``python -I -c`` (it is never imported)."""
    return Path(__file__).with_name("sandbox_child.py").read_text(encoding="utf-8")


def interpreter_paths() -> list[str]:
    """Directories the interpreter needs, outermost only: system dirs, base prefix, venv prefix.

    Both a prefix and its resolved path are listed when they differ (a venv's ``python``
    is a symlink into the base install)."""
    candidates = [p for p in _SYSTEM_DIRS if os.path.lexists(p)]
    for prefix in (sys.base_prefix, sys.prefix):
        candidates += [prefix, os.path.realpath(prefix)]
    kept: list[str] = []
    for path in sorted(set(candidates), key=len):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


# Host directories the unshare bootstrap may cover with its new root's tmpfs.
_ROOT_DIR_CANDIDATES = ("/tmp", "/mnt", "/run", "/var/tmp", "/srv", "/opt", "/media")


def _overlaps(a: str, b: str) -> bool:
    a, b = a.rstrip("/") or "/", b.rstrip("/") or "/"
    return a == b or a.startswith(b + "/") or b.startswith(a + "/") or "/" in (a, b)


def new_root_dir(ro_paths: list[str]) -> str:
    """A host directory for the new root's tmpfs that holds none of ``ro_paths`` (a venv in
    /tmp must stay reachable while it is bound into the new root)."""
    for candidate in _ROOT_DIR_CANDIDATES:
        if os.path.isdir(candidate) and not any(_overlaps(candidate, p) for p in ro_paths):
            return candidate
    raise OSError(f"no directory for the sandbox's root: each of {_ROOT_DIR_CANDIDATES} holds {ro_paths}")


@dataclass(frozen=True)
class ChildConfig:
    """What the bootstrap is told (its one JSON argument)."""

    cpu_s: int
    memory_bytes: int
    file_bytes: int
    max_processes: int
    scratch: str
    scratch_bytes: int
    allow_subprocesses: bool
    seccomp: bool
    build_root: bool = False
    drop_caps: bool = False
    ro_paths: list[str] = field(default_factory=list)
    root_dir: str = "/tmp"

    def as_json(self) -> str:
        return json.dumps(self.__dict__)


class SandboxBackend(ABC):
    """One way to start the bootstrap; ``isolates`` says whether the filesystem is cut off."""

    name: ClassVar[BackendName]
    isolates: ClassVar[bool] = True
    # Exit statuses above 128 mean "killed by signal N - 128" (bubblewrap's convention).
    signal_as_128_plus: ClassVar[bool] = False

    def scratch_dir(self, host_tmp: str) -> str:
        """Where the code's scratch dir is, as the code sees it."""
        return SCRATCH_DIR

    @abstractmethod
    def command(self, child: ChildConfig) -> list[str]:
        """The command line that runs the bootstrap with ``child``."""

    def child_config(self, child: ChildConfig) -> ChildConfig:
        """Backend-specific setup the bootstrap must do itself (default: none)."""
        return child


@dataclass(frozen=True)
class BwrapBackend(SandboxBackend):
    """bubblewrap: user, mount, pid, IPC, UTS, cgroup and network namespaces, set up by ``bwrap``."""

    executable: str
    name: ClassVar[BackendName] = "bwrap"
    signal_as_128_plus: ClassVar[bool] = True

    def command(self, child: ChildConfig) -> list[str]:
        argv = [self.executable, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        argv += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
        # Scratch first: an interpreter under /tmp on the host (a checkout there) is bound on
        # top of the scratch tmpfs instead of being hidden by it.
        argv += ["--size", str(child.scratch_bytes), "--tmpfs", SCRATCH_DIR]
        for path in interpreter_paths():
            if os.path.islink(path) and path in _SYSTEM_DIRS:
                argv += ["--symlink", os.readlink(path), path]
            else:
                argv += ["--ro-bind", path, path]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        # After every mount: the root tmpfs (and its mount points) read-only, scratch stays writable.
        argv += ["--remount-ro", "/", "--chdir", SCRATCH_DIR]
        return [*argv, sys.executable, "-I", "-c", child_source(), child.as_json()]


@dataclass(frozen=True)
class UnshareBackend(SandboxBackend):
    """util-linux ``unshare``: the same namespaces; the bootstrap builds the filesystem view itself."""

    executable: str
    name: ClassVar[BackendName] = "unshare"

    def child_config(self, child: ChildConfig) -> ChildConfig:
        ro_paths = interpreter_paths()
        return ChildConfig(
            **{
                **child.__dict__,
                "build_root": True,
                "drop_caps": True,
                "ro_paths": ro_paths,
                "root_dir": new_root_dir(ro_paths),
            }
        )

    def command(self, child: ChildConfig) -> list[str]:
        flags = ["--user", "--map-root-user", "--mount", "--pid", "--fork", "--kill-child"]
        flags += ["--net", "--ipc", "--uts", "--cgroup"]
        return [self.executable, *flags, "--", sys.executable, "-I", "-c", child_source(), child.as_json()]


@dataclass(frozen=True)
class UnisolatedBackend(SandboxBackend):
    """No namespaces: rlimits, seccomp and the audit hook only, in a host temp dir.

    Used only when the spec sets ``rollouts.allow_unisolated_python``: the code can read
    whatever the worker's user can read."""

    name: ClassVar[BackendName] = "none"
    isolates: ClassVar[bool] = False

    def scratch_dir(self, host_tmp: str) -> str:
        return host_tmp

    def command(self, child: ChildConfig) -> list[str]:
        return [sys.executable, "-I", "-c", child_source(), child.as_json()]


def sandbox_env(scratch: str) -> dict[str, str]:
    """The child's whole environment: nothing of the worker's (API keys live there)."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": scratch,
        "TMPDIR": scratch,
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        # One BLAS thread: per-thread buffers would eat the address-space budget.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def probe(backend: SandboxBackend, seccomp: bool = True) -> str | None:
    """Run ``print('ok')`` in ``backend``; None when it works, else why not (one line)."""
    with tempfile.TemporaryDirectory(prefix="agentcpt-probe-") as tmp:
        scratch = backend.scratch_dir(tmp)
        child = backend.child_config(
            ChildConfig(
                cpu_s=5, memory_bytes=1 << 30, file_bytes=1 << 20, max_processes=64, scratch=scratch,
                scratch_bytes=1 << 20, allow_subprocesses=False, seccomp=seccomp,
            )
        )  # fmt: skip
        try:
            done = subprocess.run(
                backend.command(child), input=b"print('ok')", capture_output=True, cwd=tmp,
                env=sandbox_env(scratch), timeout=_PROBE_TIMEOUT_S, check=False,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as err:
            return f"{backend.name}: {err}"
    if done.returncode == 0 and done.stdout == b"ok\n":
        return None
    lines = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
    return f"{backend.name}: exit {done.returncode}: {lines[-1] if lines else 'no output'}"


@dataclass(frozen=True)
class Detection:
    """The isolating backend this host supports (None: none does), and why the others failed."""

    backend: SandboxBackend | None
    problems: tuple[str, ...] = ()
    unisolated_seccomp: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend.name if self.backend else None, "problems": list(self.problems)}


def detect_backend(search_path: str | None = None) -> Detection:
    """Probe bubblewrap, then ``unshare``, on ``search_path`` (default ``$PATH``); not cached."""
    problems: list[str] = []
    candidates: list[SandboxBackend] = []
    for tool, cls in (("bwrap", BwrapBackend), ("unshare", UnshareBackend)):
        exe = shutil.which(tool, path=search_path)
        if exe is None:
            problems.append(f"{tool}: not installed")
        else:
            candidates.append(cls(exe))
    for backend in candidates:
        problem = probe(backend)
        if problem is None:
            return Detection(backend, tuple(problems))
        problems.append(problem)
    return Detection(None, tuple(problems), unisolated_seccomp=probe(UnisolatedBackend()) is None)


@functools.cache
def host_backend() -> Detection:
    """``detect_backend`` on this host, once per process."""
    return detect_backend()
