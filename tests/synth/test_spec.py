"""The run spec: defaults keep specs short; every malformed spec names its field in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from synth.inputs import check_inputs
from synth.spec import SpecError, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]


def test_minimal_spec_gets_design_defaults() -> None:
    spec = parse_spec({"name": "x"})
    assert spec.llm.base_url == "embedded"
    assert spec.llm.max_concurrency == 64
    assert spec.execution.unit_size == 256
    assert spec.output_dir == "runs"
    assert spec.stages.enabled() == []


def test_empty_stage_mapping_enables_it_with_defaults() -> None:
    spec = parse_spec({"name": "x", "stages": {"planning": {}, "decisions": {"alternatives": 5}}})
    assert spec.stages.enabled() == ["planning", "decisions"]
    assert spec.stages.planning.judge is True
    assert spec.stages.decisions.alternatives == 5


def test_judge_llm_defaults_to_llm() -> None:
    spec = parse_spec({"name": "x", "llm": {"base_url": "http://h:1/v1", "model": "m"}})
    assert spec.effective_judge_llm.base_url == "http://h:1/v1"


MALFORMED = [
    ({"name": "x", "stages": {"planning": {"k": 3}}}, "stages.planning.k", "extra field not permitted"),
    ({"name": "x", "bogus": 1}, "bogus", "extra field not permitted"),
    ({"stages": {}}, "name", "field required"),
    ({"name": "x", "llm": {"max_concurrency": "lots"}}, "llm.max_concurrency", "integer"),
    ({"name": "x", "llm": {"max_concurrency": 0}}, "llm.max_concurrency", "greater than 0"),
    ({"name": "x", "llm": {"temperature": 7}}, "llm.temperature", "less than or equal to 2"),
    ({"name": "x", "stages": {"questions": {"styles": ["poetry"]}}}, "stages.questions.styles[0]", "factual"),
    ({"name": "x", "stages": {"questions": {"styles": []}}}, "stages.questions.styles", "at least 1"),
    ({"name": "x", "stages": {"corpus": {"dedup": "bloom"}}}, "stages.corpus.dedup", "minhash"),
    ({"name": "x", "execution": {"unit_size": -4}}, "execution.unit_size", "greater than 0"),
    ({"name": "x", "inputs": {"web": "pages/*.html"}}, "inputs.web", "list"),
    ({"name": "x", "judge_llm": {"timeout_s": "soon"}}, "judge_llm.timeout_s", "number"),
    ({"name": "x", "stages": {"rollouts": {"tools": ["browser"]}}}, "stages.rollouts.tools[0]", "search"),
    ({"name": "   "}, "name", "blank"),
]


@pytest.mark.parametrize("data,field,fragment", MALFORMED, ids=[m[1] for m in MALFORMED])
def test_malformed_spec_error_names_the_field(data: dict, field: str, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages:\n  planning: {judge: true\n")
    with pytest.raises(SpecError, match=r"bad.yaml is not valid YAML \(line \d+\)"):
        load_spec(bad)


def test_json_spec_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "s.json"
    f.write_text('{"name": "j", "stages": {"reasoning": {}}}')
    assert load_spec(f).stages.enabled() == ["reasoning"]


def test_missing_input_glob_is_named(tmp_path: Path) -> None:
    spec = parse_spec({"name": "x", "inputs": {"web": ["nothing/*.html"]}, "stages": {"documents": {}}})
    with pytest.raises(SpecError) as info:
        check_inputs(spec, base_dir=tmp_path)
    assert info.value.field == "inputs.web[0]"
    assert "nothing/*.html" in str(info.value)


def test_cli_exits_2_with_one_line_naming_the_field(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\nstages:\n  planning: {k: 2}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "agentcpt.cli", "run", str(spec)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "stages.planning.k: extra field not permitted" in lines[0]
    assert "Traceback" not in proc.stderr


def test_quickstart_spec_is_valid() -> None:
    spec = load_spec(REPO / "configs" / "quickstart.yaml")
    check_inputs(spec, base_dir=REPO / "configs")  # globs are relative to the spec's directory
    assert set(spec.stages.enabled()) == {
        "documents", "memory", "questions", "planning", "reasoning", "rollouts", "decisions", "corpus"
    }
