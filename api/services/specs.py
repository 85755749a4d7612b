"""Confining a submitted run spec to the data dir.

A spec from a client names files (input globs, decontamination sets) and a directory
(``output_dir``). Nothing a client sends may reach outside the data dir, so before a run
is created every such path is checked and rewritten to an absolute path under it:

* ``..`` components, ``~``, NUL bytes and URL-encoded forms of them are refused;
* relative paths are taken relative to the data dir; absolute ones must lie inside it;
* every file a glob matches is resolved (symlinks followed) and must lie inside it.

The driver then sees only absolute, checked paths and does not depend on its cwd.
Errors are ``SpecError``s naming the field (``inputs.web[0]``), answered with 422.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from synth.inputs import check_inputs
from synth.spec import RunSpec, SpecError

_GLOB_CHARS = re.compile(r"[*?\[]")


def _decoded_forms(text: str) -> list[str]:
    """The text and its URL-decoded forms (up to three rounds, for double encoding)."""
    forms = [text]
    for _ in range(3):
        nxt = unquote(forms[-1])
        if nxt == forms[-1]:
            break
        forms.append(nxt)
    return forms


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def confine_path(raw: str, field: str, root: Path) -> Path:
    """``raw`` (a path or glob) as an absolute path under ``root``; SpecError if it would leave it.

    ``root`` must be resolved. Only the literal prefix of a glob (up to its first wildcard)
    can be resolved here; the files it matches are checked by ``confine_matches``.
    """
    if not raw.strip():
        raise SpecError(field, "must not be empty")
    for form in _decoded_forms(raw):
        if "\x00" in form:
            raise SpecError(field, "must not contain NUL bytes")
        parts = PurePosixPath(form.replace("\\", "/")).parts
        if ".." in parts:
            raise SpecError(field, f"must not contain '..' (got {raw!r})")
        if form.startswith("~"):
            raise SpecError(field, f"must not start with '~' (got {raw!r})")
    if len(_decoded_forms(raw)) > 1:
        raise SpecError(field, f"URL-encoded paths are not accepted (got {raw!r})")
    path = Path(raw) if Path(raw).is_absolute() else root / raw
    literal: list[str] = []
    for part in path.parts:
        if _GLOB_CHARS.search(part):
            break
        literal.append(part)
    prefix = Path(*literal).resolve() if literal else root
    if not _inside(prefix, root):
        raise SpecError(field, f"must lie inside the data dir {root} (got {raw!r})")
    return path


def confine_matches(pattern: Path, field: str, root: Path) -> None:
    """Every file ``pattern`` matches, with symlinks resolved, must lie inside ``root``."""
    for match in glob.glob(str(pattern), recursive=True):
        real = Path(match).resolve()
        if not _inside(real, root):
            raise SpecError(field, f"matches {match!r}, which resolves outside the data dir")


def _confine_globs(patterns: list[str], field: str, root: Path) -> list[str]:
    out: list[str] = []
    for i, raw in enumerate(patterns):
        where = f"{field}[{i}]"
        path = confine_path(raw, where, root)
        confine_matches(path, where, root)
        out.append(str(path))
    return out


def confine_spec(spec: RunSpec, data_dir: Path) -> RunSpec:
    """A copy of ``spec`` with every path absolute and checked to lie under ``data_dir``.

    Also checks that each input glob matches at least one file (``synth.inputs.check_inputs``),
    so a run that could never start is refused with 422 rather than failing later.
    """
    root = data_dir.resolve()
    inputs = spec.inputs.model_copy(
        update={
            "web": _confine_globs(spec.inputs.web, "inputs.web", root),
            "trajectories": _confine_globs(spec.inputs.trajectories, "inputs.trajectories", root),
        }
    )
    stages = spec.stages
    if stages.corpus is not None and stages.corpus.decontaminate:
        corpus = stages.corpus.model_copy(
            update={
                "decontaminate": _confine_globs(
                    stages.corpus.decontaminate, "stages.corpus.decontaminate", root
                )
            }
        )
        stages = stages.model_copy(update={"corpus": corpus})
    output_dir = confine_path(spec.output_dir, "output_dir", root)
    if _GLOB_CHARS.search(spec.output_dir):
        raise SpecError("output_dir", "must be a plain directory path, not a glob")
    output_dir = output_dir.resolve()
    if not _inside(output_dir, root):
        raise SpecError("output_dir", f"must lie inside the data dir {root}")
    confined = spec.model_copy(update={"inputs": inputs, "stages": stages, "output_dir": str(output_dir)})
    check_inputs(confined)
    return confined
