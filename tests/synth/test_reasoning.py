"""The reasoning stage: two steps, answer matching (exact, numeric, judge), the second filter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from synth.llm.base import LLMHTTPError, LLMInvalidOutput, LLMTimeout, Message
from synth.records import MemoryRecord, QuestionRecord, ReasoningRecord, records_to_table, table_to_records
from synth.render import tags
from synth.spec import parse_spec
from synth.stage import StageContext, StageOutput
from synth.stages import get_stage
from synth.stages.reasoning import STAGE, ReasoningStage, Step1Draft, Step2Draft
from testing.scripted_llm import ScriptedLLM

MEMORY = [
    MemoryRecord(
        id="m1", run_id="t", entity="Bell", statement="Alexander Graham Bell was born in 1847.", doc_id="d1"
    ),
    MemoryRecord(
        id="m2", run_id="t", entity="Bell", statement="Bell patented the telephone in 1876.", doc_id="d1"
    ),
    MemoryRecord(id="m3", run_id="t", entity="Edison", statement="Edison was born in 1847 too.", doc_id="d2"),
]

STEP1 = {
    "reasoning": "Sub-questions: (1) who invented the telephone? (2) when was he born? (1) Bell. (2) About 1850.",
    "answer": "1850",
}


def step2(final: str, reasoning: str | None = None) -> dict[str, str]:
    text = (
        reasoning
        or f"(1) The facts confirm Bell invented the telephone. (2) Bell was born then. So the answer is {final}."
    )
    return {"reasoning": text, "final_answer": final}


def question(
    qid: str = "q1", answer: str = "1847", knowledge_ids: list[str] | None = None, text: str | None = None
) -> QuestionRecord:
    return QuestionRecord(
        id=qid,
        run_id="t",
        style="numerical",
        question=text or "In which year was the inventor of the telephone born?",
        answer=answer,
        entities=["Bell"],
        knowledge_ids=["m1", "m2"] if knowledge_ids is None else knowledge_ids,
    )


def context(
    tmp_path: Path,
    step2_reply: Any,
    verdict: Any = None,
    reasoning: dict[str, Any] | None = None,
    step1_reply: Any = STEP1,
    memory: list[MemoryRecord] = MEMORY,
) -> tuple[StageContext, ScriptedLLM, ScriptedLLM]:
    """The LLM answers step 1 with ``step1_reply`` and step 2 with ``step2_reply`` (values or functions)."""

    def llm_fn(messages: list[Message], schema: Any) -> Any:
        reply = step1_reply if schema is Step1Draft else step2_reply
        assert schema in (Step1Draft, Step2Draft)
        return reply(messages) if callable(reply) else reply

    def judge_fn(messages: list[Message], schema: Any) -> Any:
        if verdict is None:
            raise AssertionError("the judge must not be called here")
        return verdict(messages) if callable(verdict) else verdict

    llm, judge = ScriptedLLM(llm_fn, model_name="reasoner"), ScriptedLLM(judge_fn, model_name="judge")
    spec = parse_spec({"name": "t", "stages": {"reasoning": reasoning or {}}})
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


def only_record(out: StageOutput) -> ReasoningRecord:
    assert out.failures == [] and len(out.records) == 1, out.failures
    record = out.records[0]
    assert isinstance(record, ReasoningRecord)
    return record


def test_stage_is_registered_as_a_map_stage_over_questions() -> None:
    stage = get_stage("reasoning")
    assert isinstance(stage, ReasoningStage) and stage.upstream == ("questions",) and not stage.barrier


# ---------------------------------------------------------------------------
# First filter: exact, numeric, judge
# ---------------------------------------------------------------------------


def test_exact_match_is_kept_without_a_judge_call_and_rendered(tmp_path: Path) -> None:
    ctx, llm, judge = context(tmp_path, step2("1847"))
    record = only_record(run([question()], ctx))
    assert (record.correct, record.decided_by, record.reject_reason) == (True, "exact", None)
    assert (
        record.final_answer == "1847"
        and record.prompt_fingerprint == STAGE.prompt_fingerprint
        and record.model == "reasoner"
    )
    assert record.parent_ids == ["q1"] and record.question_id == "q1"
    assert len(llm.calls) == 2 and judge.calls == []
    assert record.text is not None
    text = record.text
    assert (
        text.index("inventor of the telephone") < text.index("About 1850") < text.index("Bell was born then")
    )
    assert tags.find_answers(text) == ["1847"] and tags.find_tool_calls(text) == []


@pytest.mark.parametrize(
    ("final", "gold"),
    [
        ("4222000", "4,222 thousand"),
        ("4,222 thousand", "4222000"),
        ("$1.2 million", "1,200,000 USD"),
        ("298", "two hundred and ninety eight"),
    ],
)
def test_numeric_match_is_kept_and_says_numeric(tmp_path: Path, final: str, gold: str) -> None:
    ctx, _, judge = context(tmp_path, step2(final))
    record = only_record(run([question(answer=gold)], ctx))
    assert (record.correct, record.decided_by, record.reject_reason) == (True, "numeric", None)
    assert judge.calls == []


def test_numeric_mismatch_is_wrong_without_a_judge_call(tmp_path: Path) -> None:
    ctx, _, judge = context(tmp_path, step2("1850"))
    record = only_record(run([question()], ctx))
    assert (record.correct, record.decided_by, record.reject_reason, record.text) == (
        False,
        "numeric",
        "wrong_answer",
        None,
    )
    assert judge.calls == []


def test_inconclusive_answer_goes_to_the_judge_which_accepts(tmp_path: Path) -> None:
    ctx, _, judge = context(
        tmp_path, step2("the brigantine Mary Celeste"), {"correct": "yes", "rationale": "same ship"}
    )
    record = only_record(run([question(answer="Mary Celeste")], ctx))
    assert (record.correct, record.decided_by, record.reject_reason) == (True, "judge", None)
    assert record.text is not None
    prompt = judge.calls[0]["messages"][-1]["content"]
    assert "Gold answer: Mary Celeste" in prompt and "Answer to grade: the brigantine Mary Celeste" in prompt


def test_judge_rejection_is_kept_flagged_as_wrong_answer(tmp_path: Path) -> None:
    ctx, _, _ = context(tmp_path, step2("Thomas Edison"), {"correct": False, "rationale": "different person"})
    record = only_record(run([question(answer="Alexander Graham Bell")], ctx))
    assert (record.correct, record.decided_by, record.reject_reason, record.text) == (
        False,
        "judge",
        "wrong_answer",
        None,
    )


def test_judge_disabled_leaves_inconclusive_answers_unverified(tmp_path: Path) -> None:
    ctx, _, judge = context(tmp_path, step2("Thomas Edison"), verdict=None, reasoning={"judge": False})
    record = only_record(run([question(answer="Alexander Graham Bell")], ctx))
    assert (record.correct, record.decided_by, record.reject_reason, record.text) == (
        False,
        None,
        "unverified",
        None,
    )
    assert judge.calls == []


def test_judge_disabled_still_keeps_exact_matches(tmp_path: Path) -> None:
    ctx, _, _ = context(tmp_path, step2("1847"), verdict=None, reasoning={"judge": False})
    assert only_record(run([question()], ctx)).correct


# ---------------------------------------------------------------------------
# Second filter: length and answer consistency (on correct answers)
# ---------------------------------------------------------------------------


def test_too_short_reasoning_is_rejected(tmp_path: Path) -> None:
    ctx, _, _ = context(tmp_path, step2("1847", reasoning="So 1847."))
    record = only_record(run([question()], ctx))
    assert (record.correct, record.decided_by, record.reject_reason, record.text) == (
        False,
        "exact",
        "too_short",
        None,
    )


def test_too_long_reasoning_is_rejected(tmp_path: Path) -> None:
    long = "Bell was born in Edinburgh. " * 40 + "So the answer is 1847."
    cfg = {"max_reasoning_chars": 500, "reasoning_chars_per_hop": 300}
    ctx, _, _ = context(tmp_path, step2("1847", reasoning=long), reasoning=cfg)
    # Two cited statements: 500 + 300 characters allowed; the steps hold about 1,200.
    assert only_record(run([question()], ctx)).reject_reason == "too_long"


def test_the_length_limit_grows_with_the_statements_a_question_chains(tmp_path: Path) -> None:
    long = "Bell was born in Edinburgh. " * 40 + "So the answer is 1847."
    cfg = {"max_reasoning_chars": 500, "reasoning_chars_per_hop": 1000}
    ctx, _, _ = context(tmp_path, step2("1847", reasoning=long), reasoning=cfg)
    # 500 + 1,000 for the second statement: the same reasoning fits a two-hop question.
    assert only_record(run([question()], ctx)).correct


def test_step2_stating_another_answer_is_inconsistent(tmp_path: Path) -> None:
    ctx, _, _ = context(
        tmp_path, step2("1847", reasoning="Bell was born in Edinburgh. So the answer is 1850.")
    )
    record = only_record(run([question()], ctx))
    assert (record.correct, record.reject_reason) == (False, "answer_inconsistent")


def test_step2_never_reaching_its_answer_is_inconsistent_when_the_judge_says_so(tmp_path: Path) -> None:
    ctx, _, judge = context(
        tmp_path,
        step2("1847", reasoning="Bell invented the telephone and lived in Canada."),
        verdict={"correct": False, "rationale": "the reasoning names no year"},
    )
    assert only_record(run([question()], ctx)).reject_reason == "answer_inconsistent"
    # Containment could not tell: the judge compared what step 2 says with the final answer.
    (call,) = judge.calls
    assert "Gold answer: 1847" in call["messages"][-1]["content"]


def test_step2_never_reaching_its_answer_is_inconsistent_without_a_judge(tmp_path: Path) -> None:
    ctx, _, judge = context(
        tmp_path,
        step2("1847", reasoning="Bell invented the telephone and lived in Canada."),
        reasoning={"judge": False},
    )
    assert only_record(run([question()], ctx)).reject_reason == "answer_inconsistent"
    assert judge.calls == []


# ---------------------------------------------------------------------------
# What each step sees
# ---------------------------------------------------------------------------


def test_step2_gets_the_statements_and_step1_and_step1_carries_a1(tmp_path: Path) -> None:
    step1_without_answer = {
        "reasoning": "Sub-questions: who invented the telephone, and when was he born?",
        "answer": "1850",
    }
    ctx, llm, _ = context(tmp_path, step2("1847"), step1_reply=step1_without_answer)
    record = only_record(run([question(knowledge_ids=["m1"])], ctx))
    step1_prompt = llm.calls[0]["messages"][-1]["content"]
    assert "Bell was born in 1847" not in step1_prompt  # step 1 answers from the model's own knowledge
    step2_prompt = llm.calls[1]["messages"][-1]["content"]
    assert "Alexander Graham Bell was born in 1847." in step2_prompt
    assert "Edison was born" not in step2_prompt and "patented" not in step2_prompt
    assert "who invented the telephone" in step2_prompt and "Earlier answer: 1850" in step2_prompt
    assert record.step1.endswith("Tentative answer: 1850")


# ---------------------------------------------------------------------------
# Failures: every input ends as a record or a Failure
# ---------------------------------------------------------------------------


def test_llm_errors_at_any_call_become_failures_and_the_unit_goes_on(tmp_path: Path) -> None:
    def step1_reply(messages: list[Message]) -> Any:
        return LLMTimeout("step 1 timed out") if "broken step one" in messages[-1]["content"] else STEP1

    def step2_reply(messages: list[Message]) -> Any:
        if "broken step two" in messages[-1]["content"]:
            return LLMHTTPError("503 after retries")
        if "unparsable" in messages[-1]["content"]:
            return "So the answer is 1847, I think."  # no JSON object
        return step2("Alexander Bell" if "judge" in messages[-1]["content"] else "1847")

    def verdict(messages: list[Message]) -> Any:
        return LLMInvalidOutput("no verdict", raw_output="maybe?")

    items = [
        question("q1", text="broken step one?"),
        question("q2", text="broken step two?"),
        question("q3", text="broken judge?", answer="Alexander Graham Bell"),
        question("q4", text="unparsable?"),
        question("q5", text="fine?"),
    ]
    ctx, _, _ = context(tmp_path, step2_reply, verdict, step1_reply=step1_reply)
    out = run(items, ctx)
    assert [r.question_id for r in out.records] == ["q5"]  # type: ignore[attr-defined]
    kinds = {f.input_ids[0]: (f.error_kind, f.message.split(":")[0]) for f in out.failures}
    assert kinds == {
        "q1": ("timeout", "step 1"),
        "q2": ("http_error", "step 2"),
        "q3": ("invalid_output", "reasoning judge"),
        "q4": ("invalid_output", "step 2"),
    }
    assert next(f for f in out.failures if f.input_ids == ["q3"]).raw_output == "maybe?"


def test_question_whose_statements_are_all_missing_is_a_failure(tmp_path: Path) -> None:
    ctx, llm, _ = context(tmp_path, step2("1847"))
    out = run([question(knowledge_ids=["gone"])], ctx)
    assert [f.error_kind for f in out.failures] == ["missing_knowledge"] and llm.calls == []


# ---------------------------------------------------------------------------
# Ids, schema, reply tolerance
# ---------------------------------------------------------------------------


def test_ids_are_deterministic_and_records_roundtrip_through_arrow(tmp_path: Path) -> None:
    ctx, _, _ = context(tmp_path, lambda m: step2("1847" if "first" in m[-1]["content"] else "1850"))
    items = [question("q1", text="first?"), question("q2", text="second?")]
    out, again = run(items, ctx), run(items, ctx)
    assert [r.id for r in out.records] == [r.id for r in again.records]
    assert len({r.id for r in out.records}) == 2
    table = records_to_table(out.records, ReasoningRecord)
    assert table.column("correct").to_pylist() == [True, False]
    assert table.column("reject_reason").to_pylist() == [None, "wrong_answer"]
    assert table_to_records(table, ReasoningRecord) == out.records


def test_reply_aliases_of_small_models_are_accepted(tmp_path: Path) -> None:
    step1_alias = {"thought": ["who invented it?", "Bell, born about 1850."], "final_answer": 1850}
    step2_alias = {"step2": "Bell was born in 1847 per the facts. So the answer is 1847.", "answer": 1847}
    ctx, _, _ = context(tmp_path, step2_alias, step1_reply=step1_alias)
    record = only_record(run([question()], ctx))
    assert record.correct and record.final_answer == "1847"
    assert "who invented it?\nBell, born about 1850." in record.step1


# ---------------------------------------------------------------------------
# Evidence: step 2 sees time and URL, the text carries every cited statement
# ---------------------------------------------------------------------------

SOURCED = [
    MemoryRecord(
        id="n1", run_id="t", entity="Riverton", statement="Riverton's tourism page links to its transit authority.",
        doc_id="d1", time="2024", source_url="https://visit.example/riverton",
    ),
    MemoryRecord(
        id="n2", run_id="t", entity="Riverton Transit Authority",
        statement="The Riverton Transit Authority carried 96.3 million passengers in 2024.", doc_id="d2",
        time="2024", source_url="https://transit.example/ridership-2024",
    ),
]


def navigation_question() -> QuestionRecord:
    return QuestionRecord(
        id="qn", run_id="t", style="navigation",
        question="Start at https://visit.example/riverton. Which page do you reach from there that gives the "
        "transit authority's 2024 ridership?",
        answer="https://transit.example/ridership-2024", entities=["Riverton"], knowledge_ids=["n1", "n2"],
    )


def test_a_navigation_questions_step2_prompt_holds_the_urls_and_time(tmp_path: Path) -> None:
    url = "https://transit.example/ridership-2024"
    ctx, llm, _ = context(
        tmp_path, step2(url, reasoning=f"The second page states it. So the answer is {url}."), memory=SOURCED
    )
    record = only_record(run([navigation_question()], ctx))
    step2_prompt = llm.calls[1]["messages"][-1]["content"]
    assert "links to its transit authority. (time: 2024; source: https://visit.example/riverton)" in step2_prompt
    # The time is not repeated when the statement states it.
    assert f"96.3 million passengers in 2024. (source: {url})" in step2_prompt
    assert record.correct and record.decided_by == "exact"


def test_the_rendered_text_holds_every_cited_statement_before_the_reasoning(tmp_path: Path) -> None:
    url = "https://transit.example/ridership-2024"
    ctx, _, _ = context(
        tmp_path, step2(url, reasoning=f"The second page states it. So the answer is {url}."), memory=SOURCED
    )
    text = only_record(run([navigation_question()], ctx)).text
    assert text is not None
    assert "[1] Riverton's tourism page links to its transit authority. (time: 2024; source: https://visit.example/riverton)" in text
    assert f"[2] {SOURCED[1].statement} (source: {url})" in text
    thought = tags.find_thoughts(text)[0]
    assert text.index(SOURCED[1].statement) < text.index(thought) < text.index("<answer>")


def report_question() -> QuestionRecord:
    return QuestionRecord(
        id="qr", run_id="t", style="report", question="Write a short report on Bell's life and invention.",
        answer="Bell was born in 1847 and patented the telephone in 1876.", entities=["Bell"],
        knowledge_ids=["m1", "m2"],
    )


@pytest.mark.parametrize(("covered", "correct"), [([True, True], True), ([True, False], False)])
def test_a_report_is_graded_point_by_point_by_the_rubric_judge(
    tmp_path: Path, covered: list[bool], correct: bool
) -> None:
    report = "Alexander Graham Bell, born in 1847, later patented the telephone (1876)."
    ctx, _, judge = context(
        tmp_path,
        step2(report, reasoning=f"Both facts check out. So the answer is {report}"),
        verdict={"covered": covered, "contradiction": False},
    )
    record = only_record(run([report_question()], ctx))
    assert (record.correct, record.decided_by) == (correct, "rubric")
    assert record.reject_reason == (None if correct else "wrong_answer")
    rubric_prompt = judge.calls[0]["messages"][-1]["content"]
    assert "1. Alexander Graham Bell was born in 1847." in rubric_prompt
    assert "2. Bell patented the telephone in 1876." in rubric_prompt


def test_a_report_that_contradicts_a_point_is_wrong(tmp_path: Path) -> None:
    report = "Bell was born in 1850 and patented the telephone in 1876."
    ctx, _, _ = context(
        tmp_path,
        step2(report, reasoning=f"So the answer is {report}"),
        verdict={"covered": [True, True], "contradiction": True},
    )
    assert only_record(run([report_question()], ctx)).reject_reason == "wrong_answer"


def test_the_stage_may_read_the_memory_its_questions_cite_and_nothing_else(tmp_path: Path) -> None:
    from synth.stage import UndeclaredReadError

    ctx, _, _ = context(tmp_path, step2("1847"))
    scoped = ctx.scoped_to(STAGE)
    assert only_record(run([question()], scoped)).correct  # the runner's scoped context
    with pytest.raises(UndeclaredReadError):
        scoped.read_stage("documents")
