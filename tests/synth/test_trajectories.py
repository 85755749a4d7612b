"""Trajectory import: the WebDancer sample (ReAct chatml), OpenAI tool_calls, and bad lines."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from synth.records import Failure, RolloutRecord, records_to_table, table_to_records
from synth.spec import SpecError, parse_spec
from synth.stage import StageContext
from synth.stages.rollouts import STAGE as ROLLOUTS
from synth.trajectories import (
    TrajectoryFormatError,
    load_trajectory,
    parse_trajectory,
    question_from_user_text,
    scan_trajectory_files,
)
from testing.scripted_llm import ScriptedLLM

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
WEBDANCER = SHARED_DATA / "trajectories" / "webdancer_sample_traj.jsonl"


def no_llm(messages: list[dict[str, Any]], schema: Any) -> Any:
    raise AssertionError("no LLM call expected")


def make_ctx(tmp_path: Path, trajectories: list[str], judge: Any = no_llm, **rollouts: Any) -> StageContext:
    spec = parse_spec(
        {"name": "t", "inputs": {"trajectories": trajectories}, "stages": {"rollouts": rollouts}}
    )
    return StageContext(
        run_id="t",
        spec=spec,
        llm=ScriptedLLM(no_llm),
        judge_llm=ScriptedLLM(judge, model_name="judge"),
        run_dir=tmp_path,
        read_stage=lambda stage: [],
        base_dir=tmp_path,
    )


def run_stage(ctx: StageContext) -> tuple[list[RolloutRecord], list[Failure]]:
    prepared = ROLLOUTS.prepare(ctx)
    out = asyncio.run(ROLLOUTS.process(prepared.items, ctx))
    return out.records, [*prepared.dropped, *out.failures]  # type: ignore[list-item]


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# ---------------------------------------------------------------------------
# The WebDancer sample: 200 real trajectories
# ---------------------------------------------------------------------------


@pytest.mark.skipif(
    not WEBDANCER.exists(), reason=f"shared data absent: {WEBDANCER} (../shared/data next to the repo)"
)
def test_all_200_webdancer_trajectories_import_with_one_step_per_tool_call(tmp_path: Path) -> None:
    raw = [json.loads(line) for line in WEBDANCER.read_text().splitlines() if line.strip()]
    # Counted independently of the importer: assistant turns whose text holds a tool call.
    expected_calls = [
        sum(
            1
            for m in r["messages"]
            if m["role"] == "assistant" and re.search(r"<tool_call>.*?</tool_call>", m["content"], re.S)
        )
        for r in raw
    ]
    judged: list[str] = []

    def judge(messages: list[dict[str, Any]], schema: Any) -> dict[str, Any]:
        judged.append(messages[-1]["content"])
        return {"correct": True, "rationale": "same race"}

    records, failures = run_stage(make_ctx(tmp_path, [str(WEBDANCER)], judge=judge))
    assert failures == []
    assert len(records) == 200 == len(raw)
    assert len({r.id for r in records}) == 200
    for record, calls, source in zip(records, expected_calls, raw, strict=True):
        assert record.source == "import:react_chatml"
        assert record.question_id is None
        assert sum(1 for s in record.steps if s.action is not None) == calls
        assert all(s.observation for s in record.steps if s.action is not None)
        assert record.final_answer and record.steps[-1].action is None
        assert record.gold_answer == " | ".join(a for group in source["answer"] for a in group)
        assert record.outcome in ("correct", "incorrect")
        assert record.question and "<tools>" not in record.question
        assert record.text and record.text.startswith("Question: ")
        assert record.n_tokens and record.n_tokens > 0
    # Exact/numeric matching settles some answers; only the rest reach the judge.
    assert 0 < len(judged) <= 200
    assert {r.outcome for r in records} >= {"correct"}


@pytest.mark.skipif(not WEBDANCER.exists(), reason=f"shared data absent: {WEBDANCER}")
def test_webdancer_question_and_first_call_are_read_from_the_messages(tmp_path: Path) -> None:
    ref = scan_trajectory_files([WEBDANCER], base_dir=SHARED_DATA)[0]
    traj = load_trajectory(ref)
    assert traj.question.startswith("In a prestigious British equestrian event")
    assert traj.steps[0].action is not None and traj.steps[0].action.tool == "search"
    assert traj.steps[0].observation and traj.steps[0].observation.startswith("A Google search for")
    assert traj.gold_answers == ["English horse race Derby"]
    assert ref.where == "trajectories/webdancer_sample_traj.jsonl:1"


# ---------------------------------------------------------------------------
# OpenAI tool_calls
# ---------------------------------------------------------------------------

OPENAI_TRAJ = {
    "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "When did the Kestrel Bay Bridge open?"},
        {
            "role": "assistant",
            "content": "I should search first.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "search", "arguments": '{"query": ["Kestrel Bay Bridge"]}'},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "visit", "arguments": {"url": "https://e.org/b", "goal": "year"}},
                },
            ],
        },
        # Replies out of order: matched by tool_call_id, not position.
        {"role": "tool", "tool_call_id": "c2", "content": "Opened in 1987."},
        {"role": "tool", "tool_call_id": "c1", "content": "1. [Bridge](https://e.org/b)"},
        {"role": "assistant", "content": "Still thinking about it."},
        {"role": "assistant", "content": "<think>The page says 1987.</think>\n<answer>1987</answer>"},
    ],
    "answer": "1987",
}


def test_openai_tool_calls_become_steps_matched_by_call_id() -> None:
    traj = parse_trajectory(OPENAI_TRAJ)
    assert traj.format == "openai_tools"
    assert traj.question == "When did the Kestrel Bay Bridge open?"
    assert [s.action.tool if s.action else None for s in traj.steps] == ["search", "visit", None]
    assert traj.steps[0].thought == "I should search first." and traj.steps[1].thought == ""
    assert traj.steps[0].observation == "1. [Bridge](https://e.org/b)"
    assert traj.steps[1].observation == "Opened in 1987."
    # Text-only assistant turns are reasoning: they join the next step's thought.
    assert traj.steps[2].thought == "Still thinking about it.\n\nThe page says 1987."
    assert traj.final_answer == "1987"


def test_openai_final_message_without_tags_is_the_answer() -> None:
    obj = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is 6 times 7?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "a", "function": {"name": "python", "arguments": '{"code": "print(6*7)"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "a", "content": "42"},
            {"role": "assistant", "content": "42"},
        ]
    }
    traj = parse_trajectory(obj)
    assert traj.question == "What is 6 times 7?"
    assert traj.final_answer == "42" and traj.steps[-1].thought == ""


def test_openai_trajectories_import_through_the_stage_with_exact_match_judging(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "openai.jsonl", [OPENAI_TRAJ])
    records, failures = run_stage(
        make_ctx(tmp_path, [str(path)])
    )  # judge never called: "1987" matches exactly
    assert failures == []
    (record,) = records
    assert record.source == "import:openai_tools" and record.outcome == "correct"
    assert record.model is None and record.parent_ids == []


# ---------------------------------------------------------------------------
# ReAct chatml details
# ---------------------------------------------------------------------------


def react(*turns: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


def test_two_calls_in_one_turn_take_their_responses_in_order() -> None:
    traj = parse_trajectory(
        react(
            ("user", "Q?"),
            (
                "assistant",
                '<think>t</think><tool_call>{"name": "search", "arguments": {"query": ["a"]}}</tool_call>'
                '<tool_call>{"name": "search", "arguments": {"query": ["b"]}}</tool_call>',
            ),
            ("user", "<tool_response>ra</tool_response>\n<tool_response>rb</tool_response>"),
            ("assistant", "<answer>x</answer>"),
        )  # fmt: skip
    )
    assert [s.observation for s in traj.steps[:2]] == ["ra", "rb"]


def test_tool_list_preamble_is_removed_from_the_question() -> None:
    text = "Use tools.\n<tools>\n{...}\n</tools>\nExample:\nUser: example question\n...\nUser: What is the real question?"
    assert question_from_user_text(text) == "What is the real question?"
    assert question_from_user_text("  Plain question?  ") == "Plain question?"


def test_label_in_the_file_is_the_outcome_without_a_judge(tmp_path: Path) -> None:
    lines = [
        react(("user", "Q1?"), ("assistant", "<answer>a</answer>"), answer="b", outcome="correct"),
        react(("user", "Q2?"), ("assistant", "<answer>a</answer>"), is_correct=False),
        react(("user", "Q3?"), ("assistant", "<answer>a</answer>")),
    ]
    # unjudged: keep — Q3 has neither label nor gold; by default the judge would read its evidence.
    records, failures = run_stage(make_ctx(tmp_path, [str(write_jsonl(tmp_path / "t.jsonl", lines))], unjudged="keep"))
    assert failures == []
    assert [r.outcome for r in records] == ["correct", "incorrect", "unknown"]


BAD_LINES = [
    ("{not json", "not valid JSON"),
    (json.dumps({"messages": "nope"}), 'no "messages" list'),
    (json.dumps(react(("user", "Q?"), ("assistant", "just words"))), "neither format"),
    (
        json.dumps(react(("user", "Q?"), ("assistant", "<tool_call>{bad json}</tool_call>"))),
        "tool call is not valid JSON",
    ),
    (
        json.dumps(react(("user", "Q?"), ("assistant", "<answer>a</answer>"), ("user", "more?"))),
        "follows the final answer",
    ),
    (json.dumps(react(("user", "Q?"), ("assistant", '<tool_call>{"name": "search"}'))), "never closed"),
]


def test_bad_lines_fail_with_file_and_line_number_while_good_lines_import(tmp_path: Path) -> None:
    good = json.dumps(react(("user", "Fine?"), ("assistant", "<answer>yes</answer>")))
    lines = [good]
    for bad, _ in BAD_LINES:
        lines += [bad, ""]  # blank lines are not inputs, but they count in line numbers
    lines.append(good.replace("Fine?", "Also fine?"))
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    records, failures = run_stage(make_ctx(tmp_path, ["*.jsonl"]))
    assert [r.question for r in records] == ["Fine?", "Also fine?"]
    assert len(failures) == len(BAD_LINES)
    for i, (failure, (_, why)) in enumerate(zip(failures, BAD_LINES, strict=True)):
        line_no = 2 + 2 * i
        assert failure.error_kind == "invalid_trajectory"
        assert failure.input_ids == [f"mixed.jsonl:{line_no}"]
        assert failure.message.startswith(f"mixed.jsonl:{line_no}: ") and why in failure.message, (
            failure.message
        )
    assert path.exists()


def test_a_file_changed_after_listing_fails_its_lines_instead_of_importing_other_content(
    tmp_path: Path,
) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [react(("user", "Q?"), ("assistant", "<answer>a</answer>"))])
    ctx = make_ctx(tmp_path, ["t.jsonl"])
    prepared = ROLLOUTS.prepare(ctx)
    write_jsonl(path, [react(("user", "Other?"), ("assistant", "<answer>b</answer>"))])
    out = asyncio.run(ROLLOUTS.process(prepared.items, ctx))
    assert out.records == [] and "changed since the run listed" in out.failures[0].message


def test_a_glob_matching_nothing_is_a_spec_error_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"inputs\.trajectories\[0\]"):
        ROLLOUTS.prepare(make_ctx(tmp_path, ["missing/*.jsonl"]))


def test_imported_records_round_trip_through_arrow(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "openai.jsonl", [OPENAI_TRAJ])
    records, _ = run_stage(make_ctx(tmp_path, [str(path)]))
    back = table_to_records(records_to_table(records, RolloutRecord), RolloutRecord)
    assert back == records


def test_parse_errors_name_the_message() -> None:
    with pytest.raises(
        TrajectoryFormatError, match=r"messages\[2\]: a user message that answers no tool call"
    ):
        parse_trajectory(
            react(
                ("user", "Q?"),
                ("assistant", "thinking"),
                ("user", "hello?"),
                ("assistant", "<answer>a</answer>"),
            )
        )
