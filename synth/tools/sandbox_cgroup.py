"""Limits on the python tool's whole process tree: a cgroup per call, or summed accounting.

``RLIMIT_AS`` bounds one process; four children at 700 MB each pass it under a 1 GB limit.
So the tree gets a limit too, the strongest the host allows:

* **cgroup v1** (``memory`` and ``pids`` hierarchies writable) or **cgroup v2** (``memory``
  and ``pids`` delegated to our cgroup): a fresh child cgroup per call with
  ``memory.limit_in_bytes``/``memory.max`` (swap included) and ``pids.max``. The launcher
  joins it before it execs the sandbox, so every descendant is inside; the kernel's OOM
  killer acts inside the group only, and ``kill_all`` reaches every member.
* **summed accounting** otherwise: the parent sums the resident memory and counts the
  processes of the tree every ``POLL_S`` and kills the tree when either is over. It cannot
  stop a spike shorter than the poll interval; ``RLIMIT_AS`` per process still bounds that.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import signal
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

TreeLimitName = Literal["cgroup_v1", "cgroup_v2", "summed"]
POLL_S = 0.05
_PAGE = os.sysconf("SC_PAGE_SIZE")
_names = itertools.count()
# A shell that writes its own pid into each cgroup.procs file named before "--", then execs the rest.
_JOIN_SH = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
EXIT_JOIN_FAILED = 125


class TreeGroup(ABC):
    """The tree limits of one call."""

    name: TreeLimitName

    def wrap(self, argv: list[str]) -> list[str]:
        """The command line that starts ``argv`` inside the group."""
        return argv

    def over_limit(self, leader: int) -> Literal["memory", "processes"] | None:
        """Polled while the code runs (summed accounting); None = within limits."""
        return None

    def oom_killed(self) -> bool:
        """Whether the kernel killed a member for memory."""
        return False

    def kill_all(self, leader: int) -> None:
        """SIGKILL everything in the tree (the leader's process group included)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader, signal.SIGKILL)

    def close(self) -> None:  # noqa: B027 - nothing to remove for summed accounting
        """Remove what the group created."""


def _descendants(leader: int) -> list[int]:
    """The leader and every process below it (from each process's parent pid in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) follows the command name, which may hold spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [leader]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


@dataclass
class SummedGroup(TreeGroup):
    """Polled accounting: resident memory summed over the tree, and its process count."""

    memory_bytes: int
    max_processes: int
    name: TreeLimitName = "summed"

    def over_limit(self, leader: int) -> Literal["memory", "processes"] | None:
        pids = _descendants(leader)
        # The launcher and bubblewrap's pid-1 reaper are part of the tree but not of the code.
        if len(pids) > self.max_processes + 2:
            return "processes"
        if sum(_rss_bytes(p) for p in pids) > self.memory_bytes:
            return "memory"
        return None

    def kill_all(self, leader: int) -> None:
        pids = _descendants(leader)
        super().kill_all(leader)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class CgroupGroup(TreeGroup):
    """A cgroup (one directory per v1 controller, or one v2 directory) made for one call."""

    dirs: list[Path]
    version: Literal[1, 2]
    name: TreeLimitName = "cgroup_v1"
    _memory_dir: Path | None = field(default=None)

    def wrap(self, argv: list[str]) -> list[str]:
        return ["/bin/sh", "-c", _JOIN_SH, "sh", *(str(d / "cgroup.procs") for d in self.dirs), "--", *argv]

    def over_limit(self, leader: int) -> Literal["memory", "processes"] | None:
        # The kernel's OOM killer ends one member; the call ends the whole tree with it.
        return "memory" if self.oom_killed() else None

    def oom_killed(self) -> bool:
        if self._memory_dir is None:
            return False
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        with contextlib.suppress(OSError, ValueError):
            for line in (self._memory_dir / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        return False

    def _members(self) -> set[int]:
        pids: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        return pids

    def kill_all(self, leader: int) -> None:
        super().kill_all(leader)
        if self.version == 2 and (self.dirs[0] / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (self.dirs[0] / "cgroup.kill").write_text("1")
        # v1 has no cgroup.kill: kill members until none is left (pids.max bounds the race with fork).
        for _ in range(100):
            members = self._members()
            if not members:
                return
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)

    def close(self) -> None:
        for d in self.dirs:
            # A killed member leaves the group a moment after SIGKILL: retry briefly.
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fs type, super options) of every cgroup mount."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fstype, _, options = right.split(" ")[:3]
            if fstype in ("cgroup", "cgroup2"):
                found.append((left.split(" ")[4], fstype, set(options.split(","))))
    return found


def _own_cgroups() -> dict[str, str]:
    """Controller (or "" for v2) → our cgroup path, from /proc/self/cgroup."""
    own: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                own[c] = path
    return own


class CgroupFactory(ABC):
    """Makes one group per call; ``open`` raises OSError when the host refuses."""

    name: TreeLimitName

    @abstractmethod
    def open(self, memory_bytes: int, max_processes: int) -> TreeGroup: ...


@dataclass(frozen=True)
class CgroupV1Factory(CgroupFactory):
    memory_parent: Path
    pids_parent: Path
    name: TreeLimitName = "cgroup_v1"

    def open(self, memory_bytes: int, max_processes: int) -> TreeGroup:
        leaf = f"agentcpt-sandbox-{os.getpid()}-{next(_names)}-{uuid.uuid4().hex[:6]}"
        mem, pids = self.memory_parent / leaf, self.pids_parent / leaf
        group = CgroupGroup(dirs=[], version=1, name="cgroup_v1", _memory_dir=mem)
        try:
            mem.mkdir()
            group.dirs.append(mem)
            (mem / "memory.limit_in_bytes").write_text(str(memory_bytes))
            if (mem / "memory.memsw.limit_in_bytes").exists():  # swap counts too
                (mem / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            pids.mkdir()
            group.dirs.append(pids)
            (pids / "pids.max").write_text(str(max_processes + 2))  # + the launcher and bwrap's reaper
        except OSError:
            group.close()
            raise
        return group


@dataclass(frozen=True)
class CgroupV2Factory(CgroupFactory):
    parent: Path
    name: TreeLimitName = "cgroup_v2"

    def open(self, memory_bytes: int, max_processes: int) -> TreeGroup:
        leaf = self.parent / f"agentcpt-sandbox-{os.getpid()}-{next(_names)}-{uuid.uuid4().hex[:6]}"
        group = CgroupGroup(dirs=[], version=2, name="cgroup_v2", _memory_dir=leaf)
        try:
            leaf.mkdir()
            group.dirs.append(leaf)
            (leaf / "memory.max").write_text(str(memory_bytes))
            (leaf / "memory.swap.max").write_text("0")
            (leaf / "pids.max").write_text(str(max_processes + 2))
        except OSError:
            group.close()
            raise
        return group


def _v2_parent() -> Path | None:
    mount = next((m for m, fstype, _ in _mounts() if fstype == "cgroup2"), None)
    own = _own_cgroups().get("")
    if mount is None or own is None:
        return None
    parent = Path(mount + own)
    controls = parent / "cgroup.subtree_control"
    try:
        enabled = set(controls.read_text().split())
        if not {"memory", "pids"} <= enabled:
            # Fails (EBUSY) when our cgroup holds processes itself: v2's no-internal-process rule.
            controls.write_text("+memory +pids")
    except OSError:
        return None
    return parent


def _v1_parents() -> tuple[Path, Path] | None:
    own = _own_cgroups()
    found: dict[str, Path] = {}
    for mount, fstype, options in _mounts():
        for controller in ("memory", "pids"):
            if fstype == "cgroup" and controller in options and controller in own:
                found[controller] = Path(mount + own[controller])
    if set(found) != {"memory", "pids"}:
        return None
    return found["memory"], found["pids"]


def detect_cgroups() -> CgroupFactory | None:
    """A factory whose groups this process can really make (one is made and removed), or None."""
    candidates: list[CgroupFactory] = []
    if v1 := _v1_parents():
        candidates.append(CgroupV1Factory(*v1))
    if v2 := _v2_parent():
        candidates.append(CgroupV2Factory(v2))
    for factory in candidates:
        try:
            factory.open(64 << 20, 8).close()
        except OSError:
            continue
        return factory
    return None


@functools.cache
def host_cgroups() -> CgroupFactory | None:
    """``detect_cgroups`` once per process."""
    return detect_cgroups()


def open_tree_group(factory: CgroupFactory | None, memory_bytes: int, max_processes: int) -> TreeGroup:
    """A cgroup from ``factory`` when it can make one now, else summed accounting."""
    if factory is not None:
        with contextlib.suppress(OSError):
            return factory.open(memory_bytes, max_processes)
    return SummedGroup(memory_bytes=memory_bytes, max_processes=max_processes)
