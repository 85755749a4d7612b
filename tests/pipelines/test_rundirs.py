"""Run ids, the resume rule for changed specs, and the guard against two drivers on one run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.rundirs import output_changing_difference, prepare_run_dir
from synth.runstate import RunDir
from synth.spec import SpecError, parse_spec


def spec(**overrides: object) -> object:
    data: dict[str, object] = {"name": "demo", "stages": {"questions": {}, "planning": {}}}
    data.update(overrides)
    return parse_spec(data)


def test_changes_that_only_say_how_to_run_are_allowed_on_resume() -> None:
    a = spec(llm={"base_url": "http://127.0.0.1:8000/v1", "model": "m"})
    b = spec(
        name="renamed",
        execution={"ray_address": "10.0.0.1:6379", "max_units_in_flight": 9},
        llm={"base_url": "http://127.0.0.1:9/v1", "model": "m", "max_concurrency": 3, "timeout_s": 5},
    )
    assert output_changing_difference(a, b) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"execution": {"seed": 1}}, "execution.seed"),
        ({"llm": {"temperature": 0.1}}, "llm.temperature"),
        ({"stages": {"questions": {"per_cluster": 2}, "planning": {}}}, "stages.questions.per_cluster"),
        ({"stages": {"questions": {}}}, "stages.planning"),
        ({"judge_llm": {"model": "other"}}, "judge_llm.model"),
    ],
)
def test_output_changing_differences_are_named(overrides: dict[str, object], field: str) -> None:
    assert output_changing_difference(spec(), spec(**overrides)) == field  # type: ignore[arg-type]


def test_judge_llm_null_equals_the_llm_block_it_stands_for() -> None:
    a = spec()
    b = spec(judge_llm=a.llm.model_dump())  # type: ignore[attr-defined]
    assert output_changing_difference(a, b) is None  # type: ignore[arg-type]


def test_prepare_run_dir_saves_the_spec_then_refuses_an_incompatible_one(tmp_path: Path) -> None:
    run_dir = tmp_path / "r1"
    assert prepare_run_dir(run_dir, spec()) is False  # type: ignore[arg-type]
    assert (run_dir / "spec.yaml").exists()
    assert prepare_run_dir(run_dir, spec(execution={"max_units_in_flight": 2})) is True  # type: ignore[arg-type]
    with pytest.raises(SpecError) as err:
        prepare_run_dir(run_dir, spec(execution={"unit_size": 7}))  # type: ignore[arg-type]
    assert err.value.field == "execution.unit_size"


def test_a_run_with_a_live_driver_cannot_be_started_twice(tmp_path: Path) -> None:
    run_dir = tmp_path / "r1"
    prepare_run_dir(run_dir, spec())  # type: ignore[arg-type]
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        rd = RunDir(run_dir)
        status = rd.mark("running")
        status.pid = driver.pid
        rd.write_status(status)
        with pytest.raises(SpecError, match="already running"):
            prepare_run_dir(run_dir, spec())  # type: ignore[arg-type]
    finally:
        driver.kill()
        driver.wait()
    # Its driver is gone (kill -9): the run can be resumed.
    assert prepare_run_dir(run_dir, spec()) is True  # type: ignore[arg-type]
    assert os.getpid() != driver.pid


# ---------------------------------------------------------------------------
# Prompt fingerprints (issue 14): a changed prompt never mixes silently into a resumed run
# ---------------------------------------------------------------------------


def _stages_with_prompt(text: str) -> dict[str, object]:
    from testing.ninth_stage import ReviewStage

    class PromptedReview(ReviewStage):
        pass

    stage = PromptedReview()
    stage.__dict__["prompt_fingerprint"] = text  # what prompt_fingerprint() hashes the module into
    return {"reviews": stage}


def test_resume_with_a_changed_prompt_is_refused_naming_the_stage(tmp_path: Path) -> None:
    from pipelines.rundirs import check_prompt_fingerprints
    from synth.layout import RunLayout

    layout = RunLayout(tmp_path / "r1")
    layout.root.mkdir()
    assert check_prompt_fingerprints(layout, _stages_with_prompt("aaaa")) == []
    assert check_prompt_fingerprints(layout, _stages_with_prompt("aaaa")) == []
    with pytest.raises(SpecError, match=r"stages\.reviews: the reviews prompts changed") as err:
        check_prompt_fingerprints(layout, _stages_with_prompt("bbbb"))
    assert "--allow-prompt-change" in str(err.value)
    assert check_prompt_fingerprints(layout, _stages_with_prompt("bbbb"), allow_change=True) == ["reviews"]
    assert check_prompt_fingerprints(layout, _stages_with_prompt("bbbb")) == []


def test_prompt_fingerprint_changes_with_prompt_text_and_not_otherwise(tmp_path: Path) -> None:
    import importlib
    import sys

    from synth.stage import prompt_fingerprint

    module = tmp_path / "prompted_mod.py"
    module.write_text('SYSTEM = "You plan."\nEXAMPLES = (("q", "a"),)\nMAX_CHARS = 10\n')
    sys.path.insert(0, str(tmp_path))
    try:
        before = prompt_fingerprint(["prompted_mod"])
        module.write_text('SYSTEM = "You plan."\nEXAMPLES = (("q", "a"),)\nMAX_CHARS = 99\n')
        importlib.reload(sys.modules["prompted_mod"])
        assert prompt_fingerprint(["prompted_mod"]) == before  # a number is not prompt text
        module.write_text('SYSTEM = "You plan."\nEXAMPLES = (("q", "b"),)\nMAX_CHARS = 99\n')
        importlib.reload(sys.modules["prompted_mod"])
        assert prompt_fingerprint(["prompted_mod"]) != before  # a few-shot example is
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("prompted_mod", None)
