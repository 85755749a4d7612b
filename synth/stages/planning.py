"""The `planning` stage (FAS, paper §2.2.2): analysis + predicted first action, judged.

For each question, one LLM call writes a problem analysis (decomposition, the information
needed, a plan) and predicts the agent's first action: a tool call from ``synth.toolset``
or a direct answer. The action is never executed. Diversity comes from the K
differently-styled questions per knowledge cluster made upstream, not from sampling.

Then, in order:

1. the action is checked against the tool set (name and argument shape); a failure is
   ``invalid_tool`` with a rationale starting "tool check:" and costs no judge call (the
   judge may also answer ``invalid_tool``; the prefix tells the two apart);
2. the judge, given the question's source statements, accepts or rejects the sample with one
   reason of DESIGN §1 and a one-sentence rationale (``judge: false`` accepts every sample
   that passed step 1).

Every sample stays in the shards with its verdict, so acceptance by reason is one query;
only accepted ones get CPT ``text``. An LLM error on a question becomes a ``Failure`` row for
that question and never stops the unit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from synth.ids import record_id
from synth.knowledge import format_statements, statements_for_questions
from synth.llm.base import LLM, LLMError, Message
from synth.llm.config import completion_cap
from synth.records import Failure, MemoryRecord, PlanningReason, PlanningRecord, QuestionRecord, ToolAction
from synth.render.fas import render_planning
from synth.stage import Stage, StageContext, StageOutput, Verdict
from synth.toolset import FLAT_ARGUMENT, TOOL_DESCRIPTIONS, TOOLS, normalize_arguments, validate_tool_call


class PlanningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    judge: bool = Field(
        True, description="run the LLM judge; false accepts every sample that passes the tool check"
    )
    tools: list[str] = Field(
        default_factory=lambda: list(TOOLS),
        min_length=1,
        description="tools the predicted first action may call",
    )
    allow_direct_answer: bool = Field(True, description="a direct answer (no tool) is a valid first action")
    max_statements: PositiveInt = Field(12, description="source statements shown to the judge, at most")
    max_tokens: PositiveInt | None = Field(
        None, description="completion cap of the planning call, at most llm.max_tokens; null = llm.max_tokens"
    )
    judge_max_tokens: PositiveInt | None = Field(
        128,
        # A verdict is ~40 tokens; small models keep writing until the cap (NOTES.md).
        description="completion cap of the judge call, at most judge_llm.max_tokens; null = judge_llm.max_tokens",
    )

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, v: list[str]) -> list[str]:
        unknown = [t for t in v if t not in TOOLS]
        if unknown:
            raise ValueError(f"unknown tool(s) {', '.join(unknown)}; tools are {', '.join(TOOLS)}")
        return v


# ---------------------------------------------------------------------------
# Prompts (their text is hashed into the stage's prompt fingerprint, checked on resume)
# ---------------------------------------------------------------------------


# The pseudo-tool a direct answer is written as, in the model's reply only.
ANSWER_TOOL = "answer"

# The JSON shape is shown only by the one-shot example. Probed on SmolLM2-135M (greedy,
# quickstart-style questions): with the shape also spelled out in the system prompt it
# dropped "analysis" in 2 of 3 replies (5 of 5 with a list of the keys); with the example
# alone it kept "analysis" in 5 of 5.
PLAN_SYSTEM = """You plan the first step of a research agent: first analyze the question (what it asks, the facts it needs, a plan), then choose the first tool call.
Tools:
{tools}
The tool is not run. Reply in JSON like the example."""

PLAN_EXAMPLE_QUESTION = "Question: In which city was the founder of the company that makes the iPhone born?"
# Short on purpose: the model imitates the example's length. With a longer example the
# analysis ran past the quickstart's 192-token cap (truncated JSON) in 3 of 4 probe
# questions; with this one in 1 of 4.
# The queries name only what the question gives: an example that searches for the bridge
# entity (the founder's name) or the answer teaches the model to plan with facts it has not
# found yet.
PLAN_EXAMPLE_REPLY = (
    '{"analysis": "I need the company that makes the iPhone, its founder, and his birthplace. Plan: find '
    'the founder, then where he was born.", "tool": "search", "arguments": {"query": ["who founded the '
    'company that makes the iPhone"]}}'
)

JUDGE_SYSTEM = """You check the first step a research agent planned for a question. The agent has NOT seen the facts below: they are given only to you, to check the plan. A search for something the facts state but the question does not is needed, not unnecessary.
Reply with one JSON object: {"reason": "label", "rationale": "one sentence"}
Labels:
accepted - the analysis is right and the action would get the facts the question needs
content_inconsistency - the analysis or action contradicts the facts or misreads the question
search_unnecessary - the answer is common knowledge: someone could answer correctly without the facts and without any tool
logic_discontinuity - the plan's steps do not follow from each other, or the action does not follow from the plan
invalid_tool - the chosen tool cannot do what the plan asks
other - any other problem"""

# Two examples, one of each verdict, so the judge copies the format and not a verdict. The
# accepted plan searches only with what the question gives (no founder's name, no city):
# an example whose query names the bridge entity or the answer would teach the judge that
# plans may use facts the agent has not found yet.
JUDGE_EXAMPLES: tuple[tuple[str, str, str], ...] = (
    (
        "I need the company that makes the iPhone, its founder, and his birthplace. Plan: find the founder, "
        "then where he was born.",
        '{"name": "search", "arguments": {"query": ["who founded the company that makes the iPhone"]}}',
        '{"reason": "accepted", "rationale": "The plan follows the question and searches for the fact it needs '
        'first."}',
    ),
    (
        "The iPhone is made by Samsung, so I need the birthplace of Samsung's founder.",
        '{"name": "search", "arguments": {"query": ["Samsung founder birthplace"]}}',
        '{"reason": "content_inconsistency", "rationale": "The iPhone is made by Apple, not Samsung."}',
    ),
)
JUDGE_EXAMPLE_FACTS = """- The iPhone is made by Apple.
- Apple was founded by Steve Jobs, Steve Wozniak and Ronald Wayne.
- Steve Jobs was born in San Francisco."""
JUDGE_EXAMPLE_QUESTION = PLAN_EXAMPLE_QUESTION.removeprefix("Question: ")
JUDGE_EXAMPLE_ANSWER = "San Francisco"

JUDGE_USER = """Facts:
{statements}
Question: {question}
Correct answer: {answer}
Analysis: {analysis}
First action: {action}"""


def _tool_list(tools: Sequence[str], allow_direct_answer: bool) -> str:
    lines = [f"- {name}: {TOOL_DESCRIPTIONS[name]}" for name in tools]
    if allow_direct_answer:
        lines.append(f'- {ANSWER_TOOL}: answer directly, without a tool. Arguments: {{"answer": "..."}}')
    return "\n".join(lines)


def build_plan_messages(question: str, cfg: PlanningConfig) -> list[Message]:
    """The planning call: instructions and tool list, a one-shot example, the question."""
    return [
        {
            "role": "system",
            "content": PLAN_SYSTEM.format(tools=_tool_list(cfg.tools, cfg.allow_direct_answer)),
        },
        {"role": "user", "content": PLAN_EXAMPLE_QUESTION},
        {"role": "assistant", "content": PLAN_EXAMPLE_REPLY},
        {"role": "user", "content": f"Question: {question}"},
    ]


def _clip(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def describe_action(action: ToolAction | None, answer: str | None) -> str:
    """The first action as the judge reads it: the tool-call JSON, or the direct answer."""
    if action is not None:
        return json.dumps({"name": action.tool, "arguments": action.arguments}, ensure_ascii=False)
    return f"answer directly: {answer}"


def build_judge_messages(
    question: QuestionRecord,
    statements: Sequence[MemoryRecord],
    analysis: str,
    action_text: str,
    cfg: PlanningConfig,
) -> list[Message]:
    """The judge call: label definitions, one accepted and one rejected example, then this sample."""
    user = JUDGE_USER.format(
        statements=format_statements(statements, cfg.max_statements),
        question=question.question,
        answer=question.answer,
        analysis=_clip(analysis, 1500),
        action=_clip(action_text, 800),
    )
    messages: list[Message] = [{"role": "system", "content": JUDGE_SYSTEM}]
    for ex_analysis, ex_action, ex_reply in JUDGE_EXAMPLES:
        ex_user = JUDGE_USER.format(
            statements=JUDGE_EXAMPLE_FACTS,
            question=JUDGE_EXAMPLE_QUESTION,
            answer=JUDGE_EXAMPLE_ANSWER,
            analysis=ex_analysis,
            action=ex_action,
        )
        messages += [{"role": "user", "content": ex_user}, {"role": "assistant", "content": ex_reply}]
    return [*messages, {"role": "user", "content": user}]


# ---------------------------------------------------------------------------
# Reply schemas (validated by the LLM client; tolerant of the shapes small models produce)
# ---------------------------------------------------------------------------


class PlanDraft(BaseModel):
    """The planning call's reply.

    ``tool`` is any string and ``arguments`` any JSON value on purpose: an unknown tool or
    malformed arguments must reach the tool check and be recorded as ``invalid_tool``, not
    vanish as unparseable output. Extra keys are ignored (small models add some).
    """

    model_config = ConfigDict(extra="ignore")
    analysis: str = Field(
        min_length=1, description="what the question asks, the facts it needs, a short plan"
    )
    tool: str = Field("", description=f"a tool name, or '{ANSWER_TOOL}' for a direct answer")
    # Validated as any JSON value (see above), but the schema sent as ``response_format``
    # asks for a flat object: a guided decoder (the embedded server, vLLM) then cannot nest
    # objects without end, which the 135M model did until the token cap cut every planning
    # reply of a preview (`{"query": {"query": {"query": …`).
    arguments: Any = Field(
        None,
        description="the tool's arguments (a JSON object)",
        json_schema_extra={"type": "object", "additionalProperties": FLAT_ARGUMENT},
    )
    answer: str | None = Field(None, description="the direct answer, when tool is 'answer'")

    @model_validator(mode="before")
    @classmethod
    def _flatten_action(cls, data: Any) -> Any:
        # Accept {"action": {"name"|"tool": …, "arguments": …}}, {"name": …} and "thought"/"plan"
        # for "analysis" as well: shapes small models fall back to.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        action = data.pop("action", None)
        if isinstance(action, dict):
            data.setdefault("tool", action.get("tool", action.get("name", "")))
            data.setdefault("arguments", action.get("arguments"))
        elif isinstance(action, str) and "tool" not in data:
            data["tool"] = action
        if "tool" not in data and "name" in data:
            data["tool"] = data.pop("name")
        if "analysis" not in data:
            for alias in ("thought", "thinking", "plan", "reasoning"):
                if alias in data:
                    data["analysis"] = data.pop(alias)
                    break
        if data.get("tool") is None:
            data["tool"] = ""
        if isinstance(data.get("analysis"), list):  # a plan written as a list of steps
            data["analysis"] = "\n".join(str(step) for step in data["analysis"])
        if isinstance(data.get("answer"), int | float):
            data["answer"] = str(data["answer"])
        return data


_REASON_SYNONYMS: dict[str, str] = {
    "accept": "accepted",
    "yes": "accepted",
    "ok": "accepted",
    "correct": "accepted",
    "content_inconsistent": "content_inconsistency",
    "inconsistent": "content_inconsistency",
    "inconsistency": "content_inconsistency",
    "search_necessity": "search_unnecessary",
    "unnecessary_search": "search_unnecessary",
    "unnecessary": "search_unnecessary",
    "logical_discontinuity": "logic_discontinuity",
    "logic_discontinuous": "logic_discontinuity",
    "discontinuity": "logic_discontinuity",
    "invalid": "invalid_tool",
    "reject": "other",
    "rejected": "other",
}


class PlanVerdict(BaseModel):
    """The judge's reply: one reason of DESIGN §1 (``accepted`` or why not) and a rationale."""

    model_config = ConfigDict(extra="ignore")
    reason: PlanningReason = Field(
        description="accepted | content_inconsistency | search_unnecessary | "
        "logic_discontinuity | invalid_tool | other"
    )
    rationale: str = Field("", description="one sentence saying why")

    @model_validator(mode="before")
    @classmethod
    def _normalize_reason(cls, data: Any) -> Any:
        # Spelling variants ("Content inconsistency", "search necessity") map to the labels;
        # anything else stays as written and fails validation (an invalid verdict, retried).
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "reason" not in data:
            for alias in ("label", "verdict", "decision"):
                if alias in data:
                    data["reason"] = data.pop(alias)
                    break
        if isinstance(data.get("reason"), str):
            key = "_".join(data["reason"].strip().lower().replace("-", " ").split())
            data["reason"] = _REASON_SYNONYMS.get(key, key)
        if data.get("rationale") is None:
            data["rationale"] = ""
        return data


# ---------------------------------------------------------------------------
# The tool check
# ---------------------------------------------------------------------------


class CheckedAction(BaseModel):
    """A draft's first action after the tool check: exactly one of action/answer, or a problem."""

    model_config = ConfigDict(extra="forbid")
    action: ToolAction | None = None
    answer: str | None = None
    problem: str | None = Field(None, description="why the action is invalid_tool; None when valid")


def check_action(draft: PlanDraft, cfg: PlanningConfig) -> CheckedAction:
    """Check the predicted action against the tool set (no LLM involved)."""
    tool = draft.tool.strip().lower()
    if tool == ANSWER_TOOL:
        text = draft.answer
        if text is None and isinstance(draft.arguments, dict):
            text = draft.arguments.get("answer")
        text = str(text).strip() if text is not None else ""
        if not cfg.allow_direct_answer:
            return CheckedAction(
                answer=text or None, problem="direct answers are disabled (allow_direct_answer)"
            )
        if not text:
            return CheckedAction(problem="a direct answer without answer text")
        return CheckedAction(answer=text)
    if not tool:
        return CheckedAction(problem="no tool named and no direct answer")
    arguments = draft.arguments
    if isinstance(arguments, str):  # double-encoded arguments are a common near-miss
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return CheckedAction(
            action=ToolAction(tool=tool, arguments={}),
            problem=f"{tool}: arguments must be a JSON object, got {_clip(json.dumps(arguments), 200)}",
        )
    action = ToolAction(tool=tool, arguments=normalize_arguments(tool, arguments))
    return CheckedAction(action=action, problem=validate_tool_call(action, allowed=cfg.tools))


# ---------------------------------------------------------------------------
# One question
# ---------------------------------------------------------------------------


def _failure(question: QuestionRecord, step: str, err: LLMError) -> Failure:
    return Failure(
        input_ids=[question.id], error_kind=err.kind, message=f"{step}: {err}", raw_output=err.raw_output
    )


async def plan_question(
    question: QuestionRecord,
    statements: Sequence[MemoryRecord],
    cfg: PlanningConfig,
    llm: LLM,
    judge_llm: LLM,
    run_id: str,
) -> PlanningRecord | Failure:
    """Plan, check and judge one question; a record (accepted or not) or a Failure."""
    try:
        draft = await llm.complete(
            build_plan_messages(question.question, cfg),
            PlanDraft,
            stage="planning",
            max_tokens=cfg.max_tokens,
        )
    except LLMError as err:
        return _failure(question, "planning call", err)
    checked = check_action(draft, cfg)
    analysis = draft.analysis.strip()
    params = {
        "prompt": STAGE.prompt_fingerprint,
        "model": llm.model_name,
        "judge_model": judge_llm.model_name if cfg.judge else None,
    }
    content = {
        "analysis": analysis,
        "action": checked.action.model_dump() if checked.action else None,
        "answer": checked.answer,
    }

    def make(accepted: bool, reason: PlanningReason, rationale: str | None) -> PlanningRecord:
        record = PlanningRecord(
            id=record_id("planning", [question.id], params, content),
            run_id=run_id,
            parent_ids=[question.id],
            model=llm.model_name,
            question_id=question.id,
            analysis=analysis,
            action=checked.action,
            answer=checked.answer,
            accepted=accepted,
            reason=reason,
            rationale=rationale,
            prompt_fingerprint=STAGE.prompt_fingerprint,
        )
        if accepted:
            record.text = render_planning(record, question.question)
        return record

    if checked.problem is not None:
        return make(False, "invalid_tool", f"tool check: {checked.problem}")
    if not cfg.judge:
        return make(True, "accepted", "not judged (stages.planning.judge is false)")
    if question.knowledge_ids and not statements:
        return Failure(
            input_ids=[question.id],
            error_kind="missing_knowledge",
            message=f"none of the {len(question.knowledge_ids)} knowledge_ids is in the memory stage",
        )
    try:
        verdict = await judge_llm.complete(
            build_judge_messages(
                question, statements, analysis, describe_action(checked.action, checked.answer), cfg
            ),
            PlanVerdict,
            stage="planning",
            max_tokens=cfg.judge_max_tokens,
        )
    except LLMError as err:
        return _failure(question, "planning judge", err)
    return make(verdict.reason == "accepted", verdict.reason, verdict.rationale.strip() or None)


async def plan(
    questions: Sequence[QuestionRecord],
    statements: Sequence[Sequence[MemoryRecord]],
    cfg: PlanningConfig,
    llm: LLM,
    judge_llm: LLM,
    run_id: str,
) -> list[PlanningRecord | Failure]:
    """Every question, concurrently (the LLM client bounds concurrency); results in input order."""
    return list(
        await asyncio.gather(
            *(
                plan_question(q, s, cfg, llm, judge_llm, run_id)
                for q, s in zip(questions, statements, strict=True)
            )
        )
    )


class PlanningStage(Stage[PlanningConfig, QuestionRecord]):
    """Map stage over `questions` units: one planning record or failure per question."""

    config_type = PlanningConfig
    record_type = PlanningRecord
    verdict = Verdict(accepted_sql="accepted", rejected_sql="NOT accepted")
    summary_fields = ("accepted", "reason")
    name = "planning"
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
        statements = (
            statements_for_questions(ctx, [q.knowledge_ids for q in items])
            if cfg.judge
            else [[] for _ in items]
        )
        out = StageOutput()
        for result in await plan(items, statements, cfg, ctx.llm, ctx.judge_llm, ctx.run_id):
            (out.failures if isinstance(result, Failure) else out.records).append(result)
        return out


STAGE = PlanningStage()
