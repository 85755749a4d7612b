"""A run's input files: expanding the spec's globs, and checking them before a run starts.

Relative globs resolve against a base directory: ``agentcpt run`` and ``agentcpt
validate`` pass the spec file's own directory, so a spec means the same files whatever
the working directory (``configs/quickstart.yaml`` names ``quickstart/pages/*.html``).
Absolute globs are used as they are.

Stages import ``resolve_globs`` from here rather than from ``synth.spec``, which imports
every stage's config: this module imports no stage.

Remote inputs: a glob with a URL scheme (``s3://bucket/pages/*.html``, ``gs://…``,
``hf://datasets/<org>/<name>/data/*.jsonl``) is expanded through fsspec and matches
``upath.UPath`` objects, which the readers open like local paths (``open_input`` for a
path kept as a string in a work item). Credentials come from the usual places of each
filesystem (``AWS_*`` variables or ``~/.aws`` for S3 — ``AWS_ENDPOINT_URL`` for an
S3-compatible server —, ``HF_TOKEN`` for the Hugging Face Hub), on the driver and on every
worker. ``s3://`` needs ``s3fs`` (a dependency); ``gs://`` needs ``gcsfs``.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Union

from synth.errors import SpecError, raise_problems

if TYPE_CHECKING:
    from upath import UPath

    from synth.spec import RunSpec

InputPath = Union[Path, "UPath"]  # noqa: UP007 (a string forward reference: upath loads on use)
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str | Any) -> bool:
    """Whether a pattern or path names a remote filesystem (a URL scheme other than file://)."""
    text = str(path)
    return bool(_URL_RE.match(text)) and not text.startswith("file://")


def open_input(path: str | InputPath) -> IO[bytes]:
    """Open an input file for binary reading, local or remote (seekable either way)."""
    if is_remote(path):
        import io

        import fsspec

        # Wrapped so it has the io API in full (fsspec files lack readline(size)).
        return io.BufferedReader(fsspec.open(str(path), "rb").open())
    return open(path, "rb")  # noqa: SIM115 (the caller closes it)


def _remote_matches(pattern: str) -> list[InputPath]:
    """Files matched by a remote glob, sorted; a filesystem error is a SpecError message."""
    import fsspec
    from upath import UPath

    fs, _ = fsspec.core.url_to_fs(pattern)
    found = fs.glob(pattern, detail=True)
    return [UPath(fs.unstrip_protocol(p)) for p in sorted(found) if found[p].get("type") == "file"]


def resolve_globs(patterns: list[str], field: str, base_dir: Path | None = None) -> list[InputPath]:
    """Files matched by ``patterns`` (relative to ``base_dir``, else the cwd), in order, once each.

    A glob that matches no file is a ``SpecError`` naming ``field[i]``; when several do,
    one ``SpecErrors`` names them all. Remote globs (a URL) are expanded with fsspec.
    """
    out: list[InputPath] = []
    problems: list[SpecError] = []
    for i, pattern in enumerate(patterns):
        if is_remote(pattern):
            try:
                remote = _remote_matches(pattern)
            except (ImportError, ValueError, OSError) as err:
                problems.append(SpecError(f"{field}[{i}]", f"cannot list {pattern!r}: {err}"))
                continue
            if not remote:
                problems.append(SpecError(f"{field}[{i}]", f"no file matches {pattern!r}"))
            out.extend(remote)
            continue
        full = pattern if Path(pattern).is_absolute() or base_dir is None else str(base_dir / pattern)
        matches = sorted(Path(m) for m in glob.glob(full, recursive=True) if Path(m).is_file())
        if not matches:
            where = f" (relative to {base_dir})" if base_dir is not None and not Path(pattern).is_absolute() else ""
            problems.append(SpecError(f"{field}[{i}]", f"no file matches {pattern!r}{where}"))
        out.extend(matches)
    raise_problems(problems)
    # Keep order, drop repeats (two globs may match the same file).
    seen: set[str] = set()
    return [p for p in out if not (str(p) in seen or seen.add(str(p)))]


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
