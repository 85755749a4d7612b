"""The ReAct agent of the rollouts stage, with a scripted model and the offline tools."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from synth.llm.base import LLMTimeout
from synth.records import (
    DocumentRecord,
    Failure,
    QuestionRecord,
    Record,
    RolloutRecord,
    ToolAction,
    records_to_table,
    table_to_records,
)
from synth.spec import parse_spec
from synth.stage import StageContext
from synth.stages.rollouts import (
    FORCE_ANSWER,
    QuestionItem,
    RolloutsConfig,
    build_agent_messages,
    context_tokens,
    parse_turn,
)
from synth.stages.rollouts import STAGE as ROLLOUTS
from testing.scripted_llm import ScriptedLLM

Responder = Callable[[list[dict[str, Any]], Any], Any]

DOCS = [
    DocumentRecord(
        id="d1",
        run_id="t",
        url="https://example.org/bridge",
        title="Kestrel Bay Bridge",
        text="The Kestrel Bay Bridge opened in 1987. It spans 2.4 kilometres.",
        n_chars=62,
    ),
    DocumentRecord(
        id="d2",
        run_id="t",
        url="https://example.org/marmot",
        title="Amber-tailed marmot",
        text="The amber-tailed marmot lives above 3000 metres in the Calder range.",
        n_chars=68,
    ),
]


def question(qid: str, text: str, answer: str) -> QuestionRecord:
    return QuestionRecord(
        id=qid, run_id="t", style="factual", question=text, answer=answer, entities=[], knowledge_ids=[]
    )


BRIDGE = question("q-bridge", "When did the Kestrel Bay Bridge open?", "1987")


def call(tool: str, **arguments: Any) -> str:
    return f"<think>I will use {tool}.</think>\n<tool_call>\n{json.dumps({'name': tool, 'arguments': arguments})}\n</tool_call>"


def answer(text: str) -> str:
    return f"<think>I have enough evidence.</think>\n<answer>{text}</answer>"


def scripted(replies: list[Any]) -> Responder:
    """Replies in order, one per agent turn."""
    queue = list(replies)

    def respond(messages: list[dict[str, Any]], schema: Any) -> Any:
        assert queue, (
            f"the agent asked for more turns than scripted; last message: {messages[-1]['content'][:200]}"
        )
        return queue.pop(0)

    return respond


def no_judge(messages: list[dict[str, Any]], schema: Any) -> Any:
    raise AssertionError("the judge should not be needed")


def make_ctx(
    tmp_path: Path,
    agent: Responder,
    questions: list[Record],
    judge_fn: Responder = no_judge,
    **rollouts: Any,
) -> tuple[StageContext, ScriptedLLM, ScriptedLLM]:
    spec = parse_spec({"name": "t", "stages": {"rollouts": rollouts}})
    llm, judge_llm = (
        ScriptedLLM(agent, model_name="agent-model"),
        ScriptedLLM(judge_fn, model_name="judge-model"),
    )
    stages: dict[str, list[Record]] = {"questions": questions, "documents": list(DOCS)}
    ctx = StageContext(
        run_id="t",
        spec=spec,
        llm=llm,
        judge_llm=judge_llm,
        run_dir=tmp_path,
        read_stage=lambda s: stages.get(s, []),
        base_dir=tmp_path,
    )
    return ctx, llm, judge_llm


def run_stage(ctx: StageContext) -> tuple[list[RolloutRecord], list[Failure]]:
    prepared = ROLLOUTS.prepare(ctx)
    out = asyncio.run(ROLLOUTS.process(prepared.items, ctx))
    return out.records, [*prepared.dropped, *out.failures]  # type: ignore[list-item]


def tool_responses(llm: ScriptedLLM) -> list[str]:
    """The user turns the agent saw after its first question (tool responses and error notes)."""
    last = llm.calls[-1]["messages"]
    start = next(i for i, m in enumerate(last) if m["role"] == "user" and m["content"] == BRIDGE.question)
    return [m["content"] for m in last[start + 1 :] if m["role"] == "user"]


# ---------------------------------------------------------------------------
# Tool use and the judged outcome
# ---------------------------------------------------------------------------


def test_agent_searches_visits_and_answers_correctly(tmp_path: Path) -> None:
    agent = scripted(
        [
            call("search", query=["Kestrel Bay Bridge opening"]),
            call("visit", url="https://example.org/bridge", goal="opening year"),
            answer("1987"),
        ]
    )
    ctx, llm, judge = make_ctx(tmp_path, agent, [BRIDGE])
    (record,), failures = run_stage(ctx)
    assert failures == []
    assert [s.action.tool if s.action else None for s in record.steps] == ["search", "visit", None]
    assert "[Kestrel Bay Bridge](https://example.org/bridge)" in (record.steps[0].observation or "")
    assert "opened in 1987" in (record.steps[1].observation or "")
    assert record.final_answer == "1987" and record.outcome == "correct"
    assert (
        record.source == "rollout" and record.question_id == "q-bridge" and record.parent_ids == ["q-bridge"]
    )
    assert record.model == "agent-model" and record.malformed == {}
    assert judge.calls == []  # exact match settled it
    # The system prompt offers exactly the configured tools, in the ReAct tag format.
    system = llm.calls[0]["messages"][0]["content"]
    assert "<tool_call>" in system and "- search:" in system and "- python:" in system
    # The worked example precedes the question and is not part of the record.
    assert llm.calls[0]["messages"][1]["content"] == "How tall is the Orlan Tower?"
    assert "Orlan" not in (record.text or "")


def test_rollout_renders_as_a_tool_call_trace(tmp_path: Path) -> None:
    agent = scripted([call("search", query=["bridge"]), answer("1987")])
    ctx, _, _ = make_ctx(tmp_path, agent, [BRIDGE])
    (record,), _ = run_stage(ctx)
    text = record.text or ""
    order = [
        text.index(t)
        for t in ("Question: When did", "<think>", "<tool_call>", "<tool_response>", "<answer>1987</answer>")
    ]
    assert order == sorted(order)
    assert text.count("<tool_call>") == 1 and text.count("<tool_response>") == 1
    assert record.n_tokens and record.n_tokens >= len(text) // 4


def test_wrong_answer_is_incorrect_without_a_judge_when_numbers_differ(tmp_path: Path) -> None:
    ctx, _, judge = make_ctx(tmp_path, scripted([answer("1990")]), [BRIDGE])
    (record,), _ = run_stage(ctx)
    assert record.outcome == "incorrect" and judge.calls == []


def test_inconclusive_answer_goes_to_the_judge(tmp_path: Path) -> None:
    marmot = question("q-marmot", "Where does the amber-tailed marmot live?", "above 3000 metres")
    seen: list[str] = []

    def judge(messages: list[dict[str, Any]], schema: Any) -> dict[str, Any]:
        seen.append(messages[-1]["content"])
        return {"correct": True, "rationale": "same altitude"}

    ctx, _, judge_llm = make_ctx(
        tmp_path, scripted([answer("High in the mountains, over 3,000 m")]), [marmot], judge_fn=judge
    )
    (record,), _ = run_stage(ctx)
    assert record.outcome == "correct"
    assert len(seen) == 1 and "above 3000 metres" in seen[0] and "over 3,000 m" in seen[0]


def test_without_the_judge_an_answer_naming_the_gold_counts_as_correct(tmp_path: Path) -> None:
    ctx, _, _ = make_ctx(
        tmp_path, scripted([answer("It opened in 1987, after five years")]), [BRIDGE], judge=False
    )
    (record,), _ = run_stage(ctx)
    assert record.outcome == "correct"


# ---------------------------------------------------------------------------
# Malformed output
# ---------------------------------------------------------------------------


def test_malformed_replies_become_observations_and_are_counted_by_kind(tmp_path: Path) -> None:
    agent = scripted(
        [
            'I will call search with {"name": "search", "arguments": {"query": ["bridge"]}}',  # prose
            "<tool_call>\n{name: search}\n</tool_call>",  # bad JSON
            call("browse", url="x"),  # unknown tool
            call("search", q="bridge"),  # bad arguments
            call("search", query=["Kestrel Bay Bridge"]),
            answer("1987"),
        ]
    )
    ctx, llm, _ = make_ctx(tmp_path, agent, [BRIDGE], max_format_errors=4)
    (record,), failures = run_stage(ctx)
    assert failures == []
    assert record.malformed == {"bad_arguments": 1, "bad_json": 1, "tool_call_as_prose": 1, "unknown_tool": 1}
    # Malformed turns are not steps: the trace holds only well-formed ones.
    assert [s.action.tool if s.action else None for s in record.steps] == ["search", None]
    assert record.outcome == "correct"
    notes = tool_responses(llm)
    assert "plain text" in notes[0] and "<tool_call>" in notes[0]
    assert "not valid JSON" in notes[1]
    assert "unknown tool 'browse'" in notes[2] and "search, visit, python" in notes[2]
    assert "search: query" in notes[3]
    assert all(n.startswith("<tool_response>\nError: ") for n in notes[:4])


def test_too_many_malformed_replies_end_as_a_failure_when_no_step_was_made(tmp_path: Path) -> None:
    replies = ["hello", "hello again", "still nothing", "<tool_call>"]
    ctx, llm, _ = make_ctx(tmp_path, scripted(replies), [BRIDGE], max_format_errors=2)
    records, (failure,) = run_stage(ctx)
    assert records == []
    assert failure.error_kind == "no_valid_steps" and failure.input_ids == ["q-bridge"]
    assert "no_action=3" in failure.message and "no_answer_at_limit=1" in failure.message
    assert failure.raw_output == "<tool_call>"
    assert len(llm.calls) == 4  # three tries, then one last turn that may only answer
    assert llm.calls[-1]["messages"][-1]["content"].endswith(FORCE_ANSWER)


def test_spent_format_budget_still_gives_one_chance_to_answer(tmp_path: Path) -> None:
    ctx, llm, _ = make_ctx(
        tmp_path, scripted(["hello", "<answer>1987</answer>"]), [BRIDGE], max_format_errors=0
    )
    (record,), _ = run_stage(ctx)
    assert record.final_answer == "1987" and record.outcome == "correct"
    assert record.malformed == {"no_action": 1} and len(record.steps) == 1


def test_malformed_replies_after_a_valid_step_keep_the_record(tmp_path: Path) -> None:
    agent = scripted([call("search", query=["bridge"]), "<answer>unclosed", "nothing", "nothing again"])
    ctx, _, _ = make_ctx(tmp_path, agent, [BRIDGE], max_format_errors=1)
    (record,), _ = run_stage(ctx)
    assert record.malformed == {"no_action": 1, "unclosed_tag": 1, "no_answer_at_limit": 1}
    assert record.final_answer is None and record.outcome == "incorrect"
    assert len(record.steps) == 1


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("Let me think about it.", "no_action"),
        ("search(query='bridge')", "tool_call_as_prose"),
        ('<tool_call>{"arguments": {}}</tool_call>', "bad_tool_call"),
        ("<tool_call>{'name': 'search'}</tool_call>", "bad_json"),
        ('<tool_call>{"name": "google_scholar", "arguments": {"query": ["x"]}}</tool_call>', "unknown_tool"),
        ('<tool_call>{"name": "visit", "arguments": {"url": "u"}}</tool_call>', "bad_arguments"),
        ("<tool_call>{", "unclosed_tag"),
        ("<tool_response>\nThe bridge opened in 1987.\n</tool_response>", "imagined_tool_response"),
        ('<tool_call>\n{"name": "search", "arguments": {"query": ["a"]', "unclosed_tag"),
    ],
)
def test_parse_turn_classifies_malformed_replies(reply: str, kind: str) -> None:
    turn = parse_turn(reply, ["search", "visit", "python"])
    assert turn.kind == "malformed" and turn.error_kind == kind


def test_parse_turn_accepts_a_complete_call_whose_closing_tag_is_missing() -> None:
    turn = parse_turn(
        '<think>t</think>\n<tool_call>\n{"name": "search", "arguments": {"query": ["a"]}} and more',
        ["search"],
    )
    assert turn.kind == "tool" and turn.action == ToolAction(tool="search", arguments={"query": ["a"]})
    assert turn.context_text.endswith('{"name": "search", "arguments": {"query": ["a"]}}\n</tool_call>')


def test_parse_turn_ignores_a_tool_response_the_model_imagined() -> None:
    reply = call("search", query=["a"]) + "\n<tool_response>made up</tool_response>\n<answer>x</answer>"
    turn = parse_turn(reply, ["search"])
    assert turn.kind == "tool" and "made up" not in turn.context_text and "<answer>" not in turn.context_text


def test_parse_turn_accepts_a_single_query_string_and_an_answer_without_think() -> None:
    assert (
        parse_turn('<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>', ["search"]).kind
        == "tool"
    )
    turn = parse_turn("<answer> 42 </answer>", ["search"])
    assert turn.kind == "answer" and turn.answer == "42" and turn.thought == ""


# ---------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------


def test_max_steps_forces_a_final_answer(tmp_path: Path) -> None:
    agent = scripted([call("search", query=["a"]), call("search", query=["b"]), answer("1987")])
    ctx, llm, _ = make_ctx(tmp_path, agent, [BRIDGE], max_steps=2)
    (record,), _ = run_stage(ctx)
    assert len(record.steps) == 3 and record.final_answer == "1987"
    last_turn = llm.calls[-1]["messages"][-1]
    assert last_turn["role"] == "user" and last_turn["content"].endswith(FORCE_ANSWER)
    assert last_turn["content"].startswith("<tool_response>")  # joined to the last tool response
    assert all(FORCE_ANSWER not in m["content"] for m in llm.calls[1]["messages"])


def test_a_tool_call_after_the_limit_ends_without_an_answer(tmp_path: Path) -> None:
    agent = scripted([call("search", query=["a"]), call("search", query=["b"])])
    ctx, llm, _ = make_ctx(tmp_path, agent, [BRIDGE], max_steps=1)
    (record,), _ = run_stage(ctx)
    assert [s.action is not None for s in record.steps] == [True]
    assert record.final_answer is None and record.outcome == "incorrect"
    assert record.malformed == {"no_answer_at_limit": 1}
    assert len(llm.calls) == 2


def test_context_limit_forces_a_final_answer(tmp_path: Path) -> None:
    agent = scripted([call("visit", url="https://example.org/marmot", goal="habitat"), answer("1987")])
    opening = context_tokens(build_agent_messages(BRIDGE.question, RolloutsConfig()))
    ctx, llm, _ = make_ctx(tmp_path, agent, [BRIDGE], max_context_tokens=opening + 20, max_steps=8)
    (record,), _ = run_stage(ctx)
    assert record.final_answer == "1987"
    assert llm.calls[1]["messages"][-1]["content"].endswith(FORCE_ANSWER)
    assert FORCE_ANSWER not in llm.calls[0]["messages"][-1]["content"]


def test_long_tool_responses_are_cut(tmp_path: Path) -> None:
    code = "print('y' * 5000)"
    agent = scripted([call("python", code=code), answer("1987")])
    ctx, _, _ = make_ctx(tmp_path, agent, [BRIDGE], max_observation_chars=500)
    (record,), _ = run_stage(ctx)
    observation = record.steps[0].observation or ""
    assert len(observation) < 600 and observation.endswith("y …") and "cut" not in observation


def test_python_limits_stop_runaway_code_and_the_rollout_goes_on(tmp_path: Path) -> None:
    agent = scripted(
        [
            call("python", code="while True:\n    pass"),
            call("python", code="x = bytearray(10 * 1024**3)"),
            call("python", code="import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)"),
            call("python", code="print(1980 + 7)"),
            answer("1987"),
        ]
    )
    ctx, _, _ = make_ctx(tmp_path, agent, [BRIDGE], python_cpu_s=1, python_timeout_s=60, python_memory_mb=512)
    (record,), failures = run_stage(ctx)
    assert failures == []
    observations = [s.observation or "" for s in record.steps[:4]]
    assert observations[0].startswith("[python] Stopped: the code used more than 1 s of CPU time")
    assert observations[1].startswith("[python] Stopped: the code tried to use more than 512 MB of memory")
    assert observations[2].startswith("[python] Blocked: network access is disabled in this sandbox")
    assert observations[3] == "stdout:\n1987"
    assert record.outcome == "correct"


# ---------------------------------------------------------------------------
# Failures and preparation
# ---------------------------------------------------------------------------


def test_llm_error_becomes_a_failure_with_its_kind_and_raw_output(tmp_path: Path) -> None:
    calls = {"n": 0}

    def agent(messages: list[dict[str, Any]], schema: Any) -> Any:
        calls["n"] += 1
        return (
            call("search", query=["a"])
            if calls["n"] == 1
            else LLMTimeout("no reply in 120 s", raw_output="partial")
        )

    ctx, _, _ = make_ctx(tmp_path, agent, [BRIDGE])
    records, (failure,) = run_stage(ctx)
    assert records == []
    assert (failure.error_kind, failure.raw_output, failure.input_ids) == ("timeout", "partial", ["q-bridge"])


def test_judge_error_becomes_a_failure(tmp_path: Path) -> None:
    marmot = question("q-marmot", "Where does the marmot live?", "above 3000 metres")
    ctx, _, _ = make_ctx(
        tmp_path,
        scripted([answer("in high mountains")]),
        [marmot],
        judge_fn=lambda m, s: LLMTimeout("judge down"),
    )
    records, (failure,) = run_stage(ctx)
    assert records == [] and failure.error_kind == "timeout"


def test_prepare_orders_questions_by_id_and_applies_the_cap(tmp_path: Path) -> None:
    qs = [question(f"q{i}", f"Question {i}?", "x") for i in (3, 1, 2)]
    ctx, _, _ = make_ctx(tmp_path, scripted([]), qs, max_questions=2)
    prepared = ROLLOUTS.prepare(ctx)
    assert [i.question_id for i in prepared.items] == ["q1", "q2"]
    assert all(isinstance(i, QuestionItem) for i in prepared.items)
    assert ROLLOUTS.prepare(ctx).items == prepared.items  # deterministic


def test_every_question_of_a_unit_ends_as_a_record_or_a_failure(tmp_path: Path) -> None:
    qs = [question(f"q{i}", f"Question number {i}?", "1987") for i in range(6)]

    def agent(messages: list[dict[str, Any]], schema: Any) -> Any:
        asked = next(m["content"] for m in messages if m["content"].startswith("Question number"))
        n = int(asked.split()[2].rstrip("?"))
        if n % 3 == 0:
            return LLMTimeout("down")
        if n % 3 == 1:
            return "no idea"
        return answer("1987")

    ctx, _, _ = make_ctx(tmp_path, agent, qs, max_format_errors=0)
    records, failures = run_stage(ctx)
    assert sorted([r.question_id for r in records] + [f.input_ids[0] for f in failures]) == [
        f"q{i}" for i in range(6)
    ]
    assert {f.error_kind for f in failures} == {"timeout", "no_valid_steps"}
    assert len({r.id for r in records}) == len(records) == 2


def test_rollout_records_round_trip_through_arrow_with_their_malformed_counts(tmp_path: Path) -> None:
    agent = scripted(["oops", call("search", query=["bridge"]), answer("1987")])
    ctx, _, _ = make_ctx(tmp_path, agent, [BRIDGE])
    records, _ = run_stage(ctx)
    back = table_to_records(records_to_table(records, RolloutRecord), RolloutRecord)
    assert back == records and back[0].malformed == {"no_action": 1}  # type: ignore[attr-defined]


def test_the_worked_example_can_be_left_out(tmp_path: Path) -> None:
    ctx, llm, _ = make_ctx(tmp_path, scripted([answer("1987")]), [BRIDGE], example_turns=False)
    run_stage(ctx)
    assert [m["role"] for m in llm.calls[0]["messages"]] == ["system", "user"]


# ---------------------------------------------------------------------------
# The long-horizon profile
# ---------------------------------------------------------------------------


def test_long_profile_fills_in_its_settings_and_a_key_the_spec_sets_wins() -> None:
    long = RolloutsConfig(profile="long")
    assert (long.max_steps, long.max_context_tokens, long.distractors, long.visit_summary) == (
        100,
        65536,
        True,
        True,
    )
    assert RolloutsConfig(profile="long", max_steps=40).max_steps == 40
    short = RolloutsConfig()
    assert (short.max_steps, short.distractors, short.visit_summary) == (8, False, False)


def test_long_profile_search_finds_distractors_and_visit_summarizes_keeping_the_raw_page(
    tmp_path: Path,
) -> None:
    agent = scripted(
        [
            call("search", query=["Kestrel Bay Bridge opened"]),
            call("visit", url="https://example.org/bridge", goal="opening year"),
            answer("1987"),
        ]
    )

    def respond(messages: list[dict[str, Any]], schema: Any) -> Any:
        if schema is not None and schema.__name__ == "PageSummary":
            assert "Goal: opening year" in messages[-1]["content"]
            return {"summary": "The page says the bridge opened in 1987."}
        return agent(messages, schema)

    ctx, _, _ = make_ctx(tmp_path, respond, [BRIDGE], profile="long")
    (record,), failures = run_stage(ctx)
    assert failures == [] and record.outcome == "correct" and record.judged_by == "exact"
    found, visited = record.steps[0].observation or "", record.steps[1].observation or ""
    # The stale mirror matches the same query, with its year shifted.
    assert "https://web.archive.org/web/2019/example.org/bridge" in found
    assert visited.startswith(
        "The useful information in https://example.org/bridge for user goal opening year"
    )
    assert "Evidence in page: \nThe Kestrel Bay Bridge opened in 1987." in visited
    assert visited.endswith("Summary: \nThe page says the bridge opened in 1987.")
    assert record.steps[1].raw is not None and "It spans 2.4 kilometres." in record.steps[1].raw
    assert record.steps[0].raw is None
    assert "It spans" not in (record.text or "").split("Summary:")[-1]  # the raw page is not in the trace
    assert table_to_records(records_to_table([record], RolloutRecord), RolloutRecord) == [record]


def test_a_visit_summary_the_llm_cannot_write_is_taken_from_the_page(tmp_path: Path) -> None:
    agent = scripted([call("visit", url="https://example.org/bridge", goal="length"), answer("1987")])

    def respond(messages: list[dict[str, Any]], schema: Any) -> Any:
        return "not JSON" if schema is not None else agent(messages, schema)

    ctx, _, _ = make_ctx(tmp_path, respond, [BRIDGE], profile="long")
    (record,), _ = run_stage(ctx)
    assert (record.steps[0].observation or "").endswith(
        "Summary: \nThe Kestrel Bay Bridge opened in 1987. It spans 2.4 kilometres."
    )


# ---------------------------------------------------------------------------
# Imported trajectories without gold
# ---------------------------------------------------------------------------


def write_trajectory(tmp_path: Path, **extra: Any) -> str:
    line = {
        "messages": [
            {"role": "user", "content": "When did the Kestrel Bay Bridge open?"},
            {
                "role": "assistant",
                "content": '<think>Search.</think><tool_call>{"name": "search", "arguments": {"query": ["Kestrel"]}}</tool_call>',
            },
            {
                "role": "user",
                "content": "<tool_response>The Kestrel Bay Bridge opened in 1987.</tool_response>",
            },
            {"role": "assistant", "content": "<think>It says 1987.</think><answer>1987</answer>"},
        ],
        **extra,
    }
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(line) + "\n")
    return str(path)


def import_ctx(tmp_path: Path, judge_fn: Responder, **rollouts: Any) -> StageContext:
    spec = parse_spec(
        {
            "name": "t",
            "inputs": {"trajectories": [write_trajectory(tmp_path)]},
            "stages": {"rollouts": rollouts},
        }
    )
    return StageContext(
        run_id="t", spec=spec, llm=ScriptedLLM(no_judge), judge_llm=ScriptedLLM(judge_fn),
        run_dir=tmp_path, read_stage=lambda s: [], base_dir=tmp_path,
    )  # fmt: skip


@pytest.mark.parametrize(("verdict", "outcome"), [("supported", "correct"), ("unsupported", "incorrect")])
def test_an_import_without_gold_is_judged_against_its_own_evidence(
    tmp_path: Path, verdict: str, outcome: str
) -> None:
    seen: list[str] = []

    def judge(messages: list[dict[str, Any]], schema: Any) -> Any:
        seen.append(messages[-1]["content"])
        return {"verdict": verdict, "rationale": "r"}

    (record,), failures = run_stage(import_ctx(tmp_path, judge))
    assert failures == [] and (record.outcome, record.judged_by) == (outcome, "evidence")
    assert "Final answer: 1987" in seen[0] and "opened in 1987" in seen[0]


def test_an_import_the_judge_cannot_tell_or_the_spec_drops_is_a_failure_with_a_reason(tmp_path: Path) -> None:
    records, (failure,) = run_stage(
        import_ctx(tmp_path, lambda m, s: {"verdict": "cannot tell", "rationale": "thin"})
    )
    assert records == [] and failure.error_kind == "unjudged" and "could not tell" in failure.message
    records, (failure,) = run_stage(import_ctx(tmp_path, no_judge, unjudged="drop"))
    assert records == [] and failure.error_kind == "unjudged" and "t.jsonl:1" in failure.message
    (record,), _ = run_stage(import_ctx(tmp_path, no_judge, unjudged="keep"))
    assert (record.outcome, record.judged_by) == ("unknown", None)
