"""The `reasoning` stage (FAS, paper §2.2.3): two-step reasoning without tools, judged.

For each question:

1. **step 1** decomposes the question and answers it speculatively from the model's own
   knowledge (A1);
2. **step 2** is given the question's source statements, each with its time and source
   URL (a navigation question's answer is a URL), and refines step 1 into the final answer
   (A2), fixing wrong facts and logical errors.

Two filters follow. The first compares A2 with the gold answer: normalized exact, then
numeric matching (``synth.answers``), and only when those are inconclusive the LLM judge;
a ``report`` answer is graded by the rubric judge against its cited statements
(``synth.judges.build_rubric_messages``). ``decided_by`` says which settled it. The second,
on correct answers only, checks the reasoning length — limits that grow with the number of
statements the question chains (``max_reasoning_chars`` + ``reasoning_chars_per_hop`` per
statement beyond the first) — and that step 2 arrives at its final answer: normalized
containment or a paraphrase first, the judge for what those leave open.

The rendered text carries its evidence: question, the cited statements with time and URL,
step 1, step 2, answer (``synth.render.fas.render_reasoning``).

Every sample stays in the shards for statistics; ``correct`` is true, and ``text`` set, only
for samples that pass both filters; ``reject_reason`` names the filter that stopped the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    model_validator,
)

from synth.answers import check_consistency, match_answers, mentions_answer, stated_answer
from synth.ids import record_id
from synth.judges import AnswerVerdict, RubricVerdict, build_judge_messages, build_rubric_messages
from synth.knowledge import format_statements, statements_for_questions
from synth.llm.base import LLM, LLMError, Message
from synth.llm.config import completion_cap
from synth.records import Failure, MemoryRecord, QuestionRecord, ReasoningRecord
from synth.render.fas import render_reasoning
from synth.stage import Stage, StageContext, StageOutput, Verdict


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    judge: bool = Field(True, description="ask the LLM judge when exact/numeric matching is inconclusive")
    max_statements: PositiveInt = Field(12, description="source statements given to step 2, at most")
    min_step_chars: PositiveInt = Field(
        20, description="second filter: each step's reasoning has at least this many characters"
    )
    max_reasoning_chars: PositiveInt = Field(
        6000,
        description="second filter: both steps together have at most this many characters for a "
        "one-statement question (see reasoning_chars_per_hop)",
    )
    reasoning_chars_per_hop: NonNegativeInt = Field(
        3000,
        description="second filter: characters added to max_reasoning_chars per cited statement beyond "
        "the first (multi-hop and report reasoning is longer by nature)",
    )
    report_min_coverage: float = Field(
        0.75, gt=0, le=1, description="share of a report's rubric points its answer must state to be correct"
    )
    numeric_rel_tol: NonNegativeFloat = Field(
        1e-6, description="relative tolerance of numeric answer matching"
    )
    max_tokens: PositiveInt | None = Field(
        None, description="completion cap of each step call, at most llm.max_tokens; null = llm.max_tokens"
    )
    judge_max_tokens: PositiveInt | None = Field(
        128,
        # A verdict is ~40 tokens; small models keep writing until the cap (NOTES.md).
        description="completion cap of the judge call, at most judge_llm.max_tokens; null = judge_llm.max_tokens",
    )


# Why a sample is not kept (ReasoningRecord.reject_reason); None for kept samples.
RejectReason = Literal["wrong_answer", "unverified", "too_short", "too_long", "answer_inconsistent"]


# ---------------------------------------------------------------------------
# Prompts (their text is hashed into the stage's prompt fingerprint, checked on resume)
# ---------------------------------------------------------------------------


STEP1_SYSTEM = """Answer the question from your own knowledge, without tools. Split it into sub-questions, answer each, and end with "So the answer is ...".
Reply with one JSON object: {"reasoning": "your step-by-step reasoning", "answer": "short answer"}"""
STEP1_EXAMPLE_USER = "Question: In which year was the inventor of the telephone born?"
STEP1_EXAMPLE_REPLY = (
    '{"reasoning": "Sub-questions: (1) Who invented the telephone? (2) When was that person born? '
    '(1) Alexander Graham Bell. (2) Around 1850. So the answer is 1850.", "answer": "1850"}'
)

STEP2_SYSTEM = """You get facts and an earlier attempt at a question. Each fact says when it holds and the web page it comes from. Check each step of the attempt against the facts, fix wrong facts and logical errors, and end with "So the answer is ...". When the question asks for a page, the answer is that page's URL.
Reply with one JSON object: {"reasoning": "the corrected reasoning", "final_answer": "the answer"}"""
STEP2_USER = """Facts:
{statements}
Question: {question}
Earlier attempt: {step1}
Earlier answer: {answer1}"""
STEP2_EXAMPLE_USER = STEP2_USER.format(
    statements="- Alexander Graham Bell was born in Edinburgh, Scotland, in 1847. "
    "(time: 1847; source: https://history.example/bell)\n"
    "- Bell was granted the first US patent for the telephone in 1876. "
    "(time: 1876; source: https://history.example/telephone-patent)",
    question="In which year was the inventor of the telephone born?",
    step1="Sub-questions: (1) Who invented the telephone? (2) When was that person born? "
    "(1) Alexander Graham Bell. (2) Around 1850. So the answer is 1850.",
    answer1="1850",
)
STEP2_EXAMPLE_REPLY = (
    '{"reasoning": "(1) The facts confirm that Alexander Graham Bell patented the telephone. (2) The birth year '
    'was a guess; the facts say Bell was born in 1847. So the answer is 1847.", "final_answer": "1847"}'
)

def _clip(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def build_step1_messages(question: str) -> list[Message]:
    """Step 1: decompose and answer speculatively, with a one-shot example."""
    return [
        {"role": "system", "content": STEP1_SYSTEM},
        {"role": "user", "content": STEP1_EXAMPLE_USER},
        {"role": "assistant", "content": STEP1_EXAMPLE_REPLY},
        {"role": "user", "content": f"Question: {question}"},
    ]


def build_step2_messages(
    question: str, statements: Sequence[MemoryRecord], step1: str, answer1: str, cfg: ReasoningConfig
) -> list[Message]:
    """Step 2: the statements and step 1, to be checked and refined into the final answer."""
    user = STEP2_USER.format(
        statements=format_statements(statements, cfg.max_statements),
        question=question,
        step1=_clip(step1, 2000),
        answer1=_clip(answer1, 300),
    )
    return [
        {"role": "system", "content": STEP2_SYSTEM},
        {"role": "user", "content": STEP2_EXAMPLE_USER},
        {"role": "assistant", "content": STEP2_EXAMPLE_REPLY},
        {"role": "user", "content": user},
    ]


# ---------------------------------------------------------------------------
# Reply schemas (validated by the LLM client; extra keys ignored, common aliases accepted)
# ---------------------------------------------------------------------------


def _as_text(value: Any) -> Any:
    if isinstance(value, list):  # reasoning written as a list of steps
        return "\n".join(str(v) for v in value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _take_alias(data: dict[str, Any], field: str, aliases: tuple[str, ...]) -> None:
    if field not in data:
        for alias in aliases:
            if alias in data:
                data[field] = data.pop(alias)
                break
    if field in data:
        data[field] = _as_text(data[field])


class Step1Draft(BaseModel):
    """Step 1's reply: reasoning from the model's own knowledge and the speculative answer A1."""

    model_config = ConfigDict(extra="ignore")
    reasoning: str = Field(min_length=1, description="decomposition and step-by-step reasoning")
    answer: str = Field(min_length=1, description="the speculative answer A1")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            _take_alias(data, "reasoning", ("step1", "thought", "thinking", "analysis"))
            _take_alias(data, "answer", ("final_answer", "a1"))
        return data


class Step2Draft(BaseModel):
    """Step 2's reply: the refined reasoning and the final answer A2."""

    model_config = ConfigDict(extra="ignore")
    reasoning: str = Field(min_length=1, description="the checked and corrected reasoning")
    final_answer: str = Field(min_length=1, description="the final answer A2")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            _take_alias(data, "reasoning", ("step2", "thought", "thinking", "analysis"))
            _take_alias(data, "final_answer", ("answer", "a2"))
        return data


# ---------------------------------------------------------------------------
# One question
# ---------------------------------------------------------------------------


def max_reasoning_chars(cfg: ReasoningConfig, hops: int) -> int:
    """The length limit of both steps for a question that cites ``hops`` statements."""
    return cfg.max_reasoning_chars + cfg.reasoning_chars_per_hop * max(0, hops - 1)


def length_problem(step1: str, step2: str, hops: int, cfg: ReasoningConfig) -> RejectReason | None:
    """``too_short`` / ``too_long`` against the limits for ``hops`` cited statements, or None."""
    if min(len(step1.strip()), len(step2.strip())) < cfg.min_step_chars:
        return "too_short"
    if len(step1) + len(step2) > max_reasoning_chars(cfg, hops):
        return "too_long"
    return None


def second_filter(
    step1: str, step2: str, final_answer: str, cfg: ReasoningConfig, hops: int = 1
) -> RejectReason | Literal["inconclusive"] | None:
    """Length bounds and answer consistency, without a model: None when the sample passes,
    ``inconclusive`` when only the judge can tell whether step 2 arrives at ``final_answer``."""
    problem = length_problem(step1, step2, hops, cfg)
    if problem is not None:
        return problem
    verdict = check_consistency(step2, final_answer)
    if verdict == "consistent":
        return None
    return "answer_inconsistent" if verdict == "inconsistent" else "inconclusive"


def _failure(question: QuestionRecord, step: str, err: LLMError) -> Failure:
    return Failure(
        input_ids=[question.id], error_kind=err.kind, message=f"{step}: {err}", raw_output=err.raw_output
    )


async def reason_question(
    question: QuestionRecord,
    statements: Sequence[MemoryRecord],
    cfg: ReasoningConfig,
    llm: LLM,
    judge_llm: LLM,
    run_id: str,
) -> ReasoningRecord | Failure:
    """Both steps and both filters for one question; a record (kept or not) or a Failure."""
    if question.knowledge_ids and not statements:
        return Failure(
            input_ids=[question.id],
            error_kind="missing_knowledge",
            message=f"none of the {len(question.knowledge_ids)} knowledge_ids is in the memory stage",
        )
    try:
        draft1 = await llm.complete(
            build_step1_messages(question.question), Step1Draft, stage="reasoning", max_tokens=cfg.max_tokens
        )
    except LLMError as err:
        return _failure(question, "step 1", err)
    reasoning1, answer1 = draft1.reasoning.strip(), draft1.answer.strip()
    try:
        draft2 = await llm.complete(
            build_step2_messages(question.question, statements, reasoning1, answer1, cfg),
            Step2Draft,
            stage="reasoning",
            max_tokens=cfg.max_tokens,
        )
    except LLMError as err:
        return _failure(question, "step 2", err)
    step2, final_answer = draft2.reasoning.strip(), draft2.final_answer.strip()
    # Step 1's text carries A1; spell it out when the reasoning did not.
    step1 = (
        reasoning1 if mentions_answer(reasoning1, answer1) else f"{reasoning1}\nTentative answer: {answer1}"
    )

    # First filter: the final answer against the gold one, cheapest decider first.
    try:
        reject, decided_by = await first_filter(question, statements, final_answer, cfg, judge_llm)
    except LLMError as err:
        return _failure(question, "reasoning judge", err)
    # Second filter, on correct answers only: the paper filters the judge's survivors.
    if reject is None:
        hops = max(1, len(question.knowledge_ids))
        second = second_filter(reasoning1, step2, final_answer, cfg, hops)
        if second == "inconclusive":
            try:
                second = await judged_consistency(question.question, step2, final_answer, cfg, judge_llm)
            except LLMError as err:
                return _failure(question, "consistency judge", err)
        reject = second

    params = {
        "prompt": STAGE.prompt_fingerprint,
        "model": llm.model_name,
        "judge_model": judge_llm.model_name if cfg.judge else None,
    }
    record = ReasoningRecord(
        id=record_id(
            "reasoning", [question.id], params, {"step1": step1, "step2": step2, "final_answer": final_answer}
        ),
        run_id=run_id,
        parent_ids=[question.id],
        model=llm.model_name,
        question_id=question.id,
        step1=step1,
        step2=step2,
        final_answer=final_answer,
        correct=reject is None,
        decided_by=decided_by,
        reject_reason=reject,
        prompt_fingerprint=STAGE.prompt_fingerprint,
    )
    if record.correct:
        record.text = render_reasoning(record, question.question, statements)
    return record


async def first_filter(
    question: QuestionRecord,
    statements: Sequence[MemoryRecord],
    final_answer: str,
    cfg: ReasoningConfig,
    judge_llm: LLM,
) -> tuple[RejectReason | None, str | None]:
    """(why the final answer is not accepted or None, what decided it). Raises LLMError.

    A report is graded by the rubric judge against its cited statements; any other answer by
    exact and numeric matching first, the answer judge for what they leave open.
    """
    if question.style == "report" and statements:
        if not cfg.judge:
            return "unverified", None
        points = [s.statement for s in statements]
        verdict = await judge_llm.complete(
            build_rubric_messages(question.question, points, final_answer),
            RubricVerdict,
            stage="reasoning",
            max_tokens=cfg.judge_max_tokens,
        )
        ok = not verdict.contradiction and verdict.coverage(len(points)) >= cfg.report_min_coverage
        return (None if ok else "wrong_answer"), "rubric"
    match = match_answers(final_answer, question.answer, rel_tol=cfg.numeric_rel_tol)
    if match.verdict != "inconclusive":
        return (None if match.verdict == "match" else "wrong_answer"), match.decided_by
    if not cfg.judge:
        return "unverified", None
    verdict = await judge_llm.complete(
        build_judge_messages(question.question, question.answer, final_answer),
        AnswerVerdict,
        stage="reasoning",
        max_tokens=cfg.judge_max_tokens,
    )
    return (None if verdict.correct else "wrong_answer"), "judge"


async def judged_consistency(
    question: str, step2: str, final_answer: str, cfg: ReasoningConfig, judge_llm: LLM
) -> RejectReason | None:
    """The answer judge on what step 2 states against the final answer (same meaning?).

    Only asked when containment and paraphrase checks leave it open; with ``judge: false``
    such a sample is ``answer_inconsistent``. Raises LLMError.
    """
    if not cfg.judge:
        return "answer_inconsistent"
    stated = stated_answer(step2) or _clip(step2, 600)
    verdict = await judge_llm.complete(
        build_judge_messages(question, final_answer, stated),
        AnswerVerdict,
        stage="reasoning",
        max_tokens=cfg.judge_max_tokens,
    )
    return None if verdict.correct else "answer_inconsistent"


async def reason(
    questions: Sequence[QuestionRecord],
    statements: Sequence[Sequence[MemoryRecord]],
    cfg: ReasoningConfig,
    llm: LLM,
    judge_llm: LLM,
    run_id: str,
) -> list[ReasoningRecord | Failure]:
    """Every question, concurrently (the LLM client bounds concurrency); results in input order."""
    return list(
        await asyncio.gather(
            *(
                reason_question(q, s, cfg, llm, judge_llm, run_id)
                for q, s in zip(questions, statements, strict=True)
            )
        )
    )


class ReasoningStage(Stage[ReasoningConfig, QuestionRecord]):
    """Map stage over `questions` units: one reasoning record or failure per question."""

    config_type = ReasoningConfig
    record_type = ReasoningRecord
    verdict = Verdict(accepted_sql="correct", rejected_sql="NOT correct")
    summary_fields = ("correct", "final_answer", "decided_by")
    shared_prompt_modules = ('synth.judges',)
    name = "reasoning"
    upstream = ("questions",)
    reads = ("memory",)

    async def process(self, items: Sequence[QuestionRecord], ctx: StageContext) -> StageOutput:
        cfg = self.config(ctx.spec)
        cfg = cfg.model_copy(
            update={
                "max_tokens": completion_cap(cfg.max_tokens, ctx.spec.llm.max_tokens),
                "judge_max_tokens": completion_cap(cfg.judge_max_tokens, ctx.spec.effective_judge_llm.max_tokens),
            }
        )
        statements = statements_for_questions(ctx, [q.knowledge_ids for q in items])
        out = StageOutput()
        for result in await reason(items, statements, cfg, ctx.llm, ctx.judge_llm, ctx.run_id):
            (out.failures if isinstance(result, Failure) else out.records).append(result)
        return out


STAGE = ReasoningStage()
