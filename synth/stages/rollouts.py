"""The `rollouts` stage: a ReAct agent in an offline tool environment, plus trajectory import.

Two kinds of work item, prepared in one deterministic list (questions by id, then every
non-blank line of ``inputs.trajectories`` in file and line order):

* a **question** of the run: the agent answers it with the Tongyi DeepResearch ReAct tags,
  calling ``search`` / ``visit`` / ``python`` over the run's own documents
  (``synth.tools``); the final answer is judged against the gold answer (exact and numeric
  matching from ``synth.answers``, then the LLM judge when those are inconclusive);
* a **trajectory line**: imported (``synth.trajectories``), outcome from the file's own
  label, else judged against its gold answer when it has one, else (``unjudged``) judged by
  the judge LLM against the trajectory's own evidence — its tool responses — or dropped
  with a reason, or kept as ``unknown`` (such a record never enters the corpus).

Two profiles: ``short`` (the default: a few steps in a small context, for CPT stage 1) and
``long`` (``profile: long``: ~100 steps in a long context for stage 2's long HAS at 128K,
AgentFounder §3.1). The long profile fills in its own defaults (``LONG_PROFILE``; a key the spec sets
wins), searches an index holding every document of the run plus distractors (near
duplicates and same-entity pages, ``synth.tools.search``), and visits pages the way the
released Tongyi agent does: goal-conditioned evidence plus an LLM summary, with the raw
page kept in the step's ``raw`` field (``synth.tools.visit``).

Malformed model output never ends a rollout by itself: it becomes a tool response saying
what was wrong (as the released agent does), is counted by kind in the record's
``malformed`` field, and is *not* kept as a step, so the trace the corpus trains on holds
only well-formed steps. ``max_format_errors`` bounds how many such replies a rollout may
spend; after that the agent gets one last turn in which it may only answer. Tool *execution* problems (an endless loop, a missing page) are real steps: their
observation says what happened and the agent goes on.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from synth.answers import match_answers, mentions_answer
from synth.ids import record_id
from synth.inputs import resolve_globs
from synth.judges import AnswerVerdict, build_judge_messages
from synth.llm.base import LLM, LLMError, Message
from synth.records import Failure, JudgedBy, Outcome, RolloutRecord, ToolAction, TrajectoryStep
from synth.render import tags
from synth.render.traces import estimate_tokens, render_rollout
from synth.stage import ItemOrigin, Prepared, Stage, StageContext, StageOutput, Verdict
from synth.toolset import TOOL_DESCRIPTIONS, normalize_arguments, validate_tool_call
from synth.trajectories import TrajectoryFormatError, TrajectoryRef, load_trajectory, scan_trajectory_files

if TYPE_CHECKING:
    from synth.tools.environment import ToolEnvironment
    from synth.tools.visit import SummarizingVisit

ToolName = Literal["search", "visit", "python"]
log = logging.getLogger(__name__)

# What `profile: long` sets when the spec leaves a key out: research that needs many steps, an
# index with distractors, summarizing visits. The agent's context stops at half of stage 2's
# 128K window, not all of it: a trajectory's HAS text is its trace plus N alternatives at each
# of up to 100 steps (~150 tokens each), and it is that text which must fit the window.
LONG_PROFILE: dict[str, Any] = {
    "max_steps": 100,
    "max_context_tokens": 65536,
    "max_observation_chars": 8000,
    "visit_max_chars": 6000,
    "search_top_k": 10,
    "distractors": True,
    "visit_summary": True,
}


class RolloutsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    profile: Literal["short", "long"] = Field(
        "short",
        description="short: a few steps for CPT stage 1; long: long-horizon research for stage 2 (fills in "
        "LONG_PROFILE's settings the spec leaves out)",
    )
    max_steps: PositiveInt = Field(8, description="tool calls before the agent must answer")
    tools: list[ToolName] = Field(
        default_factory=lambda: ["search", "visit", "python"], description="tools offered to the agent"
    )
    max_questions: PositiveInt | None = Field(
        None, description="cap on questions answered (the first by id); null = all"
    )
    max_context_tokens: PositiveInt = Field(
        8192, description="estimated context size at which the agent is told to answer (SmolLM2 has 8k)"
    )
    max_format_errors: int = Field(
        3, ge=0, description="malformed replies a rollout may spend before it stops"
    )
    max_turn_tokens: PositiveInt | None = Field(
        None, description="completion cap per agent turn; null = llm.max_tokens"
    )
    max_observation_chars: PositiveInt = Field(
        3000, description="a tool response is cut to this many characters"
    )
    search_top_k: PositiveInt = Field(5, description="results per search query")
    visit_max_chars: PositiveInt = Field(4000, description="page text returned by visit, chosen for the goal")
    python_timeout_s: float = Field(10.0, gt=0, description="wall-clock limit of one python call")
    python_cpu_s: PositiveInt = Field(5, description="CPU-time limit of one python call (RLIMIT_CPU)")
    python_memory_mb: PositiveInt = Field(
        1024, description="address-space limit of one python call (RLIMIT_AS)"
    )
    allow_unisolated_python: bool = Field(
        False,
        description="run the python tool even where no sandbox (bubblewrap, user namespaces) works: "
        "model-written code can then read what the worker can; off = the tool is disabled there",
    )
    example_turns: bool = Field(
        True,
        description="open the conversation with a worked search-then-answer example (helps small models)",
    )
    judge: bool = Field(True, description="ask the judge LLM when exact/numeric matching is inconclusive")
    judge_max_tokens: PositiveInt | None = Field(192, description="completion cap of the judge call")
    distractors: bool = Field(
        False, description="search also finds near-duplicate and same-entity distractor pages (long profile)"
    )
    visit_summary: bool = Field(
        False,
        description="visit returns goal-conditioned evidence and an LLM summary, keeping the raw page in the "
        "step (long profile)",
    )
    visit_summary_max_tokens: PositiveInt | None = Field(256, description="completion cap of a visit summary")
    unjudged: Literal["evidence", "drop", "keep"] = Field(
        "evidence",
        description="imported trajectories with neither a label nor a gold answer: judged by the judge LLM "
        "against their own tool responses (evidence; with judge: false they stay unknown), dropped with a "
        "reason (drop), or kept with outcome unknown, never a corpus text (keep)",
    )
    judge_evidence_chars: PositiveInt = Field(
        12000, description="evidence shown to the evidence judge (passages about the question and answer)"
    )

    @model_validator(mode="before")
    @classmethod
    def _profile_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("profile") == "long":
            return {**LONG_PROFILE, **data}
        return data


class QuestionItem(BaseModel):
    """A question of the run, to be answered by the agent."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["question"] = "question"
    question_id: str
    question: str
    gold_answer: str


RolloutItem = Annotated[QuestionItem | TrajectoryRef, Field(discriminator="kind")]


# ---------------------------------------------------------------------------
# Prompt
# ---------------------------------------------------------------------------

SYSTEM_PROMPT = """You are a deep research assistant. Answer the user's question by thinking step by step and calling tools to find evidence.

# Tools
Call at most one tool per reply. The tools are:
<tools>
{tools}
</tools>

# Format
Think inside <think></think>, then either call a tool:
<tool_call>
{{"name": "<tool name>", "arguments": {{<arguments as JSON>}}}}
</tool_call>
and stop: the result comes back inside <tool_response></tool_response>.
Or, when you know the answer:
<answer>the short final answer</answer>

Example:
<think>I need the opening year of the bridge.</think>
<tool_call>
{{"name": "search", "arguments": {{"query": ["Kestrel Bay Bridge opening year"]}}}}
</tool_call>"""

FORCE_ANSWER = (
    "You have used all the tool calls (or context) you may use. Do not call another tool: "
    "give your final answer now as <think>your reasoning</think> <answer>your answer</answer>."
)


def build_system_prompt(tools: Sequence[str]) -> str:
    """The agent's system prompt, listing the offered tools with their argument shapes."""
    listing = "\n".join(f"- {name}: {TOOL_DESCRIPTIONS[name]}" for name in tools)
    return SYSTEM_PROMPT.format(tools=listing)


# A worked example as real chat turns: small models (the embedded SmolLM2-135M) copy a shown
# exchange far more reliably than they follow format rules. Measured on the quickstart
# questions: with the rules alone no reply used the tags; with a full example exchange
# (call, response, answer) the replies began with an imagined <tool_response>, copying the
# example's user turn; with this single question -> tool call pair, replies were tool calls.
# The example is about nothing in any corpus.
EXAMPLE_TURNS: list[Message] = [
    {"role": "user", "content": "How tall is the Orlan Tower?"},
    {
        "role": "assistant",
        "content": "<think>I need the height of the Orlan Tower.</think>\n<tool_call>\n"
        '{"name": "search", "arguments": {"query": ["Orlan Tower height"]}}\n</tool_call>',
    },
]


def build_agent_messages(question: str, cfg: RolloutsConfig) -> list[Message]:
    """The opening conversation: system prompt, the worked example (if enabled), the question."""
    example = EXAMPLE_TURNS if cfg.example_turns and "search" in cfg.tools else []
    return [
        {"role": "system", "content": build_system_prompt(cfg.tools)},
        *[dict(m) for m in example],
        {"role": "user", "content": question},
    ]


def context_tokens(messages: Sequence[Message]) -> int:
    return sum(estimate_tokens(str(m.get("content", ""))) + 4 for m in messages)


# ---------------------------------------------------------------------------
# Parsing one agent reply
# ---------------------------------------------------------------------------

MalformedKind = Literal[
    "no_action",
    "tool_call_as_prose",
    "bad_json",
    "bad_tool_call",
    "unknown_tool",
    "bad_arguments",
    "unclosed_tag",
    "imagined_tool_response",
]
_TAG_RE = re.compile(r"<(tool_call|answer)>")


@dataclass(frozen=True)
class ParsedTurn:
    """An agent reply: a tool call, an answer, or malformed (with the kind and what to tell the model)."""

    kind: Literal["tool", "answer", "malformed"]
    thought: str = ""
    action: ToolAction | None = None
    answer: str | None = None
    error_kind: MalformedKind | None = None
    error: str = ""
    context_text: str = ""  # what goes back into the conversation as the assistant turn


def _prose_call_re(tools: Sequence[str]) -> re.Pattern[str]:
    names = "|".join(re.escape(t) for t in tools)
    return re.compile(
        rf'"name"\s*:|"arguments"\s*:|\b(?:{names})\s*\(|\bcall(?:ing)?\s+(?:the\s+)?`?(?:{names})\b', re.I
    )


def _unclosed_call(text: str) -> tuple[str, str] | None:
    """A ``<tool_call>`` whose closing tag is missing but whose JSON object is complete: (payload, text).

    Endpoints configured with ``</tool_call>`` as a stop sequence drop the tag from the reply,
    and small models forget it; the JSON object's own end is an unambiguous boundary. The
    returned text is the reply up to the object, with the closing tag restored.
    """
    start = text.find("<tool_call>")
    if start < 0 or "<answer>" in text[:start]:
        return None
    brace = text.find("{", start)
    if brace < 0 or text[start + len("<tool_call>") : brace].strip():
        return None
    try:
        _, end = json.JSONDecoder().raw_decode(text, brace)
    except json.JSONDecodeError:
        return None
    payload = text[brace:end]
    return payload, f"{text[:brace]}{payload}\n</tool_call>"


def parse_turn(reply: str, tools: Sequence[str]) -> ParsedTurn:
    """Classify one reply. Text after a first ``<tool_response>`` (a response the model imagined) is ignored."""
    text = reply.split("<tool_response>", 1)[0]
    thoughts = tags.find_thoughts(text)
    first = _TAG_RE.search(text)
    thought = (
        "\n\n".join(t.strip() for t in thoughts)
        if thoughts
        else (text[: first.start()] if first else "").strip()
    )
    calls, answers = tags.find_tool_calls(text), tags.find_answers(text)
    unclosed = _unclosed_call(text) if not calls else None
    if unclosed is not None:
        calls, text = [unclosed[0]], unclosed[1]
    call_first = bool(calls) and (not answers or text.find("<tool_call>") < text.find("<answer>"))
    example = 'e.g. <tool_call>\n{"name": "search", "arguments": {"query": ["..."]}}\n</tool_call>'
    if call_first:
        end = text.find("</tool_call>") + len("</tool_call>")
        context = text[:end].strip()
        try:
            action = tags.parse_tool_call(calls[0])
        except ValueError as err:
            kind: MalformedKind = "bad_json" if "not valid JSON" in str(err) else "bad_tool_call"
            return ParsedTurn(
                "malformed", thought, error_kind=kind, error=f"{err}; {example}", context_text=context
            )
        reason = validate_tool_call(action, list(tools))
        if reason is not None:
            kind = "unknown_tool" if reason.startswith("unknown tool") else "bad_arguments"
            hint = TOOL_DESCRIPTIONS.get(action.tool, "") if kind == "bad_arguments" else ""
            return ParsedTurn(
                "malformed", thought, error_kind=kind, error=f"{reason}. {hint}".strip(), context_text=context
            )
        return ParsedTurn("tool", thought, action=action, context_text=context)
    if answers:
        end = text.find("</answer>") + len("</answer>")
        return ParsedTurn("answer", thought, answer=answers[0].strip(), context_text=text[:end].strip())
    if "<tool_call>" in text or "<answer>" in text:
        return ParsedTurn(
            "malformed", thought, error_kind="unclosed_tag",
            error="a <tool_call> or <answer> tag was opened but never closed", context_text=text.strip(),
        )  # fmt: skip
    if not text.strip() and "<tool_response>" in reply:
        return ParsedTurn(
            "malformed", thought, error_kind="imagined_tool_response",
            error="you wrote a <tool_response> yourself, but tool responses come from the tools; "
            f"call a tool with <tool_call></tool_call> tags ({example}) or answer in <answer></answer>",
            context_text=reply.strip(),
        )  # fmt: skip
    if _prose_call_re(tools).search(text):
        return ParsedTurn(
            "malformed", thought, error_kind="tool_call_as_prose",
            error=f"you described a tool call in plain text; put the JSON call inside <tool_call></tool_call> tags, {example}",
            context_text=text.strip(),
        )  # fmt: skip
    return ParsedTurn(
        "malformed", thought, error_kind="no_action",
        error="your reply has neither a <tool_call> nor an <answer>; call a tool or give the final answer in <answer></answer>",
        context_text=text.strip(),
    )  # fmt: skip


# ---------------------------------------------------------------------------
# The agent loop
# ---------------------------------------------------------------------------


@dataclass
class AgentRun:
    """What one rollout produced."""

    steps: list[TrajectoryStep] = field(default_factory=list)
    final_answer: str | None = None
    malformed: Counter[str] = field(default_factory=Counter)
    last_reply: str | None = None
    stop_reason: str = ""


def _clip_observation(text: str, max_chars: int) -> str:
    # Cut at a word, marked only by an ellipsis: a tool response in a CPT text carries no
    # pipeline wording (the model would learn to expect it from real tools).
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    return (cut[:space] if space > max_chars - 200 else cut).rstrip() + " …"


async def run_tool(
    action: ToolAction, env: ToolEnvironment, visitor: SummarizingVisit | None
) -> tuple[str, str | None]:
    """(observation, raw) of a valid call: a summarizing visit keeps the pages it read as ``raw``."""
    if visitor is not None and action.tool == "visit":
        args = normalize_arguments(action.tool, action.arguments)
        result = await visitor(args["url"], args["goal"])
        return result.observation, result.raw
    return await env.run(action), None


async def run_agent(
    question: str,
    llm: LLM,
    env: ToolEnvironment,
    cfg: RolloutsConfig,
    visitor: SummarizingVisit | None = None,
) -> AgentRun:
    """Answer ``question`` with the ReAct loop. Raises LLMError when the model cannot be reached."""
    messages = build_agent_messages(question, cfg)
    run = AgentRun()
    tool_steps = 0
    format_budget_spent = False
    forced = False
    while True:
        at_limit = tool_steps >= cfg.max_steps or context_tokens(messages) > cfg.max_context_tokens
        if not forced and (at_limit or format_budget_spent):
            # The released agent does the same at its limits: one last turn, answer only.
            # Joined to the last user turn (a tool response, or the question): some chat templates
            # refuse two user turns in a row.
            last = messages[-1]
            messages[-1] = {**last, "content": f"{last['content']}\n\n{FORCE_ANSWER}"}
            forced = True
        # A copy: the conversation grows after the call, and test doubles keep what they were sent.
        reply = await llm.complete(list(messages), stage="rollouts", max_tokens=cfg.max_turn_tokens)
        run.last_reply = reply
        turn = parse_turn(reply, cfg.tools)
        if turn.kind == "answer":
            run.steps.append(TrajectoryStep(thought=turn.thought))
            run.final_answer = turn.answer
            run.stop_reason = "answered"
            return run
        if forced:
            run.malformed["no_answer_at_limit"] += 1
            run.stop_reason = (
                f"more than {cfg.max_format_errors} malformed replies, then no answer"
                if format_budget_spent
                else "no answer at the step or context limit"
            )
            return run
        if turn.kind == "malformed":
            assert turn.error_kind is not None
            run.malformed[turn.error_kind] += 1
            # Out of format retries: the next turn is the last, and may only answer.
            format_budget_spent = sum(run.malformed.values()) > cfg.max_format_errors
            observation = f"Error: {turn.error}"
        else:
            assert turn.action is not None
            observation, raw = await run_tool(turn.action, env, visitor)
            observation = _clip_observation(observation, cfg.max_observation_chars)
            run.steps.append(
                TrajectoryStep(thought=turn.thought, action=turn.action, observation=observation, raw=raw)
            )
            tool_steps += 1
        messages.append({"role": "assistant", "content": turn.context_text or reply})
        messages.append({"role": "user", "content": tags.tool_response(observation)})


# ---------------------------------------------------------------------------
# Judging
# ---------------------------------------------------------------------------


async def judge_outcome(
    question: str,
    final_answer: str | None,
    gold: Sequence[str],
    judge_llm: LLM | None,
    max_tokens: int | None,
) -> tuple[Outcome, JudgedBy | None]:
    """(correct / incorrect against any of the gold answers, what decided it); ``unknown`` without
    gold. Raises LLMError.

    Exact and numeric matching decide first; an inconclusive pair goes to ``judge_llm``, or,
    when there is none, counts as correct only if the answer names a gold answer.
    """
    if not gold:
        return "unknown", None
    if final_answer is None or not final_answer.strip():
        return "incorrect", "exact"
    matches = [match_answers(final_answer, g) for g in gold]
    for m in matches:
        if m.verdict == "match":
            return "correct", m.decided_by  # type: ignore[return-value]
    if all(m.verdict == "mismatch" for m in matches):
        return "incorrect", matches[0].decided_by  # type: ignore[return-value]
    if judge_llm is None:
        return ("correct" if any(mentions_answer(final_answer, g) for g in gold) else "incorrect"), "mention"
    verdict = await judge_llm.complete(
        build_judge_messages(question, " | ".join(gold), final_answer),
        AnswerVerdict,
        stage="rollouts",
        max_tokens=max_tokens,
    )
    return ("correct" if verdict.correct else "incorrect"), "judge"


# The evidence judge: for imported trajectories that carry no gold answer and no label, the
# only ground truth is what the agent itself read. An answer its tool responses do not back
# is not taught as right.
EVIDENCE_JUDGE_SYSTEM = """You check the final answer of a research agent against the evidence it gathered (the tool responses it read).
"supported": the evidence states the answer, or facts from which it follows directly.
"unsupported": the evidence contradicts the answer, or the answer rests on nothing in it.
"cannot_tell": the evidence is too thin or too ambiguous to say.
Reply with one JSON object: {"verdict": "supported" | "unsupported" | "cannot_tell", "rationale": "one sentence"}"""
EVIDENCE_JUDGE_USER = """Question: {question}
Final answer: {answer}

Evidence:
{evidence}"""


class EvidenceVerdict(BaseModel):
    """The evidence judge's reply (a boolean ``supported`` is read as supported/unsupported)."""

    model_config = ConfigDict(extra="ignore")
    verdict: Literal["supported", "unsupported", "cannot_tell"]
    rationale: str = ""

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict) and "verdict" not in data and isinstance(data.get("supported"), bool):
            return {**data, "verdict": "supported" if data["supported"] else "unsupported"}
        if isinstance(data, dict) and isinstance(data.get("verdict"), str):
            return {**data, "verdict": data["verdict"].strip().lower().replace(" ", "_").replace("'", "")}
        return data


def evidence_text(steps: Sequence[TrajectoryStep], question: str, answer: str, max_chars: int) -> str:
    """The trajectory's tool responses, cut to ``max_chars`` keeping the passages about the question and answer."""
    from synth.tools.visit import select_for_goal  # lazy: bm25s loads with the tools package

    text = "\n\n".join(s.observation.strip() for s in steps if s.observation and s.observation.strip())
    return select_for_goal(text, f"{question} {answer}", max_chars)[0]


async def judge_by_evidence(
    question: str,
    steps: Sequence[TrajectoryStep],
    final_answer: str | None,
    judge_llm: LLM,
    cfg: RolloutsConfig,
) -> tuple[Outcome | None, str]:
    """(correct / incorrect, or None when the judge cannot tell; its rationale). Raises LLMError."""
    if final_answer is None or not final_answer.strip():
        return "incorrect", "the trajectory gives no final answer"
    evidence = evidence_text(steps, question, final_answer, cfg.judge_evidence_chars)
    if not evidence:
        return "incorrect", "the trajectory read no evidence"
    verdict = await judge_llm.complete(
        [
            {"role": "system", "content": EVIDENCE_JUDGE_SYSTEM},
            {
                "role": "user",
                "content": EVIDENCE_JUDGE_USER.format(
                    question=question, answer=final_answer, evidence=evidence
                ),
            },
        ],
        EvidenceVerdict,
        stage="rollouts",
        max_tokens=cfg.judge_max_tokens,
    )
    outcome = {"supported": "correct", "unsupported": "incorrect"}.get(verdict.verdict)
    return outcome, verdict.rationale  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------


@functools.cache
def _warn_once(message: str) -> None:
    # Once per worker process: the first unit of a run logs it, not every unit.
    log.warning(message)


def _build_environment(ctx: StageContext, cfg: RolloutsConfig) -> ToolEnvironment:
    # Imported here: bm25s and the sandbox are needed only where rollouts run, not by every
    # importer of the spec (which imports this module for RolloutsConfig).
    from synth.tools.environment import ToolEnvironment
    from synth.tools.sandbox import SandboxLimits, python_tool_notice
    from synth.tools.search import get_search_index

    if "python" in cfg.tools and (notice := python_tool_notice(cfg.allow_unisolated_python)):
        _warn_once(notice)
    return ToolEnvironment(
        index=get_search_index(ctx.run_dir, lambda: ctx.read_stage("documents"), distractors=cfg.distractors),
        sandbox=SandboxLimits(
            cpu_s=cfg.python_cpu_s,
            memory_mb=cfg.python_memory_mb,
            wall_s=cfg.python_timeout_s,
            max_output_chars=cfg.max_observation_chars,
            allow_unisolated=cfg.allow_unisolated_python,
        ),
        search_top_k=cfg.search_top_k,
        visit_max_chars=cfg.visit_max_chars,
    )


def _build_visitor(ctx: StageContext, cfg: RolloutsConfig, env: ToolEnvironment) -> SummarizingVisit | None:
    """The summarizing `visit` of the long profile (it asks the run's LLM), or None."""
    if not cfg.visit_summary or "visit" not in cfg.tools:
        return None
    from synth.tools.visit import SummarizingVisit

    return SummarizingVisit(
        index=env.index,
        llm=ctx.llm,
        max_chars=cfg.visit_max_chars,
        summary_max_tokens=cfg.visit_summary_max_tokens,
    )


def _record(
    ctx: StageContext,
    *,
    parents: list[str],
    params: dict[str, Any],
    question_id: str | None,
    question: str,
    gold: Sequence[str],
    steps: list[TrajectoryStep],
    final_answer: str | None,
    outcome: Outcome,
    source: str,
    model: str | None,
    malformed: dict[str, int],
    judged_by: JudgedBy | None,
) -> RolloutRecord:
    text = render_rollout(question, steps, final_answer)
    content = {"question": question, "steps": [s.model_dump() for s in steps], "final_answer": final_answer}
    return RolloutRecord(
        id=record_id("rollouts", parents, params, content),
        run_id=ctx.run_id,
        parent_ids=parents,
        model=model,
        question_id=question_id,
        question=question,
        gold_answer=" | ".join(gold) if gold else None,
        steps=steps,
        final_answer=final_answer,
        outcome=outcome,
        source=source,
        n_tokens=estimate_tokens(text),
        text=text,
        malformed=malformed,
        judged_by=judged_by,
    )


async def rollout_question(
    item: QuestionItem,
    ctx: StageContext,
    cfg: RolloutsConfig,
    env: ToolEnvironment,
    visitor: SummarizingVisit | None = None,
) -> RolloutRecord | Failure:
    """One agent run on one question: a judged record, or a Failure (LLM error, no usable step)."""
    try:
        run = await run_agent(item.question, ctx.llm, env, cfg, visitor)
        outcome, judged_by = await judge_outcome(
            item.question, run.final_answer, [item.gold_answer], ctx.judge_llm if cfg.judge else None,
            cfg.judge_max_tokens,
        )  # fmt: skip
    except LLMError as err:
        return Failure(
            input_ids=[item.question_id],
            error_kind=err.kind,
            message=f"rollout: {err}",
            raw_output=err.raw_output,
        )
    if not run.steps:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(run.malformed.items()))
        return Failure(
            input_ids=[item.question_id],
            error_kind="no_valid_steps",
            message=f"the agent made no well-formed step ({run.stop_reason}; malformed: {counts})",
            raw_output=run.last_reply,
        )
    params = {
        "prompt": STAGE.prompt_fingerprint,
        "model": ctx.llm.model_name,
        "tools": list(cfg.tools),
        "max_steps": cfg.max_steps,
        "seed": ctx.seed,
        **({"profile": cfg.profile} if cfg.profile != "short" else {}),
    }
    return _record(
        ctx,
        parents=[item.question_id],
        params=params,
        question_id=item.question_id,
        question=item.question,
        gold=[item.gold_answer],
        steps=run.steps,
        final_answer=run.final_answer,
        outcome=outcome,
        source="rollout",
        model=ctx.llm.model_name,
        malformed=dict(sorted(run.malformed.items())),
        judged_by=judged_by,
    )


async def import_trajectory(
    item: TrajectoryRef, ctx: StageContext, cfg: RolloutsConfig
) -> RolloutRecord | Failure:
    """One trajectory line as a record (outcome: the file's label, else judged against its gold
    answer, else by ``cfg.unjudged``), or a Failure (unreadable line, judge error, dropped unjudged)."""
    try:
        traj = load_trajectory(item)
    except TrajectoryFormatError as err:
        return Failure(input_ids=[item.where], error_kind=err.kind, message=str(err))
    outcome: Outcome = traj.label or "unknown"
    judged_by: JudgedBy | None = "label" if traj.label is not None else None
    try:
        if traj.label is None and traj.gold_answers:
            outcome, judged_by = await judge_outcome(
                traj.question, traj.final_answer, traj.gold_answers, ctx.judge_llm if cfg.judge else None,
                cfg.judge_max_tokens,
            )  # fmt: skip
        elif traj.label is None and cfg.unjudged == "drop":
            return Failure(
                input_ids=[item.where], error_kind="unjudged",
                message=f"{item.where}: no gold answer and no outcome label (rollouts.unjudged: drop)",
            )  # fmt: skip
        elif traj.label is None and cfg.unjudged == "evidence" and cfg.judge:
            judged, rationale = await judge_by_evidence(
                traj.question, traj.steps, traj.final_answer, ctx.judge_llm, cfg
            )
            if judged is None:
                return Failure(
                    input_ids=[item.where], error_kind="unjudged",
                    message=f"{item.where}: no gold answer or label, and the judge could not tell from the "
                    f"trajectory's evidence: {rationale}",
                )  # fmt: skip
            outcome, judged_by = judged, "evidence"
    except LLMError as err:
        return Failure(
            input_ids=[item.where],
            error_kind=err.kind,
            message=f"{item.where}: judge: {err}",
            raw_output=err.raw_output,
        )
    source = f"import:{traj.format}"
    return _record(
        ctx,
        parents=[],
        params={"source": source, "file": item.display, "line": item.line_no, "sha256": item.sha256},
        question_id=None,
        question=traj.question,
        gold=traj.gold_answers,
        steps=traj.steps,
        final_answer=traj.final_answer,
        outcome=outcome,
        source=source,
        model=None,
        malformed={},
        judged_by=judged_by,
    )


class RolloutsStage(Stage[RolloutsConfig, QuestionItem | TrajectoryRef]):
    config_type = RolloutsConfig
    record_type = RolloutRecord
    verdict = Verdict(accepted_sql="outcome = 'correct'", rejected_sql="outcome = 'incorrect'")
    summary_fields = ("outcome", "source", "final_answer")
    shared_prompt_modules = ("synth.judges", "synth.tools.visit")
    name = "rollouts"
    upstream = ("questions", "documents")
    barrier = True
    input_cap_field = "max_questions"

    def item_origin(self, item: QuestionItem | TrajectoryRef) -> ItemOrigin:
        # For --preview's estimate: imported trajectories are as many in a preview as in the
        # full run; only questions grow with the full run (up to max_questions).
        if isinstance(item, TrajectoryRef):
            return ItemOrigin("inputs.trajectories", follows=None, capped=False)
        return ItemOrigin("questions", follows="questions")

    def prepare(self, ctx: StageContext) -> Prepared[QuestionItem | TrajectoryRef]:
        """Questions (sorted by id, capped by ``max_questions``), then every line of the trajectory files."""
        cfg = self.config(ctx.spec)
        questions = sorted(ctx.read_stage("questions"), key=lambda r: r.id)
        if cfg.max_questions is not None:
            questions = questions[: cfg.max_questions]
        items: list[QuestionItem | TrajectoryRef] = [
            QuestionItem(question_id=q.id, question=q.question, gold_answer=q.answer)  # type: ignore[attr-defined]
            for q in questions
        ]
        if ctx.spec.inputs.trajectories:
            paths = resolve_globs(ctx.spec.inputs.trajectories, "inputs.trajectories", base_dir=ctx.base_dir)
            items.extend(scan_trajectory_files(paths, ctx.base_dir))
        return Prepared(items=items)

    async def process(self, items: Sequence[QuestionItem | TrajectoryRef], ctx: StageContext) -> StageOutput:
        """Run the agent on question items and import trajectory items; one record or Failure each."""
        cfg = self.config(ctx.spec)
        env = _build_environment(ctx, cfg) if any(isinstance(i, QuestionItem) for i in items) else None
        visitor = _build_visitor(ctx, cfg, env) if env is not None else None
        jobs = []
        for item in items:
            if isinstance(item, QuestionItem):
                assert env is not None
                jobs.append(rollout_question(item, ctx, cfg, env, visitor))
            elif isinstance(item, TrajectoryRef):
                jobs.append(import_trajectory(item, ctx, cfg))
            else:
                raise TypeError(f"rollouts got a work item of type {type(item).__name__}")
        out = StageOutput()
        for result in await asyncio.gather(*jobs):
            if isinstance(result, Failure):
                out.failures.append(result)
            else:
                out.records.append(result)
        return out


STAGE = RolloutsStage()
