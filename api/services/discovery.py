"""Finding runs the API did not start: ``agentcpt run`` / ``make synth`` runs under an output dir.

A run directory is recognised by ``synth.layout.RunLayout.is_run`` (a spec, a status or
committed units). Anything else under an output dir is
ignored without an error: files, symlinks (a link could point out of the data dir),
names that are not run ids, directories that cannot be read, a run whose ``status.json``
is missing or unreadable (a driver that is just starting, or a copy in progress: it is
listed as ``queued`` until its status appears).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from synth.layout import RUN_ID_RE, RunLayout
from synth.runstate import RunDir, RunState


@dataclass(frozen=True)
class FoundRun:
    """A run directory found on disk, with what its status file says (if it has one yet)."""

    run_id: str
    run_dir: Path
    name: str
    state: RunState
    created_at: datetime


def _mtime(path: Path) -> datetime:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
    except OSError:
        return datetime.now(UTC)


def read_found(run_dir: Path) -> FoundRun | None:
    """``run_dir`` as a ``FoundRun``, or None when it is not (or no longer) a run directory."""
    layout = RunLayout(run_dir)
    try:
        if not layout.is_run():
            return None
        status = RunDir(run_dir).read_status()
    except OSError:  # unreadable (permissions, a disk error): not listable, not an error
        return None
    if status is None:
        return FoundRun(layout.run_id, run_dir, layout.run_id, "queued", _mtime(run_dir))
    return FoundRun(layout.run_id, run_dir, status.name or layout.run_id, status.state, status.created_at)


def scan_output_dirs(roots: Iterable[Path], known: set[str]) -> list[FoundRun]:
    """Run directories directly under ``roots`` whose id is not in ``known``."""
    found: list[FoundRun] = []
    seen: set[str] = set()
    for root in roots:
        try:
            entries = list(os.scandir(root))
        except OSError:  # no such output dir (yet), or unreadable
            continue
        for entry in entries:
            name = entry.name
            if name in known or name in seen or not RUN_ID_RE.match(name):
                continue
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
            except OSError:
                continue
            run = read_found(Path(entry.path))
            if run is not None:
                found.append(run)
                seen.add(name)
    return found
