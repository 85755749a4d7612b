"""``agentcpt run --preview N`` (issue 17): every stage on N items, then an estimate of the
full run scaled by each stage's item counts."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pipelines.preview import estimate_full_run, print_estimate, print_samples
from pipelines.progress import LogDisplay
from pipelines.runner import run_session
from pipelines.units import read_plan
from synth.spec import parse_spec
from testing.toy_stages import toy_pipeline


def test_preview_runs_n_items_per_barrier_stage_and_scales_the_estimate(
    tmp_path: Path, ray_cluster: Any, fake_llm: Any
) -> None:
    spec = parse_spec(
        {
            "name": "preview",
            "llm": {"base_url": fake_llm.base_url, "model": "fake-model", "max_concurrency": 4},
            "stages": {"questions": {}, "planning": {}},
            "execution": {"unit_size": 2},
            "output_dir": "runs",
        }
    )
    buf = io.StringIO()
    result = run_session(
        spec,
        base_dir=tmp_path,
        stages=toy_pipeline(24, corpus=False, use_llm=True),
        display=LogDisplay(buf),
        out=buf,
        print_summary=False,
        preview_items=6,
    )
    assert result.outcome.state == "succeeded", result.outcome.error
    plan = read_plan(result.run_dir, "questions")
    assert plan is not None and (plan.items, plan.items_available) == (6, 24)
    assert fake_llm.stats().requests <= 6 + 1  # the previewed questions (and one preflight request)

    estimate = {s.stage: s for s in estimate_full_run(result.run_dir, ["questions", "planning"]).stages}
    assert estimate["questions"].factor == estimate["planning"].factor == 4.0
    assert estimate["planning"].preview_records == 6
    assert estimate["planning"].requests == 24  # 6 measured × 4
    assert estimate["planning"].prompt_tokens > 0

    out = io.StringIO()
    print_samples(result.run_dir, ["questions", "planning"], out)
    print_estimate(estimate_full_run(result.run_dir, ["questions", "planning"]), out)
    text = out.getvalue()
    assert "== questions: 6 records" in text and "== planning: 6 records" in text
    assert "estimate for the full run" in text and "planning" in text.split("estimate for the full run")[1]


def test_cli_preview_refuses_a_run_id() -> None:
    from agentcpt.cli import main

    assert main(["run", "configs/quickstart.yaml", "--preview", "3", "--run-id", "x"]) == 2
