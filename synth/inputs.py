"""A run's input files: expanding the spec's globs, and checking them before a run starts.

Relative globs resolve against a base directory: ``agentcpt run`` and ``agentcpt
validate`` pass the spec file's own directory, so a spec means the same files whatever
the working directory (``configs/quickstart.yaml`` names ``quickstart/pages/*.html``).
Absolute globs are used as they are.

Stages import ``resolve_globs`` from here rather than from ``synth.spec``, which imports
every stage's config: this module imports no stage.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import TYPE_CHECKING

from synth.errors import SpecError, raise_problems

if TYPE_CHECKING:
    from synth.spec import RunSpec


def resolve_globs(patterns: list[str], field: str, base_dir: Path | None = None) -> list[Path]:
    """Files matched by ``patterns`` (relative to ``base_dir``, else the cwd), in order, once each.

    A glob that matches no file is a ``SpecError`` naming ``field[i]``; when several do,
    one ``SpecErrors`` names them all.
    """
    out: list[Path] = []
    problems: list[SpecError] = []
    for i, pattern in enumerate(patterns):
        full = pattern if Path(pattern).is_absolute() or base_dir is None else str(base_dir / pattern)
        matches = sorted(Path(m) for m in glob.glob(full, recursive=True) if Path(m).is_file())
        if not matches:
            where = f" (relative to {base_dir})" if base_dir is not None and not Path(pattern).is_absolute() else ""
            problems.append(SpecError(f"{field}[{i}]", f"no file matches {pattern!r}{where}"))
        out.extend(matches)
    raise_problems(problems)
    # Keep order, drop repeats (two globs may match the same file).
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def check_inputs(spec: RunSpec, base_dir: Path | None = None) -> None:
    """Fail early, naming every glob of an enabled stage that matches no file (all at once)."""
    problems: list[SpecError] = []

    def check(patterns: list[str], field: str) -> None:
        try:
            resolve_globs(patterns, field, base_dir)
        except SpecError as err:
            problems.extend(getattr(err, "problems", [err]))

    enabled = spec.stages.enabled()
    if "documents" in enabled:
        documents = spec.stages.documents
        flywheel = documents is not None and documents.tool_responses is not None
        if not (spec.inputs.web or spec.inputs.triples or flywheel):
            problems.append(SpecError("inputs.web", "the documents stage needs at least one input glob"))
        check(spec.inputs.web, "inputs.web")
        check(spec.inputs.triples, "inputs.triples")
    if spec.inputs.trajectories:
        check(spec.inputs.trajectories, "inputs.trajectories")
    if spec.stages.corpus is not None and spec.stages.corpus.decontaminate:
        check(spec.stages.corpus.decontaminate, "stages.corpus.decontaminate")
    raise_problems(problems)
