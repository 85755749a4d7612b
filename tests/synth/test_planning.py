"""The planning stage: analysis + first action, tool check, judge verdicts, failures, rendering."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from synth.knowledge import KnowledgeCache, format_statements, knowledge_cache
from synth.llm.base import LLMInvalidOutput, LLMTimeout, Message
from synth.records import (
    Failure,
    MemoryRecord,
    PlanningRecord,
    QuestionRecord,
    records_to_table,
    table_to_records,
)
from synth.render import tags
from synth.spec import SpecError, parse_spec
from synth.stage import StageContext, StageOutput
from synth.stages import get_stage
from synth.stages.planning import STAGE, PlanningConfig, PlanningStage
from testing.scripted_llm import ScriptedLLM

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

MEMORY = [
    MemoryRecord(
        id="m1", run_id="t", entity="Seine", statement="The Seine flows through Paris.", doc_id="d1"
    ),
    MemoryRecord(id="m2", run_id="t", entity="Seine", statement="The Seine is 777 km long.", doc_id="d1"),
    MemoryRecord(
        id="m3",
        run_id="t",
        entity="Loire",
        statement="The Loire is the longest river in France.",
        doc_id="d2",
    ),
]

SEARCH_PLAN = {
    "analysis": "The question needs the river of Paris and its length. Plan: find the river, then its length.",
    "tool": "search",
    "arguments": {"query": ["river through Paris", "Seine length"]},
}


def question(
    qid: str = "q1",
    text: str = "How long is the river that flows through Paris?",
    knowledge_ids: list[str] | None = None,
) -> QuestionRecord:
    return QuestionRecord(
        id=qid,
        run_id="t",
        style="factual",
        question=text,
        answer="777 km",
        entities=["Seine"],
        knowledge_ids=["m1", "m2"] if knowledge_ids is None else knowledge_ids,
    )


def context(
    tmp_path: Path,
    plan_reply: Any,
    verdict: Any = None,
    planning: dict[str, Any] | None = None,
    memory: list[MemoryRecord] = MEMORY,
) -> tuple[StageContext, ScriptedLLM, ScriptedLLM]:
    """A context whose LLM answers ``plan_reply`` (or calls it) and whose judge answers ``verdict``."""

    def plan_fn(messages: list[Message], schema: Any) -> Any:
        return plan_reply(messages) if callable(plan_reply) else plan_reply

    def judge_fn(messages: list[Message], schema: Any) -> Any:
        if verdict is None:
            raise AssertionError("the judge must not be called here")
        return verdict(messages) if callable(verdict) else verdict

    llm, judge = ScriptedLLM(plan_fn, model_name="planner"), ScriptedLLM(judge_fn, model_name="judge")
    spec = parse_spec({"name": "t", "stages": {"planning": planning or {}}})
    ctx = StageContext(
        run_id="t",
        spec=spec,
        llm=llm,
        judge_llm=judge,
        run_dir=tmp_path,
        read_stage=lambda s: {"memory": memory}.get(s, []),
    )
    return ctx, llm, judge


def run(items: list[QuestionRecord], ctx: StageContext) -> StageOutput:
    return asyncio.run(STAGE.process(items, ctx))


def only_record(out: StageOutput) -> PlanningRecord:
    assert out.failures == [] and len(out.records) == 1, out.failures
    record = out.records[0]
    assert isinstance(record, PlanningRecord)
    return record


# ---------------------------------------------------------------------------
# Accept paths
# ---------------------------------------------------------------------------


def test_stage_is_registered_as_a_map_stage_over_questions() -> None:
    stage = get_stage("planning")
    assert isinstance(stage, PlanningStage)
    assert stage.upstream == ("questions",) and not stage.barrier


def test_valid_search_plan_accepted_by_judge_is_rendered_with_one_tool_call(tmp_path: Path) -> None:
    ctx, llm, judge = context(tmp_path, SEARCH_PLAN, {"reason": "accepted", "rationale": "Finds both facts."})
    record = only_record(run([question()], ctx))
    assert (record.accepted, record.reason, record.rationale) == (True, "accepted", "Finds both facts.")
    assert record.action is not None and record.action.tool == "search"
    assert record.question_id == "q1" and record.parent_ids == ["q1"]
    assert record.prompt_fingerprint == STAGE.prompt_fingerprint and record.model == "planner"
    assert record.text is not None
    calls = tags.find_tool_calls(record.text)
    assert len(calls) == 1 and tags.parse_tool_call(calls[0]) == record.action
    assert len(llm.calls) == 1 and len(judge.calls) == 1


def test_judge_is_given_the_source_statements_and_the_action(tmp_path: Path) -> None:
    ctx, _, judge = context(tmp_path, SEARCH_PLAN, {"reason": "accepted", "rationale": "ok"})
    run([question(knowledge_ids=["m2"])], ctx)
    prompt = judge.calls[0]["messages"][-1]["content"]
    assert "The Seine is 777 km long." in prompt
    assert "The Seine flows through Paris." not in prompt  # m1 is not this question's knowledge
    assert "777 km" in prompt  # the gold answer
    assert '"name": "search"' in prompt and "river through Paris" in prompt


def test_direct_answer_accepted_renders_one_answer(tmp_path: Path) -> None:
    reply = {
        "analysis": "The question gives everything needed: 2 + 2.",
        "tool": "answer",
        "arguments": {"answer": "4"},
    }
    ctx, _, _ = context(tmp_path, reply, {"reason": "accepted", "rationale": "trivial"})
    record = only_record(run([question(text="What is 2 + 2?")], ctx))
    assert record.accepted and record.action is None and record.answer == "4"
    assert record.text is not None
    assert tags.find_answers(record.text) == ["4"] and tags.find_tool_calls(record.text) == []


def test_judge_disabled_accepts_without_a_judge_call(tmp_path: Path) -> None:
    ctx, _, judge = context(tmp_path, SEARCH_PLAN, verdict=None, planning={"judge": False})
    record = only_record(run([question()], ctx))
    assert record.accepted and record.reason == "accepted" and record.text
    assert "not judged" in (record.rationale or "")
    assert judge.calls == []


@pytest.mark.parametrize(
    "reply",
    [
        # nested action with Tongyi-style "name", single query string
        {"analysis": "Search it.", "action": {"name": "search", "arguments": {"query": "Seine length"}}},
        # double-encoded arguments, capitalised tool name
        {"analysis": "Search it.", "tool": "Search", "arguments": json.dumps({"query": ["Seine length"]})},
        # analysis written as a list of steps
        {
            "analysis": ["find the river", "find its length"],
            "tool": "search",
            "arguments": {"query": ["Seine"]},
        },
        # "thought" instead of "analysis"
        {"thought": "Find the river, then its length.", "tool": "search", "arguments": {"query": ["Seine"]}},
    ],
)
def test_common_reply_shapes_of_small_models_are_accepted(tmp_path: Path, reply: dict[str, Any]) -> None:
    ctx, _, _ = context(tmp_path, reply, {"reason": "Accepted", "rationale": "ok"})
    record = only_record(run([question()], ctx))
    assert record.accepted and record.action is not None
    assert record.action.tool == "search" and isinstance(record.action.arguments["query"], list)


# ---------------------------------------------------------------------------
# Reject paths
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("judge_says", "reason"),
    [
        ("content_inconsistency", "content_inconsistency"),
        ("Content inconsistency", "content_inconsistency"),
        ("search_unnecessary", "search_unnecessary"),
        ("search necessity", "search_unnecessary"),
        ("logic_discontinuity", "logic_discontinuity"),
        ("invalid_tool", "invalid_tool"),
        ("other", "other"),
    ],
)
def test_each_judge_rejection_reason_is_kept_flagged_without_text(
    tmp_path: Path, judge_says: str, reason: str
) -> None:
    ctx, _, judge = context(tmp_path, SEARCH_PLAN, {"reason": judge_says, "rationale": "because"})
    record = only_record(run([question()], ctx))
    assert (record.accepted, record.reason, record.rationale, record.text) == (False, reason, "because", None)
    assert len(judge.calls) == 1


@pytest.mark.parametrize(
    ("tool", "arguments", "problem"),
    [
        ("browse", {"url": "https://x"}, "unknown tool 'browse'"),
        ("search", {"q": ["Seine"]}, "search: query"),
        ("search", {"query": []}, "search: query"),
        ("visit", {"url": "https://fr.wikipedia.org/wiki/Seine"}, "visit: goal"),
        ("python", {"code": ""}, "python: code"),
        ("parse_file", {"files": "a.pdf"}, "parse_file: files"),
        ("search", ["Seine"], "arguments must be a JSON object"),
        ("search", "not json at all", "arguments must be a JSON object"),
        ("", {}, "no tool named"),
        ("answer", {}, "without answer text"),
    ],
)
def test_invalid_tool_is_caught_without_a_judge_call(
    tmp_path: Path, tool: str, arguments: Any, problem: str
) -> None:
    reply = {"analysis": "Plan: look it up.", "tool": tool, "arguments": arguments}
    ctx, _, judge = context(tmp_path, reply, verdict=None)  # the judge raises if called
    record = only_record(run([question()], ctx))
    assert (record.accepted, record.reason, record.text) == (False, "invalid_tool", None)
    assert (record.rationale or "").startswith("tool check: ") and problem in (record.rationale or "")
    assert judge.calls == []


def test_tool_outside_the_configured_set_is_invalid(tmp_path: Path) -> None:
    ctx, _, judge = context(tmp_path, SEARCH_PLAN, verdict=None, planning={"tools": ["visit", "python"]})
    record = only_record(run([question()], ctx))
    assert record.reason == "invalid_tool" and "unknown tool 'search'" in (record.rationale or "")
    assert judge.calls == []
    prompt = ctx.llm.calls[0]["messages"][0]["content"]  # type: ignore[attr-defined]
    assert "- visit:" in prompt and "- search:" not in prompt


def test_direct_answer_disabled_is_invalid_tool(tmp_path: Path) -> None:
    reply = {"analysis": "Easy.", "tool": "answer", "answer": "777 km"}
    ctx, _, judge = context(tmp_path, reply, verdict=None, planning={"allow_direct_answer": False})
    record = only_record(run([question()], ctx))
    assert record.reason == "invalid_tool" and record.answer == "777 km" and judge.calls == []


def test_judge_disabled_still_rejects_invalid_tools(tmp_path: Path) -> None:
    reply = {"analysis": "Plan.", "tool": "browse", "arguments": {}}
    ctx, _, _ = context(tmp_path, reply, verdict=None, planning={"judge": False})
    assert only_record(run([question()], ctx)).reason == "invalid_tool"


def test_unknown_tool_in_config_is_a_spec_error_naming_the_field() -> None:
    with pytest.raises(SpecError, match=r"stages\.planning\.tools"):
        parse_spec({"name": "t", "stages": {"planning": {"tools": ["search", "browse"]}}})


# ---------------------------------------------------------------------------
# Failures: every input ends as a record or a Failure
# ---------------------------------------------------------------------------


def test_llm_errors_become_failure_rows_and_the_unit_goes_on(tmp_path: Path) -> None:
    def plan_reply(messages: list[Message]) -> Any:
        if "broken planner" in messages[-1]["content"]:
            return LLMTimeout("planner timed out")
        if "bad json" in messages[-1]["content"]:
            return "I think we should search for it."  # no JSON object: invalid output
        return SEARCH_PLAN

    def verdict(messages: list[Message]) -> Any:
        if "broken judge" in messages[-1]["content"]:
            return LLMInvalidOutput("judge said nonsense", raw_output='{"reason": "maybe"}')
        return {"reason": "accepted", "rationale": "ok"}

    items = [
        question("q1", "broken planner?"),
        question("q2", "broken judge?"),
        question("q3", "fine?"),
        question("q4", "bad json?"),
    ]
    ctx, _, _ = context(tmp_path, plan_reply, verdict)
    out = run(items, ctx)
    assert [r.question_id for r in out.records] == ["q3"]  # type: ignore[attr-defined]
    failures = {f.input_ids[0]: f for f in out.failures}
    assert set(failures) == {"q1", "q2", "q4"}
    assert failures["q1"].error_kind == "timeout" and "planning call" in failures["q1"].message
    assert (
        failures["q2"].error_kind == "invalid_output" and failures["q2"].raw_output == '{"reason": "maybe"}'
    )
    assert failures["q4"].error_kind == "invalid_output" and failures["q4"].raw_output


def test_a_judge_label_outside_the_list_is_an_invalid_output_failure(tmp_path: Path) -> None:
    ctx, _, _ = context(tmp_path, SEARCH_PLAN, {"reason": "looks fine to me", "rationale": "?"})
    out = run([question()], ctx)
    assert out.records == [] and [f.error_kind for f in out.failures] == ["invalid_output"]


def test_question_whose_statements_are_all_missing_is_a_failure(tmp_path: Path) -> None:
    ctx, _, judge = context(tmp_path, SEARCH_PLAN, {"reason": "accepted", "rationale": "ok"})
    out = run([question(knowledge_ids=["gone-1", "gone-2"])], ctx)
    assert [f.error_kind for f in out.failures] == ["missing_knowledge"] and judge.calls == []


# ---------------------------------------------------------------------------
# Ids, schema, knowledge cache
# ---------------------------------------------------------------------------


def test_ids_are_deterministic_and_depend_on_parent_and_prompt_version(tmp_path: Path) -> None:
    ctx, _, _ = context(tmp_path, SEARCH_PLAN, {"reason": "accepted", "rationale": "ok"})
    first = run([question("q1"), question("q2")], ctx)
    again = run([question("q1"), question("q2")], ctx)
    ids = [r.id for r in first.records]
    assert ids == [r.id for r in again.records]
    assert len(set(ids)) == 2


def test_records_roundtrip_through_the_arrow_schema(tmp_path: Path) -> None:
    reply = {"analysis": "Plan.", "tool": "browse", "arguments": {}}
    ctx, _, _ = context(
        tmp_path, lambda m: SEARCH_PLAN if "1" in m[-1]["content"] else reply, {"reason": "accepted"}
    )
    out = run([question("q1", "river 1?"), question("q2", "river 2?")], ctx)
    table = records_to_table(out.records, PlanningRecord)
    assert table.column("accepted").to_pylist() == [True, False]
    assert table.column("reason").to_pylist() == ["accepted", "invalid_tool"]
    assert table_to_records(table, PlanningRecord) == out.records


def test_memory_is_read_once_per_run_and_again_for_new_ids(tmp_path: Path) -> None:
    ctx, _, _ = context(tmp_path, SEARCH_PLAN, {"reason": "accepted", "rationale": "ok"})
    cache = knowledge_cache()
    before = cache.loads
    run([question("q1")], ctx)
    run([question("q2")], ctx)  # a second unit of the same run: no re-read
    assert cache.loads == before + 1
    # Another context on the same run dir whose memory has an id the index lacks.
    extra = MemoryRecord(
        id="m9", run_id="t", entity="Rhine", statement="The Rhine is 1,233 km long.", doc_id="d3"
    )
    ctx2, _, judge2 = context(
        tmp_path, SEARCH_PLAN, {"reason": "accepted", "rationale": "ok"}, memory=[*MEMORY, extra]
    )
    run([question("q3", knowledge_ids=["m9"])], ctx2)
    assert cache.loads == before + 2
    assert "The Rhine is 1,233 km long." in judge2.calls[0]["messages"][-1]["content"]


def test_knowledge_cache_keeps_a_bounded_number_of_runs(tmp_path: Path) -> None:
    cache = KnowledgeCache(max_runs=2)
    contexts = [context(tmp_path / f"run{i}", SEARCH_PLAN)[0] for i in range(3)]
    for ctx in contexts:
        assert len(cache.index_for(ctx)) == len(MEMORY)
    assert cache.loads == 3
    cache.index_for(contexts[2])  # still cached
    cache.index_for(contexts[0])  # evicted: read again
    assert cache.loads == 4


def test_statements_are_capped_and_carry_their_time_and_source_url() -> None:
    dated = MemoryRecord(
        id="m0",
        run_id="t",
        entity="Riverton",
        statement="Riverton welcomed 2.41 million overnight visitors.",
        doc_id="d",
        time="2024",
        source_url="https://visit.example/stats",
    )
    block = format_statements([dated, *MEMORY], max_statements=2)
    lines = block.splitlines()
    assert len(lines) == 2
    assert lines[0] == (
        "- Riverton welcomed 2.41 million overnight visitors. (time: 2024; source: https://visit.example/stats)"
    )
    assert format_statements([], max_statements=3) == "(none)"


# ---------------------------------------------------------------------------
# Rendering over many samples, and over real agent first steps
# ---------------------------------------------------------------------------


def test_every_accepted_planning_text_holds_one_parsable_tool_call_or_one_answer(tmp_path: Path) -> None:
    actions: list[dict[str, Any]] = [
        {"tool": "search", "arguments": {"query": ["a", "b"]}},
        {"tool": "visit", "arguments": {"url": ["https://a.example", "https://b.example"], "goal": "dates"}},
        {"tool": "python", "arguments": {"code": "x = {'a': 1}\nprint(x['a'] * 2)"}},
        {"tool": "google_scholar", "arguments": {"query": "transformers"}},
        {"tool": "parse_file", "arguments": {"files": ["t.xlsx"]}},
        {"tool": "answer", "arguments": {"answer": "42"}},
    ]
    items = [question(f"q{i}", f"Question number {i}?") for i in range(36)]

    def plan_reply(messages: list[Message]) -> Any:
        i = int(re.search(r"number (\d+)", messages[-1]["content"]).group(1))  # type: ignore[union-attr]
        noisy = "Think <tool_call>{}</tool_call> and <answer>no</answer>." if i % 2 else "Plan: step by step."
        return {"analysis": noisy, **actions[i % len(actions)]}

    ctx, _, _ = context(tmp_path, plan_reply, {"reason": "accepted", "rationale": "ok"})
    out = run(items, ctx)
    assert len(out.records) == len(items) and out.failures == []
    for record in out.records:
        assert record.text is not None  # type: ignore[attr-defined]
        calls, answers = tags.find_tool_calls(record.text), tags.find_answers(record.text)  # type: ignore[attr-defined]
        assert (len(calls), len(answers)) in ((1, 0), (0, 1)), record.text  # type: ignore[attr-defined]
        for payload in calls:
            json.loads(payload)
            tags.parse_tool_call(payload)


def _first_steps(n: int) -> list[tuple[str, str, str]]:
    """(question, first <think>, first <tool_call> payload) of real WebDancer trajectories, one per question."""
    out = []
    with (DATA / "trajectories" / "webdancer_sample_traj.jsonl").open(encoding="utf-8") as f:
        for line in f:
            traj = json.loads(line)
            user = next(m["content"] for m in traj["messages"] if m["role"] == "user")
            first = next(m["content"] for m in traj["messages"] if m["role"] == "assistant")
            text = user.rsplit("User:", 1)[-1].strip()
            if any(text == q for q, _, _ in out):  # the sample repeats a few questions
                continue
            out.append((text, tags.find_thoughts(first)[0], tags.find_tool_calls(first)[0]))
            if len(out) == n:
                break
    return out


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (real trajectories) is not present")
def test_real_agent_first_steps_pass_the_tool_check_and_render_the_same_call(tmp_path: Path) -> None:
    steps = _first_steps(40)
    by_question = {q: (think, json.loads(call)) for q, think, call in steps}

    def plan_reply(messages: list[Message]) -> Any:
        think, call = by_question[messages[-1]["content"].removeprefix("Question: ")]
        return {"analysis": think, "tool": call["name"], "arguments": call["arguments"]}

    items = [question(f"q{i}", q) for i, (q, _, _) in enumerate(steps)]
    ctx, _, judge = context(tmp_path, plan_reply, verdict=None, planning={"judge": False})
    out = run(items, ctx)
    assert len(out.records) == len(steps) and out.failures == [] and judge.calls == []
    for record, (_, _, call) in zip(out.records, steps, strict=True):
        assert record.reason == "accepted", record.rationale  # type: ignore[attr-defined]
        rendered = tags.find_tool_calls(record.text)  # type: ignore[attr-defined]
        assert len(rendered) == 1
        assert json.loads(rendered[0]) == json.loads(call)


class TokenCapRecorder(ScriptedLLM):
    """A ScriptedLLM that also records the completion cap of each call."""

    def __init__(self, responder: Any, model_name: str) -> None:
        super().__init__(responder, model_name)
        self.max_tokens_seen: list[int | None] = []

    async def complete(self, messages: list[Message], schema: Any = None, **kwargs: Any) -> Any:
        self.max_tokens_seen.append(kwargs.get("max_tokens"))
        return await super().complete(messages, schema, **kwargs)


@pytest.mark.parametrize(
    ("planning", "expected"),
    [
        ({}, (192, 128)),
        ({"max_tokens": 1000, "judge_max_tokens": 1000}, (192, 150)),
        ({"max_tokens": 64}, (64, 128)),
    ],
)
def test_completion_caps_never_exceed_the_endpoints(
    tmp_path: Path, planning: dict[str, Any], expected: tuple[int, int]
) -> None:
    llm = TokenCapRecorder(lambda m, s: SEARCH_PLAN, "planner")
    judge = TokenCapRecorder(lambda m, s: {"reason": "accepted", "rationale": "ok"}, "judge")
    spec = parse_spec(
        {
            "name": "t",
            "llm": {"max_tokens": 192},
            "judge_llm": {"max_tokens": 150},
            "stages": {"planning": planning},
        }
    )
    ctx = StageContext(
        run_id="t",
        spec=spec,
        llm=llm,
        judge_llm=judge,
        run_dir=tmp_path,
        read_stage=lambda s: {"memory": MEMORY}.get(s, []),
    )
    only_record(run([question()], ctx))
    assert (llm.max_tokens_seen[0], judge.max_tokens_seen[0]) == expected


def test_config_defaults_cover_the_whole_tool_set() -> None:
    assert PlanningConfig().tools == ["search", "visit", "python", "google_scholar", "parse_file"]


def test_failures_name_the_question(tmp_path: Path) -> None:
    ctx, _, _ = context(tmp_path, LLMTimeout("slow"))
    out = run([question("q7")], ctx)
    assert out.failures == [Failure(input_ids=["q7"], error_kind="timeout", message="planning call: slow")]


# ---------------------------------------------------------------------------
# Judging: the judge knows the agent has not seen the facts; examples leak nothing
# ---------------------------------------------------------------------------


def test_the_judge_is_told_the_agent_has_not_seen_the_facts(tmp_path: Path) -> None:
    ctx, _, judge = context(tmp_path, SEARCH_PLAN, {"reason": "accepted", "rationale": "ok"})
    only_record(run([question()], ctx))
    system = judge.calls[0]["messages"][0]["content"]
    assert "has NOT seen the facts" in system
    (line,) = [ln for ln in system.splitlines() if ln.startswith("search_unnecessary")]
    assert "common knowledge" in line and "without the facts" in line


def test_few_shot_examples_do_not_search_for_what_the_question_hides() -> None:
    from synth.stages.planning import (
        JUDGE_EXAMPLE_ANSWER,
        JUDGE_EXAMPLES,
        PLAN_EXAMPLE_QUESTION,
        PLAN_EXAMPLE_REPLY,
    )

    hidden = {JUDGE_EXAMPLE_ANSWER, "Steve Jobs", "Jobs", "Wozniak", "Wayne"}  # answer and bridge entities
    assert not any(h in PLAN_EXAMPLE_QUESTION for h in hidden)
    accepted = [(analysis, action) for analysis, action, reply in JUDGE_EXAMPLES if '"accepted"' in reply]
    for text in [PLAN_EXAMPLE_REPLY, *(a for pair in accepted for a in pair)]:
        assert not any(h in text for h in hidden), text


def test_the_stage_may_read_the_memory_its_questions_cite(tmp_path: Path) -> None:
    from synth.stage import UndeclaredReadError

    ctx, _, _ = context(tmp_path, SEARCH_PLAN, {"reason": "accepted", "rationale": "ok"})
    scoped = ctx.scoped_to(STAGE)
    assert only_record(run([question()], scoped)).accepted
    with pytest.raises(UndeclaredReadError):
        scoped.read_stage("documents")
