"""Spec errors: all at once, each naming its field, with the field a typo probably meant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from synth.errors import SpecError, SpecErrors
from synth.spec import did_you_mean, parse_spec, truncation_advice

REPO = Path(__file__).resolve().parents[2]


def test_every_problem_is_reported_at_once_each_on_its_line() -> None:
    with pytest.raises(SpecErrors) as info:
        parse_spec(
            {
                "name": "x",
                "llm": {"temprature": 0.5, "max_tokens": 0},
                "stages": {"planning": {"judgee": True}},
                "execution": {"unit_size": "many"},
            }
        )
    lines = str(info.value).splitlines()
    assert lines[0] == "4 problems in the spec:"
    assert sorted(line.strip() for line in lines[1:]) == [
        "execution.unit_size: Input should be a valid integer, unable to parse string as an integer (got 'many')",
        "llm.max_tokens: Input should be greater than 0 (got 0)",
        "llm.temprature: extra field not permitted (did you mean 'temperature'?)",
        "stages.planning.judgee: extra field not permitted (did you mean 'judge'?)",
    ]
    # The REST API names the first field; the CLI prints them all.
    assert isinstance(info.value, SpecError) and info.value.field == info.value.problems[0].field


def test_a_single_problem_stays_one_line() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "x", "stages": {"planning": {"judgee": True}}})
    assert not isinstance(info.value, SpecErrors)
    assert str(info.value) == "stages.planning.judgee: extra field not permitted (did you mean 'judge'?)"


def test_did_you_mean_is_offered_only_when_a_field_is_close() -> None:
    assert did_you_mean(("judge",)) == "judge_llm"
    assert did_you_mean(("llm", "max_token")) == "max_tokens"
    assert did_you_mean(("llm", "zebra")) is None


@pytest.mark.parametrize("block", ["llm", "judge_llm"])
def test_a_served_endpoint_needs_a_model_named_in_the_spec(block: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "x", block: {"base_url": "https://api.openai.com/v1"}})
    assert info.value.field == f"{block}.model"
    assert "required for base_url 'https://api.openai.com/v1'" in str(info.value)
    parse_spec({"name": "x", block: {"base_url": "embedded"}})  # the embedded endpoint knows its model
    parse_spec({"name": "x", block: {"base_url": "https://api.openai.com/v1", "model": "gpt-4.1-mini"}})


def test_a_missing_model_is_reported_with_the_other_problems() -> None:
    with pytest.raises(SpecErrors) as info:
        parse_spec({"name": "x", "llm": {"base_url": "http://h/v1", "temperature": 9}})
    assert [p.field for p in info.value.problems] == ["llm.temperature", "llm.model"]


def test_dialect_fields_are_validated_naming_the_field() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "x", "llm": {"max_tokens_param": "max_new_tokens"}})
    assert info.value.field == "llm.max_tokens_param"
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "x", "llm": {"extra_body": {"temperature": 0}}})
    assert info.value.field == "llm.extra_body" and "'temperature' is set by the 'temperature' setting" in str(info.value)


def test_the_cli_prints_all_problems_and_exits_2(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\nllm: {temprature: 1}\nstages:\n  planning: {judgee: true}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "agentcpt.cli", "validate", str(spec)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        "agentcpt: error: 2 problems in the spec:",
        "  llm.temprature: extra field not permitted (did you mean 'temperature'?)",
        "  stages.planning.judgee: extra field not permitted (did you mean 'judge'?)",
    ]


def test_truncation_advice_names_the_cap_that_cut_the_replies() -> None:
    spec = parse_spec(
        {
            "name": "x",
            "llm": {"max_tokens": 96},
            "stages": {"memory": {}, "planning": {"max_tokens": 64, "judge_max_tokens": 48}, "rollouts": {"max_turn_tokens": 200}},
        }
    )
    cut = "reply cut by the {}-token cap (finish_reason: length)"
    assert truncation_advice(spec, "memory", [cut.format(96)]).startswith("set stages.memory.max_tokens (now llm.max_tokens = 96)")
    assert truncation_advice(spec, "planning", [cut.format(48)]) == "raise stages.planning.judge_max_tokens (now 48)"
    assert truncation_advice(spec, "planning", [cut.format(64), cut.format(48)]) == (
        "raise stages.planning.max_tokens (now 64) or raise stages.planning.judge_max_tokens (now 48)"
    )
    assert truncation_advice(spec, "rollouts", [cut.format(200)]) == "raise stages.rollouts.max_turn_tokens (now 200)"


def test_settings_held_down_by_one_endpoint_cap_get_one_piece_of_advice() -> None:
    spec = parse_spec(
        {"name": "x", "llm": {"max_tokens": 96}, "stages": {"questions": {"max_tokens": 160, "judge_max_tokens": 128}}}
    )
    cut = "reply cut by the 96-token cap (finish_reason: length)"
    assert truncation_advice(spec, "questions", [cut]) == (
        "raise llm.max_tokens (now 96; it caps stages.questions.max_tokens = 160 and "
        "stages.questions.judge_max_tokens = 128)"
    )
