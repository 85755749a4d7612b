"""Input globs: resolved against the spec file's directory, every missing one named at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from synth.errors import SpecError, SpecErrors
from synth.inputs import check_inputs, resolve_globs
from synth.spec import load_spec, parse_spec, spec_dir

REPO = Path(__file__).resolve().parents[2]


def test_relative_globs_resolve_against_the_given_directory_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "specs" / "pages").mkdir(parents=True)
    (tmp_path / "specs" / "pages" / "a.html").write_text("<p>a</p>")
    (tmp_path / "specs" / "s.yaml").write_text('name: x\ninputs: {web: ["pages/*.html"]}\nstages: {documents: {}}\n')
    monkeypatch.chdir(tmp_path)  # elsewhere: the spec's directory decides, not this one
    spec_path = "specs/s.yaml"
    spec = load_spec(spec_path)
    assert spec_dir(spec_path) == (tmp_path / "specs").resolve()
    check_inputs(spec, spec_dir(spec_path))
    assert resolve_globs(spec.inputs.web, "inputs.web", spec_dir(spec_path)) == [
        (tmp_path / "specs").resolve() / "pages" / "a.html"
    ]
    with pytest.raises(SpecError, match="no file matches 'pages/\\*.html'"):
        check_inputs(spec, Path(os.getcwd()))


def test_every_glob_that_matches_nothing_is_named_at_once(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text("{}\n")
    spec = parse_spec(
        {
            "name": "x",
            "inputs": {"web": ["a/*.html", "b/*.html"], "trajectories": ["t.jsonl", "missing/*.jsonl"]},
            "stages": {"documents": {}, "corpus": {"decontaminate": ["bench/*.jsonl"]}},
        }
    )
    with pytest.raises(SpecErrors) as info:
        check_inputs(spec, tmp_path)
    assert [p.field for p in info.value.problems] == [
        "inputs.web[0]", "inputs.web[1]", "inputs.trajectories[1]", "stages.corpus.decontaminate[0]"
    ]
    assert str(info.value).startswith("4 problems in the spec:\n  inputs.web[0]: no file matches 'a/*.html'")


def test_the_quickstart_spec_finds_its_pages_from_any_working_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    spec_path = REPO / "configs" / "quickstart.yaml"
    spec = load_spec(spec_path)
    check_inputs(spec, spec_dir(spec_path))
    assert len(resolve_globs(spec.inputs.web, "inputs.web", spec_dir(spec_path))) == 27


def test_stages_read_globs_from_synth_inputs_not_from_the_spec_module() -> None:
    for stage in ("documents", "rollouts", "corpus"):
        source = (REPO / "synth" / "stages" / f"{stage}.py").read_text()
        assert "from synth.inputs import resolve_globs" in source
        assert "from synth.spec import" not in source
