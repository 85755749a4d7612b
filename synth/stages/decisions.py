"""The `decisions` stage (HAS, paper §2.3): each trajectory step as a choice among N+1 options.

For every step k of a trajectory (a rollout record: the agent's own or an imported one),
the LLM sees the context before it — the question, then (S1, R1, …, Sk-1, Rk-1) — and
proposes N alternative (thought, action) candidates **in one call**: the embedded server
may decode greedily (NOTES.md), so N samples of one prompt could be N copies. With the
original step they are shuffled (seeded by the run seed, the trajectory id and k) into
N+1 options. The text lists the options, says "I will choose option n" (the original),
shows the real tool response Rk, goes on to step k+1, and ends with the trajectory's
judged outcome, or says that the outcome is unknown. Alternatives are never executed.

Decision points are the steps that act: a tool call, or the final answer. (A trailing
thought of a cut-off trajectory is not a decision.)

When the LLM gives fewer than N usable candidates (invalid JSON, unknown tools, bad
arguments, duplicates of the original or of each other), the rest are filled
deterministically: first with the tool calls of the trajectory's *other* steps (real,
plausible actions, under a neutral thought), then with templates (search the question, or its
keywords; visit a url seen in an earlier tool response). The record counts them in
``filled_options``. A trajectory whose steps still cannot get N options is a Failure
(``insufficient_alternatives``), never a record with fewer options.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from synth.answers import normalize_answer
from synth.ids import canonical_json, content_hash, record_id
from synth.llm.base import LLM, LLMError, LLMInvalidOutput, Message
from synth.records import DecisionRecord, DecisionStep, Failure, RolloutRecord, ToolAction, TrajectoryStep
from synth.render import tags
from synth.render.traces import estimate_tokens, render_action, render_decisions, render_step, step_answer
from synth.stage import Stage, StageContext, StageOutput, Verdict
from synth.toolset import TOOL_DESCRIPTIONS, normalize_arguments, validate_tool_call

ToolName = Literal["search", "visit", "python"]


class DecisionsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alternatives: PositiveInt = Field(3, description="N alternative (thought, action) candidates per step")
    tools: list[ToolName] = Field(
        default_factory=lambda: ["search", "visit", "python"], description="tools an alternative may call"
    )
    max_prompt_tokens: PositiveInt = Field(
        6000, description="estimated budget of the context shown to the LLM (older steps are dropped first)"
    )
    prompt_observation_chars: PositiveInt = Field(
        1500, description="a tool response in the prompt is cut to this"
    )
    max_tokens: PositiveInt | None = Field(None, description="completion cap per call; null = llm.max_tokens")


# ---------------------------------------------------------------------------
# The LLM's reply
# ---------------------------------------------------------------------------


class Candidate(BaseModel):
    """One proposed next step: a thought and either a tool call or a final answer."""

    # Extra keys are ignored and common spellings accepted: models drift from the schema.
    model_config = ConfigDict(extra="ignore")
    thought: str = Field("", description="why this step")
    tool: str | None = Field(None, description="tool name, for a tool call")
    arguments: dict[str, Any] = Field(default_factory=dict, description="the tool's arguments")
    answer: str | None = Field(None, description="a final answer instead of a tool call")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        call = data.pop("tool_call", None) or data.pop("action", None)
        if isinstance(call, dict):
            data.setdefault("tool", call.get("name") or call.get("tool"))
            data.setdefault("arguments", call.get("arguments") or {})
        if "tool" not in data and isinstance(data.get("name"), str):
            data["tool"] = data.pop("name")
        for alias in ("think", "reasoning", "thinking"):
            if "thought" not in data and isinstance(data.get(alias), str):
                data["thought"] = data.pop(alias)
        if isinstance(data.get("arguments"), str):
            data["arguments"] = {}  # unparseable: leaves the candidate invalid unless answered
        return data


class Candidates(BaseModel):
    model_config = ConfigDict(extra="ignore")
    candidates: list[Candidate] = Field(description="the proposed alternative next steps")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict) and "candidates" not in data:
            for alias in ("alternatives", "options", "steps"):
                if isinstance(data.get(alias), list):
                    return {**data, "candidates": data[alias]}
        return data


SYSTEM_PROMPT = """You help train a research agent. You are shown a question and the steps the agent took so far (its thoughts, tool calls and tool responses). Propose {n} different, plausible next steps the agent could take now.
Each step has a short "thought" and either a tool call ("tool" and "arguments") or a final "answer". Make the {n} steps differ: other tools, other queries, other pages, or answering now.
Tools:
{tools}
Reply with one JSON object only:
{{"candidates": [{{"thought": "...", "tool": "search", "arguments": {{"query": ["..."]}}}}, {{"thought": "...", "answer": "..."}}]}}"""


def _clip(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars].rstrip() + " …"


def build_messages(
    question: str, steps: Sequence[TrajectoryStep], k: int, cfg: DecisionsConfig
) -> list[Message]:
    """The prompt for step ``k`` (0-based): the question and steps ``0..k-1``, newest kept when over budget."""
    history: list[str] = []
    for step in steps[:k]:
        block = render_action(step.thought, step.action)
        if step.observation is not None:
            block += "\n" + tags.tool_response(_clip(step.observation, cfg.prompt_observation_chars))
        history.append(block)
    budget = cfg.max_prompt_tokens - estimate_tokens(question) - 400
    kept: list[str] = []
    for block in reversed(history):
        if kept and sum(map(estimate_tokens, kept)) + estimate_tokens(block) > budget:
            break
        kept.insert(0, block)
    omitted = len(history) - len(kept)
    so_far = "\n\n".join(([f"[{omitted} earlier steps omitted]"] if omitted else []) + kept) or "(none yet)"
    tools = "\n".join(f"- {name}: {TOOL_DESCRIPTIONS[name]}" for name in cfg.tools)
    user = (
        f"Question: {question}\n\nSteps so far:\n{so_far}\n\n"
        f"Propose {cfg.alternatives} different next steps as JSON."
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT.format(n=cfg.alternatives, tools=tools)},
        *_example_turns(cfg.alternatives),
        {"role": "user", "content": user},
    ]


_EXAMPLE_CANDIDATES: list[dict[str, Any]] = [
    {"thought": "The page itself will state the height.", "tool": "visit",
     "arguments": {"url": "https://example.com/orlan-tower", "goal": "height of the tower"}},
    {"thought": "A second source would confirm it.", "tool": "search", "arguments": {"query": ["Orlan Tower 312 metres"]}},
    {"thought": "The search result already gives the height.", "answer": "312 metres"},
    {"thought": "Maybe the height is in feet elsewhere.", "tool": "search", "arguments": {"query": ["Orlan Tower height feet"]}},
    {"thought": "The height could be computed from the floors.", "tool": "python", "arguments": {"code": "print(78 * 4)"}},
]  # fmt: skip


def _example_turns(n: int) -> list[Message]:
    """A worked example as chat turns (small models copy an exchange better than they follow rules)."""
    example_user = (
        "Question: How tall is the Orlan Tower?\n\nSteps so far:\n"
        '<think>I need the height.</think>\n<tool_call>\n{"name": "search", "arguments": {"query": ["Orlan Tower height"]}}'
        "\n</tool_call>\n<tool_response>\n1. [Orlan Tower](https://example.com/orlan-tower)\n"
        "The Orlan Tower is 312 metres tall.\n</tool_response>\n\n"
        f"Propose {n} different next steps as JSON."
    )
    cycle = [_EXAMPLE_CANDIDATES[i % len(_EXAMPLE_CANDIDATES)] for i in range(n)]
    return [
        {"role": "user", "content": example_user},
        {"role": "assistant", "content": json.dumps({"candidates": cycle}, ensure_ascii=False)},
    ]


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    text: str
    key: str  # what makes two options the same decision: the action, not the wording of the thought


def _action_key(action: ToolAction) -> str:
    return canonical_json(["tool", action.tool, normalize_arguments(action.tool, action.arguments)])


def _answer_key(answer: str) -> str:
    return canonical_json(["answer", normalize_answer(answer) or answer.strip()])


def original_option(steps: Sequence[TrajectoryStep], k: int, final_answer: str | None) -> Option:
    """The trajectory's own step k as an option (its text is exactly ``render_step``)."""
    step = steps[k]
    answer = step_answer(steps, k, final_answer)
    key = _action_key(step.action) if step.action is not None else _answer_key(answer or "")
    return Option(render_step(steps, k, final_answer), key)


def candidate_option(c: Candidate, tools: Sequence[str]) -> Option | None:
    """A valid candidate as an option; None for an unknown tool, bad arguments, or neither tool nor answer."""
    if c.tool:
        action = ToolAction(tool=c.tool, arguments=normalize_arguments(c.tool, c.arguments))
        if validate_tool_call(action, list(tools)) is not None:
            return None
        return Option(render_action(c.thought, action), _action_key(action))
    if c.answer and c.answer.strip():
        return Option(render_action(c.thought, None, c.answer), _answer_key(c.answer))
    return None


def _neutral_thought(action: ToolAction) -> str:
    args = normalize_arguments(action.tool, action.arguments)
    if action.tool == "search":
        return "I should search for: " + "; ".join(str(q) for q in args.get("query", []))
    if action.tool == "visit":
        url = args.get("url")
        return f"I should read {', '.join(url) if isinstance(url, list) else url} to find: {args.get('goal', '')}"
    if action.tool == "python":
        return "I should work this out with Python."
    return f"I should use the {action.tool} tool."


_URL_RE = re.compile(r"https?://[^\s)\]>\"']+")
_WORD_RE = re.compile(r"[\w'-]+")
_STOPWORDS = frozenset(
    "a an the of in on at to for by with from and or is are was were be been did does do what which who whom "
    "whose when where why how many much this that these those it its as".split()
)


def fill_options(
    question: str, steps: Sequence[TrajectoryStep], k: int, tools: Sequence[str]
) -> list[Option]:
    """Deterministic fallbacks for step k: other steps' tool calls (nearest first), then templates."""
    out: list[Option] = []
    others = sorted(
        (j for j in range(len(steps)) if j != k and steps[j].action is not None),
        key=lambda j: (abs(j - k), j),
    )
    for j in others:
        action = steps[j].action
        assert action is not None
        if validate_tool_call(action, list(tools)) is None:
            out.append(Option(render_action(_neutral_thought(action), action), _action_key(action)))
    templates: list[ToolAction] = []
    if "search" in tools:
        templates.append(ToolAction(tool="search", arguments={"query": [question.strip()[:200]]}))
        keywords = " ".join(w for w in _WORD_RE.findall(question) if w.casefold() not in _STOPWORDS)[:200]
        if keywords:
            templates.append(ToolAction(tool="search", arguments={"query": [keywords]}))
    if "visit" in tools:
        seen = [u.rstrip(".,;") for s in steps[:k] if s.observation for u in _URL_RE.findall(s.observation)]
        for url in dict.fromkeys(seen):
            templates.append(ToolAction(tool="visit", arguments={"url": url, "goal": question.strip()[:200]}))
    out.extend(Option(render_action(_neutral_thought(a), a), _action_key(a)) for a in templates)
    return out


def shuffle_options(
    original: Option, alternatives: Sequence[Option], seed: int, trajectory_id: str, k: int
) -> tuple[list[str], int]:
    """Original + alternatives in a seeded order; returns (option texts, index of the original)."""
    pool = [original, *alternatives]
    order = list(range(len(pool)))
    random.Random(int(content_hash([seed, trajectory_id, k], 16), 16)).shuffle(order)
    return [pool[i].text for i in order], order.index(0)


# ---------------------------------------------------------------------------
# One trajectory
# ---------------------------------------------------------------------------


class InsufficientAlternatives(Exception):
    def __init__(self, k: int, have: int, need: int) -> None:
        super().__init__(f"step {k + 1}: only {have} distinct valid alternatives, {need} needed")


async def _llm_candidates(llm: LLM, messages: list[Message], cfg: DecisionsConfig) -> list[Candidate]:
    try:
        reply = await llm.complete(messages, Candidates, stage="decisions", max_tokens=cfg.max_tokens)
    except LLMInvalidOutput:
        return []  # no valid alternatives from the model: the step is filled (module docstring)
    return reply.candidates


async def decide_step(
    rollout: RolloutRecord, k: int, llm: LLM, cfg: DecisionsConfig, seed: int
) -> tuple[DecisionStep, int]:
    """Decision step k: (the step, how many options were filled). Raises LLMError, InsufficientAlternatives."""
    steps = rollout.steps
    original = original_option(steps, k, rollout.final_answer)
    candidates = await _llm_candidates(llm, build_messages(rollout.question, steps, k, cfg), cfg)
    chosen: list[Option] = []
    seen = {original.key}
    from_llm = 0
    for source, options in (
        ("llm", [candidate_option(c, cfg.tools) for c in candidates]),
        ("fill", fill_options(rollout.question, steps, k, cfg.tools)),
    ):
        for option in options:
            if len(chosen) == cfg.alternatives:
                break
            if option is None or option.key in seen:
                continue
            seen.add(option.key)
            chosen.append(option)
            if source == "llm":
                from_llm += 1
    if len(chosen) < cfg.alternatives:
        raise InsufficientAlternatives(k, len(chosen), cfg.alternatives)
    texts, index = shuffle_options(original, chosen, seed, rollout.id, k)
    observation = steps[k].observation if steps[k].action is not None else None
    return DecisionStep(options=texts, chosen=index, observation=observation), cfg.alternatives - from_llm


def decision_points(rollout: RolloutRecord) -> list[int]:
    """Indexes of the steps that act: a tool call, or the final answer."""
    return [
        k
        for k, s in enumerate(rollout.steps)
        if s.action is not None or step_answer(rollout.steps, k, rollout.final_answer) is not None
    ]


async def decide(rollout: RolloutRecord, ctx: StageContext, cfg: DecisionsConfig) -> DecisionRecord | Failure:
    """The decision record of one trajectory, or a Failure naming why it has none."""
    points = decision_points(rollout)
    if not points:
        return Failure(
            input_ids=[rollout.id],
            error_kind="no_decision_steps",
            message="the trajectory has no tool call and no answer",
        )
    outcomes = await asyncio.gather(
        *(decide_step(rollout, k, ctx.llm, cfg, ctx.seed) for k in points), return_exceptions=True
    )
    results: list[tuple[DecisionStep, int]] = []
    for result in outcomes:
        if isinstance(result, LLMError):
            return Failure(
                input_ids=[rollout.id],
                error_kind=result.kind,
                message=f"decisions: {result}",
                raw_output=result.raw_output,
            )
        if isinstance(result, InsufficientAlternatives):
            return Failure(
                input_ids=[rollout.id], error_kind="insufficient_alternatives", message=str(result)
            )
        if isinstance(result, BaseException):
            raise result
        results.append(result)
    steps = [step for step, _ in results]
    text = render_decisions(rollout.question, steps, rollout.outcome)
    params = {
        "prompt": STAGE.prompt_fingerprint,
        "model": ctx.llm.model_name,
        "alternatives": cfg.alternatives,
        "seed": ctx.seed,
    }
    return DecisionRecord(
        id=record_id("decisions", [rollout.id], params, text),
        run_id=ctx.run_id,
        parent_ids=[rollout.id],
        model=ctx.llm.model_name,
        trajectory_id=rollout.id,
        steps=steps,
        outcome=rollout.outcome,
        n_tokens=estimate_tokens(text),
        text=text,
        filled_options=sum(filled for _, filled in results),
    )


class DecisionsStage(Stage[DecisionsConfig, RolloutRecord]):
    config_type = DecisionsConfig
    record_type = DecisionRecord
    verdict = Verdict(accepted_sql="outcome = 'correct'", rejected_sql="outcome = 'incorrect'")
    summary_fields = ('outcome', 'trajectory_id')
    name = "decisions"
    upstream = ("rollouts",)
    barrier = False

    async def process(self, items: Sequence[RolloutRecord], ctx: StageContext) -> StageOutput:
        """One decision record (or Failure) per rollout record of the unit."""
        cfg = self.config(ctx.spec)
        out = StageOutput()
        for result in await asyncio.gather(*(decide(r, ctx, cfg) for r in items)):
            (out.failures if isinstance(result, Failure) else out.records).append(result)  # type: ignore[arg-type]
        return out


STAGE = DecisionsStage()
