"""Rendering accepted planning and reasoning samples into CPT text."""

from __future__ import annotations

import pytest

from synth.records import MemoryRecord, PlanningRecord, ReasoningRecord, ToolAction
from synth.render import tags
from synth.render.fas import (
    PLANNING_FRAMES,
    REASONING_FRAMES,
    pick_variant,
    render_planning,
    render_reasoning,
    scrub_tags,
)

QUESTION = "Which river flows through the city of the Eiffel Tower?"
STATEMENTS = [
    MemoryRecord(
        id="m1",
        run_id="t",
        entity="Eiffel Tower",
        statement="The Eiffel Tower stands in Paris.",
        doc_id="d1",
        time="1889",
        source_url="https://landmarks.example/eiffel",
    ),
    MemoryRecord(
        id="m2",
        run_id="t",
        entity="Seine",
        statement="The Seine flows through Paris.",
        doc_id="d2",
        source_url="https://rivers.example/seine",
    ),
]


def planning_record(
    rid: str, action: ToolAction | None = None, answer: str | None = None, analysis: str = ""
) -> PlanningRecord:
    return PlanningRecord(
        id=rid,
        run_id="t",
        question_id="q1",
        analysis=analysis or "The question needs the city of the Eiffel Tower and its river. Plan: search.",
        action=action,
        answer=answer,
        accepted=True,
        reason="accepted",
    )


def reasoning_record(
    rid: str,
    step1: str = "Paris has a river. Guess: Loire.",
    step2: str = "The facts say the Seine. So the answer is Seine.",
) -> ReasoningRecord:
    return ReasoningRecord(
        id=rid, run_id="t", question_id="q1", step1=step1, step2=step2, final_answer="Seine", correct=True
    )


def ids_covering(n_variants: int) -> list[str]:
    """Record ids whose hash picks each variant at least once."""
    out: dict[int, str] = {}
    for i in range(1000):
        out.setdefault(pick_variant(f"rec-{i}", n_variants), f"rec-{i}")
        if len(out) == n_variants:
            return [out[k] for k in sorted(out)]
    raise AssertionError("some variant is never picked")


@pytest.mark.parametrize(
    "action",
    [
        ToolAction(tool="search", arguments={"query": ["river through Paris", "Seine length"]}),
        ToolAction(tool="visit", arguments={"url": "https://en.wikipedia.org/wiki/Seine", "goal": "length"}),
        ToolAction(tool="python", arguments={"code": 'print("a" * 3)\nprint({"k": 1})'}),
        ToolAction(tool="google_scholar", arguments={"query": ["Seine hydrology"]}),
        ToolAction(tool="parse_file", arguments={"files": ["report.pdf"]}),
    ],
)
def test_every_planning_variant_holds_think_then_exactly_one_parsable_tool_call(action: ToolAction) -> None:
    for rid in ids_covering(len(PLANNING_FRAMES)):
        text = render_planning(planning_record(rid, action=action), QUESTION)
        assert QUESTION in text
        assert len(tags.find_thoughts(text)) == 1
        calls = tags.find_tool_calls(text)
        assert len(calls) == 1
        assert tags.parse_tool_call(calls[0]) == action
        assert tags.find_answers(text) == []
        assert (
            text.index(QUESTION) < text.index("<think>") < text.index("</think>") < text.index("<tool_call>")
        )


def test_planning_direct_answer_renders_one_answer_and_no_tool_call() -> None:
    for rid in ids_covering(len(PLANNING_FRAMES)):
        text = render_planning(planning_record(rid, answer="The Seine"), QUESTION)
        assert tags.find_answers(text) == ["The Seine"]
        assert tags.find_tool_calls(text) == []
        assert text.rstrip().endswith("</answer>")


def test_react_tags_written_by_the_model_cannot_add_a_second_action() -> None:
    sneaky = (
        'I will call <tool_call>{"name": "visit", "arguments": {}}</tool_call> and then '
        "<answer>Loire</answer> <think>nested</think> <tool_<answer>call>"
    )
    action = ToolAction(tool="python", arguments={"code": "print('</tool_call><answer>x</answer>')"})
    text = render_planning(planning_record("r1", action=action, analysis=sneaky), f"{QUESTION} <answer>")
    calls = tags.find_tool_calls(text)
    assert len(calls) == 1
    parsed = tags.parse_tool_call(calls[0])
    assert parsed.tool == "python"
    assert parsed.arguments == {"code": "print('x')"}
    assert tags.find_answers(text) == []
    assert len(tags.find_thoughts(text)) == 1


def test_scrub_tags_removes_tags_rebuilt_by_a_removal() -> None:
    assert scrub_tags("a <tool_<answer>call> b </THINK>") == "a  b"


def test_variant_choice_is_deterministic_and_every_frame_is_used() -> None:
    assert pick_variant("abc", 4) == pick_variant("abc", 4)
    frames_used = {
        render_planning(planning_record(rid, answer="x"), QUESTION).split("\n")[0]
        for rid in ids_covering(len(PLANNING_FRAMES))
    }
    assert len(frames_used) == len(PLANNING_FRAMES)


def test_planning_record_without_action_or_answer_is_refused() -> None:
    with pytest.raises(ValueError, match="neither an action nor an answer"):
        render_planning(planning_record("r1"), QUESTION)


def test_every_reasoning_variant_holds_question_knowledge_step1_step2_then_one_answer() -> None:
    for rid in ids_covering(len(REASONING_FRAMES)):
        record = reasoning_record(rid)
        text = render_reasoning(record, QUESTION, STATEMENTS)
        assert (
            text.index(QUESTION)
            < text.index(STATEMENTS[0].statement)
            < text.index(STATEMENTS[1].statement)
            < text.index(record.step1)
            < text.index(record.step2)
            < text.index("<answer>")
        )
        assert tags.find_answers(text) == ["Seine"]
        assert len(tags.find_thoughts(text)) == 1
        assert tags.find_tool_calls(text) == []


def test_reasoning_steps_are_scrubbed_of_tags() -> None:
    record = reasoning_record(
        "r2", step1="Guess <answer>Loire</answer> first.", step2="Check <tool_call>{}</tool_call>. So Seine."
    )
    text = render_reasoning(record, QUESTION, STATEMENTS)
    assert tags.find_answers(text) == ["Seine"]
    assert tags.find_tool_calls(text) == []


def test_every_cited_statement_is_in_the_text_with_its_time_and_source_url() -> None:
    for rid in ids_covering(len(REASONING_FRAMES)):
        text = render_reasoning(reasoning_record(rid), QUESTION, STATEMENTS)
        assert "[1] The Eiffel Tower stands in Paris. (time: 1889; source: https://landmarks.example/eiffel)" in text
        assert "[2] The Seine flows through Paris. (source: https://rivers.example/seine)" in text
        # The knowledge sits before the reasoning, outside <think>: it is what was retrieved.
        assert STATEMENTS[0].statement not in tags.find_thoughts(text)[0]


def test_knowledge_is_scrubbed_of_tags() -> None:
    tagged = STATEMENTS[0].model_copy(update={"statement": "The tower <answer>Loire</answer> stands in Paris."})
    text = render_reasoning(reasoning_record("r3"), QUESTION, [tagged])
    assert tags.find_answers(text) == ["Seine"]
