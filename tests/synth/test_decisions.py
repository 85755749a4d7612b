"""HAS decisions: N+1 shuffled options per step, the original chosen, the real response, the outcome."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from synth.ids import content_hash
from synth.llm.base import LLMTimeout
from synth.records import (
    DecisionRecord,
    Failure,
    RolloutRecord,
    ToolAction,
    TrajectoryStep,
    records_to_table,
    table_to_records,
)
from synth.render.traces import render_step
from synth.spec import parse_spec
from synth.stage import StageContext
from synth.stages.decisions import STAGE as DECISIONS
from synth.stages.decisions import Candidates
from synth.stages.rollouts import STAGE as ROLLOUTS
from testing.scripted_llm import ScriptedLLM

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
WEBDANCER = SHARED_DATA / "trajectories" / "webdancer_sample_traj.jsonl"


def distinct_alternatives(n: int) -> Any:
    """A model that proposes n valid, distinct search calls, different for every prompt."""

    def respond(messages: list[dict[str, Any]], schema: Any) -> Any:
        tag = content_hash(messages[-1]["content"], 8)
        return {
            "candidates": [
                {
                    "thought": f"Maybe angle {i}.",
                    "tool": "search",
                    "arguments": {"query": [f"angle {i} {tag}"]},
                }
                for i in range(n)
            ]
        }

    return respond


def make_ctx(tmp_path: Path, llm: Any, seed: int = 0, **decisions: Any) -> StageContext:
    spec = parse_spec({"name": "t", "stages": {"decisions": decisions}, "execution": {"seed": seed}})
    return StageContext(
        run_id="t",
        spec=spec,
        llm=ScriptedLLM(llm, model_name="alt-model"),
        judge_llm=ScriptedLLM(lambda m, s: {"correct": False}),
        run_dir=tmp_path,
        seed=seed,
        base_dir=tmp_path,
    )


def decide(ctx: StageContext, rollouts: list[RolloutRecord]) -> tuple[list[DecisionRecord], list[Failure]]:
    out = asyncio.run(DECISIONS.process(rollouts, ctx))
    return out.records, out.failures  # type: ignore[return-value]


def search(q: str) -> ToolAction:
    return ToolAction(tool="search", arguments={"query": [q]})


def rollout(
    steps: list[TrajectoryStep], final_answer: str | None = "1987", outcome: str = "correct", rid: str = "r1"
) -> RolloutRecord:
    return RolloutRecord(
        id=rid,
        run_id="t",
        question="When did the Kestrel Bay Bridge open?",
        gold_answer="1987",
        steps=steps,
        final_answer=final_answer,
        outcome=outcome,  # type: ignore[arg-type]
        source="rollout",
    )


THREE_STEPS = [
    TrajectoryStep(
        thought="Search first.",
        action=search("Kestrel Bay Bridge"),
        observation="OBS-ONE https://e.org/bridge",
    ),
    TrajectoryStep(
        thought="Read the page.",
        action=ToolAction(tool="visit", arguments={"url": "https://e.org/bridge", "goal": "opening year"}),
        observation="OBS-TWO opened in 1987",
    ),
    TrajectoryStep(thought="It says 1987."),
]


def check_record(record: DecisionRecord, source: RolloutRecord, n: int) -> None:
    acting = [k for k, s in enumerate(source.steps) if s.action is not None or k == len(source.steps) - 1]
    assert len(record.steps) == len(acting)
    for step, k in zip(record.steps, acting, strict=True):
        assert len(step.options) == n + 1
        assert len(set(step.options)) == n + 1
        assert step.options[step.chosen] == render_step(source.steps, k, source.final_answer)
        assert step.observation == source.steps[k].observation
        assert f"I will choose option {step.chosen + 1}." in record.text


# ---------------------------------------------------------------------------
# The acceptance check on the 200 WebDancer trajectories
# ---------------------------------------------------------------------------


@pytest.mark.skipif(
    not WEBDANCER.exists(), reason=f"shared data absent: {WEBDANCER} (../shared/data next to the repo)"
)
def test_every_webdancer_step_gets_n_plus_1_options_with_the_original_at_chosen(tmp_path: Path) -> None:
    spec = parse_spec({"name": "t", "inputs": {"trajectories": [str(WEBDANCER)]}, "stages": {"rollouts": {}}})
    import_ctx = StageContext(
        run_id="t",
        spec=spec,
        llm=ScriptedLLM(lambda m, s: "unused"),
        judge_llm=ScriptedLLM(lambda m, s: {"correct": "Derby" in m[-1]["content"]}),
        run_dir=tmp_path,
        base_dir=tmp_path,
    )
    out = asyncio.run(ROLLOUTS.process(ROLLOUTS.prepare(import_ctx).items, import_ctx))
    rollouts: list[RolloutRecord] = out.records  # type: ignore[assignment]
    assert len(rollouts) == 200

    records, failures = decide(make_ctx(tmp_path, distinct_alternatives(3), alternatives=3), rollouts)
    assert failures == []
    assert len(records) == 200
    by_id = {r.id: r for r in rollouts}
    for record in records:
        source = by_id[record.trajectory_id]
        assert record.parent_ids == [source.id]
        check_record(record, source, n=3)
        assert record.filled_options == 0
        assert record.outcome == source.outcome
        assert record.text.endswith(f"My decision is {source.outcome.capitalize()}.")
        assert record.n_tokens and record.n_tokens > 0
    assert sum(len(r.steps) for r in records) == 422  # 222 tool calls + 200 answers


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


def test_prompt_for_step_k_shows_only_what_came_before_it(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, distinct_alternatives(2), alternatives=2)
    (record,), _ = decide(ctx, [rollout(THREE_STEPS)])
    check_record(record, rollout(THREE_STEPS), n=2)
    prompts = sorted((c["messages"][-1]["content"] for c in ctx.llm.calls), key=len)  # type: ignore[attr-defined]
    assert "(none yet)" in prompts[0]
    assert "OBS-ONE" in prompts[1] and "OBS-TWO" not in prompts[1]
    assert "OBS-ONE" in prompts[2] and "OBS-TWO" in prompts[2]
    assert all("It says 1987" not in p for p in prompts)


def test_shuffle_is_deterministic_per_seed_and_varies_with_it(tmp_path: Path) -> None:
    steps = [TrajectoryStep(thought=f"t{i}", action=search(f"q{i}"), observation=f"o{i}") for i in range(10)]
    chosen_by_seed = []
    for seed in (0, 0, 1):
        (record,), _ = decide(
            make_ctx(tmp_path, distinct_alternatives(3), seed=seed, alternatives=3), [rollout(steps)]
        )
        chosen_by_seed.append([s.chosen for s in record.steps])
    assert chosen_by_seed[0] == chosen_by_seed[1]
    assert chosen_by_seed[0] != chosen_by_seed[2]
    assert len(set(chosen_by_seed[0])) > 1  # the original is not always in the same place


def test_invalid_model_output_is_filled_from_other_steps_and_templates(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, lambda m, s: "I cannot produce JSON", alternatives=2)
    (record,), failures = decide(ctx, [rollout(THREE_STEPS)])
    assert failures == []
    check_record(record, rollout(THREE_STEPS), n=2)
    assert record.filled_options == 6  # every alternative of all three steps
    first = record.steps[0]
    others = [o for i, o in enumerate(first.options) if i != first.chosen]
    # Nearest other step's call first (the visit), then the template: search the question itself.
    assert any('"name": "visit"' in o for o in others)
    assert any("When did the Kestrel Bay Bridge open?" in o for o in others)


def test_a_step_that_cannot_get_n_alternatives_fails_the_trajectory(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, lambda m, s: "no JSON", alternatives=3, tools=["python"])
    records, (failure,) = decide(ctx, [rollout(THREE_STEPS)])
    assert records == []
    assert failure.error_kind == "insufficient_alternatives" and failure.input_ids == ["r1"]
    assert "0 distinct valid alternatives, 3 needed" in failure.message


def test_duplicates_of_the_original_and_invalid_candidates_are_replaced(tmp_path: Path) -> None:
    def respond(messages: list[dict[str, Any]], schema: Any) -> Any:
        return {
            "candidates": [
                {
                    "thought": "Same call, other words.",
                    "tool": "search",
                    "arguments": {"query": "Kestrel Bay Bridge"},
                },
                {"thought": "New idea.", "tool": "search", "arguments": {"query": ["bridge history"]}},
                {"thought": "New idea again.", "tool": "search", "arguments": {"query": ["bridge history"]}},
                {"thought": "Bad tool.", "tool": "browse", "arguments": {}},
                {"thought": "Nothing at all."},
            ]
        }

    ctx = make_ctx(tmp_path, respond, alternatives=2)
    (record,), _ = decide(ctx, [rollout(THREE_STEPS[:1] + THREE_STEPS[2:])])
    first = record.steps[0]
    calls = [json.loads(m) for o in first.options for m in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", o)]
    assert sorted(json.dumps(c["arguments"], sort_keys=True) for c in calls) == sorted(
        json.dumps(a, sort_keys=True)
        for a in (
            {"query": ["Kestrel Bay Bridge"]},
            {"query": ["bridge history"]},
            {"query": ["When did the Kestrel Bay Bridge open?"]},
        )
    )
    # Step 1 needed the template; at the answer step the model's two searches were both new.
    assert record.filled_options == 1


def test_alternatives_are_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"

    def respond(messages: list[dict[str, Any]], schema: Any) -> Any:
        code = f"open({str(marker)!r}, 'w').write('x')"
        return {
            "candidates": [
                {"thought": "Run it.", "tool": "python", "arguments": {"code": code}},
                {"thought": "Or answer.", "answer": "1990"},
            ]
        }

    (record,), _ = decide(make_ctx(tmp_path, respond, alternatives=2), [rollout(THREE_STEPS)])
    assert any('"name": "python"' in o for o in record.steps[0].options)
    assert not marker.exists()


def test_reply_spelling_variants_are_accepted() -> None:
    parsed = Candidates.model_validate(
        {
            "alternatives": [
                {"reasoning": "r", "tool_call": {"name": "search", "arguments": {"query": ["x"]}}},
                {"think": "t", "answer": "y"},
            ]
        }
    )
    assert parsed.candidates[0].tool == "search" and parsed.candidates[0].thought == "r"
    assert parsed.candidates[1].answer == "y"


# ---------------------------------------------------------------------------
# Outcome, failures, records
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "ending"),
    [
        ("correct", "My decision is Correct."),
        ("incorrect", "My decision is Incorrect."),
        (
            "unknown",
            "Whether my decisions were correct is unknown: this trajectory's outcome was not judged.",
        ),
    ],
)
def test_text_ends_with_the_judged_outcome_or_says_it_is_unknown(
    tmp_path: Path, outcome: str, ending: str
) -> None:
    (record,), _ = decide(
        make_ctx(tmp_path, distinct_alternatives(2), alternatives=2), [rollout(THREE_STEPS, outcome=outcome)]
    )
    assert record.outcome == outcome and record.text.endswith(ending)
    if outcome == "unknown":
        assert "My decision is" not in record.text


def test_text_lists_options_then_the_choice_then_the_real_response(tmp_path: Path) -> None:
    (record,), _ = decide(
        make_ctx(tmp_path, distinct_alternatives(2), alternatives=2), [rollout(THREE_STEPS)]
    )
    text = record.text
    assert text.startswith("Question: When did the Kestrel Bay Bridge open?")
    marks = [
        text.index(s)
        for s in (
            "Step 1.",
            "Option 3:",
            "I will choose option",
            "OBS-ONE",
            "Step 2.",
            "OBS-TWO",
            "Step 3.",
            "<answer>1987</answer>",
        )
    ]
    assert marks == sorted(marks)


def test_llm_transport_error_fails_the_trajectory_with_its_kind(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, lambda m, s: LLMTimeout("slow", raw_output="half"), alternatives=2)
    records, (failure,) = decide(ctx, [rollout(THREE_STEPS)])
    assert records == [] and (failure.error_kind, failure.raw_output) == ("timeout", "half")


def test_a_trajectory_without_an_acting_step_is_a_failure(tmp_path: Path) -> None:
    cut_off = rollout([TrajectoryStep(thought="Hmm.")], final_answer=None, outcome="unknown")
    records, (failure,) = decide(make_ctx(tmp_path, distinct_alternatives(2)), [cut_off])
    assert records == [] and failure.error_kind == "no_decision_steps"


def test_every_rollout_of_a_unit_ends_as_a_record_or_a_failure(tmp_path: Path) -> None:
    good = [rollout(THREE_STEPS, rid=f"r{i}") for i in range(4)]
    bad = rollout([TrajectoryStep(thought="Hmm.")], final_answer=None, rid="r-bad")
    records, failures = decide(make_ctx(tmp_path, distinct_alternatives(3)), [*good, bad])
    assert sorted([r.trajectory_id for r in records] + [f.input_ids[0] for f in failures]) == sorted(
        ["r0", "r1", "r2", "r3", "r-bad"]
    )
    assert len({r.id for r in records}) == 4


def test_decision_records_round_trip_through_arrow(tmp_path: Path) -> None:
    records, _ = decide(make_ctx(tmp_path, distinct_alternatives(3)), [rollout(THREE_STEPS)])
    assert table_to_records(records_to_table(records, DecisionRecord), DecisionRecord) == records
