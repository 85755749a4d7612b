"""``agentcpt verify RUN_ID``: check every committed file of a run against its manifest sha256.

Readers verify the files they read (``synth.shards.ShardStore.verified_path``); this checks a
whole run at once, hashing every file afresh (no per-process cache), and prints one line per
problem: a file whose bytes changed, a file that is gone, or a manifest that cannot be read.
Exit 0 when every file matches, 1 when any does not (the run's data is damaged), 2 when the
run does not exist.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ConfigDict, Field

from synth.shards import CorruptShardError, ShardStore


class VerifyReport(BaseModel):
    """What ``verify_run`` found."""

    model_config = ConfigDict(extra="forbid")
    run_dir: str
    files: int = Field(description="committed files checked")
    bytes: int = Field(description="bytes hashed")
    problems: list[str] = Field(default_factory=list, description="one message per bad file, naming it")

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_run(run_dir: Path) -> VerifyReport:
    """Hash every file the run's manifest commits and compare it with the recorded sha256."""
    store = ShardStore(run_dir)
    try:
        rows = store.manifest_rows()
    except CorruptShardError as err:
        return VerifyReport(run_dir=str(run_dir), files=0, bytes=0, problems=[str(err)])
    problems: list[str] = []
    for row in rows:
        try:
            store.verify_row(row)
        except CorruptShardError as err:
            problems.append(str(err))
    return VerifyReport(
        run_dir=str(run_dir), files=len(rows), bytes=sum(r.bytes for r in rows), problems=problems
    )


def verify_command(run_id: str, output_dir: str = "runs", out: IO[str] | None = None) -> int:
    """Print what ``verify_run`` found; 0 when the run is intact, 1 otherwise."""
    from synth.catalog import run_dir_for  # the one place that resolves a run id to its directory today

    out = out or sys.stdout
    report = verify_run(run_dir_for(run_id, output_dir))
    for problem in report.problems:
        print(problem, file=out)
    verdict = "ok" if report.ok else f"{len(report.problems)} corrupt"
    print(f"verified {report.files} files ({report.bytes} bytes) of run {run_id}: {verdict}", file=out)
    return 0 if report.ok else 1
