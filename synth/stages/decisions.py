"""The `decisions` stage (HAS, paper §2.3): each trajectory step as a choice among N+1 options.

For every step k of a trajectory (a rollout record: the agent's own or an imported one),
the LLM sees the context before it — the question, then (S1, R1, …, Sk-1, Rk-1) — and
proposes N alternative (thought, action) candidates **in one call**: the embedded server
may decode greedily (NOTES.md), so N samples of one prompt could be N copies. With the
original step they are shuffled (seeded by the run seed, the trajectory id and k) into
N+1 options. The text lists the options, says "I will choose option n" (the original),
shows the real tool response Rk, goes on to step k+1, and ends with the trajectory's
judged outcome (no ending when it was not judged: such a text never enters the corpus).
Alternatives are never executed.

A CPT model must not be able to find the chosen option by anything but its merit, so the
options are made alike in everything else (``agentcpt quality`` measures what is left with a
chosen-option probe):

* **No leaks from the future.** An option at step k holds only what the agent could know
  at step k. Any alternative containing a URL or a search query that first appears at a
  step >= k (its tool call, its response, or a later step) is dropped, whoever wrote it.
* **Same form.** An answer step gets answer alternatives, a tool step tool-call
  alternatives, in the tools this trajectory uses (``tools`` ∩ its own vocabulary); the
  reply schema sent as ``response_format`` allows exactly those shapes.
* **Same grounding.** The agent read each tool response whole; the prompt shows it cut
  (``prompt_observation_chars``), so it also lists the key terms of the earlier responses
  (``prompt_terms``, steps < k only) and asks for steps grounded in them and in the question,
  as the original is.
* **Same length.** Each alternative's thought must be within ``length_band`` (0.5–1.5×) of
  the original's words. The prompt asks for that band (shrunk to what the completion cap
  fits), a longer thought is trimmed to the band at a sentence boundary, and when the
  alternatives still come out shorter, the original thought is condensed into their band
  instead — by the LLM, else by a sentence cut. ``DecisionStep.original_thought`` keeps the
  original when ``condensed`` says how it was shortened.

When the LLM gives fewer than N usable candidates, the rest are filled deterministically,
from the past only: earlier steps' tool calls, then templates (search the question's
keywords or the question, visit a url seen in an earlier response), with a thought cut from
the agent's own earlier thoughts. Fills are counted (``filled_options``, per option in
``sources``); a record whose filled share exceeds ``max_filled_share`` stays in the run with
a ``flag`` and is kept out of the corpus. A trajectory whose steps still cannot get N
options is a Failure (``insufficient_alternatives``), never a record with fewer options.

Decision points are the steps that act: a tool call, or the final answer. (A trailing
thought of a cut-off trajectory is not a decision.)
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import random
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from synth.answers import normalize_answer
from synth.ids import canonical_json, content_hash, record_id
from synth.llm.base import LLM, LLMError, LLMInvalidOutput, LLMTruncated, Message
from synth.llm.config import completion_cap
from synth.records import (
    DecisionRecord,
    DecisionStep,
    Failure,
    OptionSource,
    RolloutRecord,
    ToolAction,
    TrajectoryStep,
)
from synth.render import tags
from synth.render.traces import count_words, estimate_tokens, render_action, render_decisions, step_answer
from synth.stage import Stage, StageContext, StageOutput, Verdict
from synth.toolset import FLAT_ARGUMENT, TOOL_DESCRIPTIONS, normalize_arguments, validate_tool_call

ToolName = Literal["search", "visit", "python"]

# English BPE vocabularies spend about 1.3-1.4 tokens per word; JSON quoting adds a little.
TOKENS_PER_WORD = 1.4
# Per candidate: the JSON keys, the tool call's arguments; per reply: the braces around them.
CANDIDATE_OVERHEAD_TOKENS = 60
REPLY_OVERHEAD_TOKENS = 40


class DecisionsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alternatives: PositiveInt = Field(3, description="N alternative (thought, action) candidates per step")
    tools: list[ToolName] = Field(
        default_factory=lambda: ["search", "visit", "python"],
        description="tools an alternative may call (further limited to the tools its trajectory uses)",
    )
    max_prompt_tokens: PositiveInt = Field(
        6000, description="estimated budget of the context shown to the LLM (older steps are dropped first)"
    )
    prompt_observation_chars: PositiveInt = Field(
        1500, description="a tool response in the prompt is cut to this"
    )
    prompt_terms: int = Field(
        40,
        ge=0,
        description="key terms of the earlier tool responses (read whole, not cut) listed in the prompt",
    )
    max_tokens: PositiveInt | None = Field(None, description="completion cap per call; null = llm.max_tokens")
    length_band: tuple[float, float] = Field(
        (0.5, 1.5),
        description="an alternative's thought length (words) as a multiple of the original's: (low, high)",
    )
    condense: bool = Field(
        True,
        description="when the alternatives come out shorter than the band, condense the original thought "
        "into theirs (LLM, else a sentence cut); both variants are recorded",
    )
    max_filled_share: float = Field(
        1 / 3,
        ge=0.0,
        le=1.0,
        description="a record whose filled (not LLM-written) alternatives exceed this share of all its "
        "alternatives stays in the run, flagged, and out of the corpus",
    )

    @model_validator(mode="after")
    def _band_contains_one(self) -> DecisionsConfig:
        low, high = self.length_band
        if not 0 < low <= 1 <= high:
            raise ValueError("length_band must be (low, high) with 0 < low <= 1 <= high")
        return self


# ---------------------------------------------------------------------------
# The LLM's reply
# ---------------------------------------------------------------------------


class Candidate(BaseModel):
    """One proposed next step: a thought and either a tool call or a final answer."""

    # Extra keys are ignored and common spellings accepted: models drift from the schema.
    model_config = ConfigDict(extra="ignore")
    thought: str = Field("", description="why this step")
    tool: str | None = Field(None, description="tool name, for a tool call")
    arguments: dict[str, Any] = Field(
        default_factory=dict,
        description="the tool's arguments",
        json_schema_extra={"additionalProperties": FLAT_ARGUMENT},  # guided flat, validated loosely
    )
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
        if not isinstance(data.get("thought", ""), str):
            data["thought"] = ""
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


_STRING: dict[str, Any] = {"type": "string"}
_ARGUMENT_SCHEMAS: dict[str, dict[str, Any]] = {
    "search": {
        "type": "object",
        "properties": {"query": {"type": "array", "items": _STRING, "minItems": 1, "maxItems": 3}},
        "required": ["query"],
        "additionalProperties": False,
    },
    "visit": {
        "type": "object",
        "properties": {"url": {"type": "string", "format": "uri"}, "goal": _STRING},
        "required": ["url", "goal"],
        "additionalProperties": False,
    },
    "python": {
        "type": "object",
        "properties": {"code": {"type": "string", "minLength": 1}},
        "required": ["code"],
        "additionalProperties": False,
    },
}


def _candidate_shapes(tools: Sequence[str], answers: bool) -> list[dict[str, Any]]:
    if answers:
        return [
            {
                "type": "object",
                "properties": {"thought": _STRING, "answer": {"type": "string", "minLength": 1}},
                "required": ["thought", "answer"],
                "additionalProperties": False,
            }
        ]
    return [
        {
            "type": "object",
            "properties": {"thought": _STRING, "tool": {"const": tool}, "arguments": _ARGUMENT_SCHEMAS[tool]},
            "required": ["thought", "tool", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]


@functools.lru_cache(maxsize=64)
def reply_model(tools: tuple[str, ...], answers: bool, n: int) -> type[Candidates]:
    """``Candidates`` whose JSON schema (the ``response_format`` sent) allows exactly ``n`` candidates
    of the step's form: answers, or calls of ``tools`` with their argument shapes.

    Validation stays as lenient as ``Candidates`` (a small model's near-miss is still read);
    an endpoint that enforces schemas (vLLM, SGLang) can only write well-formed candidates.
    """
    strict = {
        "type": "object",
        "properties": {
            "candidates": {
                "type": "array",
                "items": {"anyOf": _candidate_shapes(tools, answers)},
                "minItems": n,
                "maxItems": n,
            }
        },
        "required": ["candidates"],
        "additionalProperties": False,
    }

    def as_strict(schema: dict[str, Any]) -> None:
        schema.clear()
        schema.update(json.loads(json.dumps(strict)))

    class StepCandidates(Candidates):
        model_config = ConfigDict(extra="ignore", json_schema_extra=as_strict)

    return StepCandidates


class Condensed(BaseModel):
    """The LLM's shorter version of an original thought."""

    model_config = ConfigDict(extra="ignore")
    thought: str = Field(description="the reasoning, shortened")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict) and "thought" not in data:
            for alias in ("text", "reasoning", "rewrite", "condensed"):
                if isinstance(data.get(alias), str):
                    return {**data, "thought": data[alias]}
        return data


# ---------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------

SYSTEM_PROMPT = """You help train a research agent. You are shown a question and the steps the agent took so far (its thoughts, tool calls and tool responses). Write {n} different, plausible next steps the agent could take now, each as the agent itself would write it: in the first person, in the tone of its earlier thoughts, reasoning only from the question and the steps so far.
Ground each step in them as the agent's own next step would be: in the question and in what the tool responses so far show (names, figures, pages). Their key terms are listed too, also from the parts of long responses cut here.
{form}
Tools:
{tools}
Reply with one JSON object only:
{shape}"""

TOOL_FORM = "Each step has a thought and a call of one of the tools below (not a final answer). Make the {n} steps differ: other queries, other pages, other tools of the list."
ANSWER_FORM = 'Each step has a thought and a final "answer" given now (no tool call). Make the {n} answers differ from each other.'
TOOL_SHAPE = (
    '{{"candidates": [{{"thought": "...", "tool": "search", "arguments": {{"query": ["..."]}}}}, ...]}}'
)
ANSWER_SHAPE = '{{"candidates": [{{"thought": "...", "answer": "..."}}, ...]}}'
USER_PROMPT = """Question: {question}

Steps so far:
{steps}

Key terms of the tool responses so far: {terms}

Propose {n} different next steps as JSON, grounded in the question and the tool responses so far. {length}"""
LENGTH_RULE = "Each thought is between {low} and {high} words long."
NO_THOUGHT_RULE = 'Each thought is empty ("").'
ANSWER_LENGTH_RULE = "Each answer is between {low} and {high} words long."

CONDENSE_SYSTEM = """You shorten a research agent's reasoning. Rewrite the reasoning you are given in fewer words: keep the first person, its tone, and the facts, names and numbers it relies on; add nothing new.
Reply with one JSON object only: {"thought": "..."}"""
CONDENSE_USER = """Reasoning:
{thought}

Rewrite it so that the thought is between {low} and {high} words long."""

# Worked examples as chat turns (small models copy an exchange better than they follow rules).
EXAMPLE_QUESTION = "How tall is the Orlan Tower?"
EXAMPLE_OBSERVATION = "1. [Orlan Tower](https://example.com/orlan-tower)\nThe Orlan Tower is 312 metres tall."
EXAMPLE_STEPS = (
    '<think>\nI need the height, so I will search for the tower first.\n</think>\n<tool_call>\n{"name": "search", '
    '"arguments": {"query": ["Orlan Tower height"]}}\n</tool_call>\n<tool_response>\n'
    + EXAMPLE_OBSERVATION
    + "\n</tool_response>"
)
EXAMPLE_TOOL_CANDIDATES: tuple[str, ...] = (
    '{"thought": "The result names a page about the tower; reading it should confirm the height.", "tool": "visit", '
    '"arguments": {"url": "https://example.com/orlan-tower", "goal": "height of the tower"}}',
    '{"thought": "One snippet is thin evidence, so I should look for a second source on the height.", "tool": '
    '"search", "arguments": {"query": ["Orlan Tower 312 metres"]}}',
    '{"thought": "The height might also be given in feet, so I should check that figure as well.", "tool": '
    '"search", "arguments": {"query": ["Orlan Tower height feet"]}}',
)
EXAMPLE_ANSWER_CANDIDATES: tuple[str, ...] = (
    '{"thought": "The search result states the height plainly, so I can answer with it now.", "answer": "312 metres"}',
    '{"thought": "The snippet may round the figure; the tower is usually quoted at about 310 metres.", "answer": '
    '"about 310 metres"}',
    '{"thought": "Heights are often given with the spire; with it the tower is taller than the snippet says.", '
    '"answer": "330 metres"}',
)


def _clip(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars].rstrip() + " …"


def length_rule(low: int, high: int, answer_words: tuple[int, int] | None = None) -> str:
    rule = NO_THOUGHT_RULE if high == 0 else LENGTH_RULE.format(low=low, high=high)
    if answer_words is not None:
        rule += " " + ANSWER_LENGTH_RULE.format(low=answer_words[0], high=answer_words[1])
    return rule


_TERM_RE = re.compile(r"[^\W_][\w'-]*[^\W_]")
# Frequent in any prose, so they would crowd the list without saying what a response found.
_TERM_STOPWORDS = frozenset(
    "but not have has had all any can could would should will one also now more most than then there their "
    "they them been into out about over after before only other some such very".split()
)


def observation_terms(question: str, observations: Sequence[str], limit: int) -> list[str]:
    """The key terms of ``observations`` read whole (not cut to the prompt's view): their most frequent
    words, as first spelled and first seen first among equals, less stopwords, urls and the
    question's words (the prompt shows the question already).

    The agent read each response whole and its next step names what it found, often past the cut
    (on the WebDancer sample 97 % of the responses are longer than the 1,500 characters shown). An
    alternative written from the cut view alone leans less on the responses and more on the question
    than the original: a tell. Frequency stands in for salience: the 40 most frequent terms hold
    about 44 % of the response words the agents' own next thoughts use on that sample.
    """
    asked = {w.casefold() for w in _TERM_RE.findall(question)}
    counts: dict[str, int] = {}
    spelled: dict[str, str] = {}
    for text in observations:
        for word in _TERM_RE.findall(_URL_RE.sub(" ", text)):
            key = word.casefold()
            if len(key) < 3 or key in _STOPWORDS or key in _TERM_STOPWORDS or key in asked:
                continue
            counts[key] = counts.get(key, 0) + 1
            spelled.setdefault(key, word)
    # sorted() is stable and dicts keep insertion order: equal counts stay in order of first sight.
    return [spelled[key] for key in sorted(counts, key=lambda key: -counts[key])[:limit]]


def build_messages(
    question: str,
    steps: Sequence[TrajectoryStep],
    k: int,
    cfg: DecisionsConfig,
    *,
    tools: Sequence[str] | None = None,
    answers: bool = False,
    words: tuple[int, int] = (5, 40),
    answer_words: tuple[int, int] | None = None,
) -> list[Message]:
    """The prompt for step ``k`` (0-based): the question, steps ``0..k-1`` (newest kept when over
    budget) and the key terms of their tool responses, asking for ``cfg.alternatives`` candidates of
    the step's form with thoughts of ``words`` (and, at an answer step, answers of ``answer_words``)."""
    tools = list(tools if tools is not None else cfg.tools)
    history: list[str] = []
    for step in steps[:k]:
        block = render_action(step.thought, step.action)
        if step.observation is not None:
            block += "\n" + tags.tool_response(_clip(step.observation, cfg.prompt_observation_chars))
        history.append(block)
    # Steps before k only: a term of step k's own response would tell what the agent has not seen yet.
    observations = [s.observation for s in steps[:k] if s.observation]
    terms = ", ".join(observation_terms(question, observations, cfg.prompt_terms)) or "(none yet)"
    budget = cfg.max_prompt_tokens - estimate_tokens(question) - estimate_tokens(terms) - 400
    kept: list[str] = []
    for block in reversed(history):
        if kept and sum(map(estimate_tokens, kept)) + estimate_tokens(block) > budget:
            break
        kept.insert(0, block)
    omitted = len(history) - len(kept)
    so_far = "\n\n".join(([f"[{omitted} earlier steps omitted]"] if omitted else []) + kept) or "(none yet)"
    n = cfg.alternatives
    system = SYSTEM_PROMPT.format(
        n=n,
        form=(ANSWER_FORM if answers else TOOL_FORM).format(n=n),
        tools="\n".join(f"- {name}: {TOOL_DESCRIPTIONS[name]}" for name in tools),
        shape=(ANSWER_SHAPE if answers else TOOL_SHAPE).format(),
    )
    user = USER_PROMPT.format(
        question=question, steps=so_far, terms=terms, n=n, length=length_rule(*words, answer_words)
    )
    return [
        {"role": "system", "content": system},
        *_example_turns(n, answers),
        {"role": "user", "content": user},
    ]


def _example_turns(n: int, answers: bool) -> list[Message]:
    examples = EXAMPLE_ANSWER_CANDIDATES if answers else EXAMPLE_TOOL_CANDIDATES
    terms = ", ".join(observation_terms(EXAMPLE_QUESTION, [EXAMPLE_OBSERVATION], 40))
    user = USER_PROMPT.format(
        question=EXAMPLE_QUESTION, steps=EXAMPLE_STEPS, terms=terms, n=n, length=length_rule(8, 25)
    )
    reply = '{"candidates": [' + ", ".join(examples[i % len(examples)] for i in range(n)) + "]}"
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def build_condense_messages(thought: str, low: int, high: int) -> list[Message]:
    return [
        {"role": "system", "content": CONDENSE_SYSTEM},
        {"role": "user", "content": CONDENSE_USER.format(thought=thought.strip(), low=low, high=high)},
    ]


# ---------------------------------------------------------------------------
# Lengths
# ---------------------------------------------------------------------------

_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")


def trim_words(text: str, max_words: int) -> str:
    """``text`` cut to at most ``max_words`` words, keeping its *end* (the reasoning that leads into the
    action): whole trailing sentences when at least one fits, else the last ``max_words`` words."""
    if count_words(text) <= max_words:
        return text.strip()
    if max_words <= 0:
        return ""
    kept: list[str] = []
    used = 0
    for sentence in reversed([s for s in _SENTENCE_END_RE.split(text.strip()) if s.strip()]):
        n = count_words(sentence)
        if used + n > max_words:
            break
        kept.insert(0, sentence.strip())
        used += n
    if kept:
        return " ".join(kept)
    return " ".join(text.split()[-max_words:])


def words_budget(cap_tokens: int, n: int) -> int:
    """The longest thought (words) that ``n`` candidates can each have within a completion cap."""
    room = cap_tokens - REPLY_OVERHEAD_TOKENS - n * CANDIDATE_OVERHEAD_TOKENS
    return max(8, int(room / (n * TOKENS_PER_WORD)))


def band(words: int, length_band: tuple[float, float]) -> tuple[int, int]:
    """(low, high) words for thoughts within ``length_band`` of ``words``."""
    low, high = length_band
    return math.ceil(low * words), max(math.ceil(low * words), math.floor(high * words))


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option of a step: its parts (the text is rendered from them) and the key that makes two
    options the same decision (the action, not the wording of the thought)."""

    thought: str
    action: ToolAction | None
    answer: str | None
    key: str
    source: OptionSource

    @property
    def text(self) -> str:
        return render_action(self.thought, self.action, self.answer)

    @property
    def words(self) -> int:
        return count_words(self.thought)


def _action_key(action: ToolAction) -> str:
    return canonical_json(["tool", action.tool, normalize_arguments(action.tool, action.arguments)])


def _answer_key(answer: str) -> str:
    return canonical_json(["answer", normalize_answer(answer) or answer.strip()])


def original_option(steps: Sequence[TrajectoryStep], k: int, final_answer: str | None) -> Option:
    """The trajectory's own step k as an option (its text is exactly ``render_step``)."""
    step = steps[k]
    answer = step_answer(steps, k, final_answer)
    key = _action_key(step.action) if step.action is not None else _answer_key(answer or "")
    return Option(step.thought, step.action, answer, key, "original")


def candidate_option(c: Candidate, tools: Sequence[str], answers: bool) -> Option | None:
    """A valid candidate of the step's form as an option; None for the other form, an unknown tool,
    bad arguments, or neither tool nor answer."""
    if c.tool and not answers:
        action = ToolAction(tool=c.tool, arguments=normalize_arguments(c.tool, c.arguments))
        if validate_tool_call(action, list(tools)) is not None:
            return None
        return Option(c.thought.strip(), action, None, _action_key(action), "llm")
    if answers and not c.tool and c.answer and c.answer.strip():
        return Option(c.thought.strip(), None, c.answer.strip(), _answer_key(c.answer), "llm")
    return None


_URL_RE = re.compile(r"https?://[^\s)\]>\"'<]+")
_WORD_RE = re.compile(r"[\w'-]+")
_STOPWORDS = frozenset(
    "a an the of in on at to for by with from and or is are was were be been did does do what which who whom "
    "whose when where why how many much this that these those it its as".split()
)
# Strings shorter than this are too common to call a leak (a query "UK" says nothing of the future).
MIN_LEAK_CHARS = 4


def _urls(text: str | None) -> list[str]:
    return [u.rstrip(".,;:") for u in _URL_RE.findall(text or "")]


def _queries(action: ToolAction | None) -> list[str]:
    if action is None or action.tool not in ("search", "google_scholar"):
        return []
    query = normalize_arguments(action.tool, action.arguments).get("query")
    return [q.strip() for q in query if isinstance(q, str)] if isinstance(query, list) else []


def _step_text(step: TrajectoryStep) -> str:
    action = json.dumps(step.action.arguments, ensure_ascii=False) if step.action is not None else ""
    return "\n".join((step.thought, action, step.observation or ""))


def first_appearances(question: str, steps: Sequence[TrajectoryStep]) -> dict[str, int]:
    """Every URL and search query of a trajectory (casefolded) → the first step whose text holds it
    (its thought, call or response); -1 when the question already does."""
    found: set[str] = set()
    for step in steps:
        for s in [*_urls(_step_text(step)), *_queries(step.action)]:
            if len(s) >= MIN_LEAK_CHARS:
                found.add(s.casefold())
    texts = [question.casefold(), *(_step_text(s).casefold() for s in steps)]
    first: dict[str, int] = {}
    for s in found:
        first[s] = next((i - 1 for i, text in enumerate(texts) if s in text), len(steps))
    return first


def future_strings(first: dict[str, int], k: int) -> frozenset[str]:
    """The strings an option at step k must not contain: those first appearing at step k or later."""
    return frozenset(s for s, at in first.items() if at >= k)


def leaks(option: Option, future: frozenset[str]) -> bool:
    text = option.text.casefold()
    return any(s in text for s in future)


def earlier_thought(steps: Sequence[TrajectoryStep], k: int, words: int) -> str:
    """A fill's thought: the end of the agent's own thoughts before step k, cut to ``words``."""
    thoughts = "\n".join(s.thought.strip() for s in steps[:k] if s.thought.strip())
    return trim_words(thoughts, words) if thoughts else ""


def fill_options(
    question: str, steps: Sequence[TrajectoryStep], k: int, tools: Sequence[str], thought_words: int
) -> list[Option]:
    """Deterministic fallbacks for step k, from the past only: earlier steps' tool calls (latest
    first), then templates (search the question's keywords, the question, half of its keywords; visit
    an earlier url)."""
    thought = earlier_thought(steps, k, thought_words)
    out: list[Option] = []
    for j in range(k - 1, -1, -1):
        action = steps[j].action
        if action is not None and validate_tool_call(action, list(tools)) is None:
            out.append(Option(thought, action, None, _action_key(action), "earlier_step"))
    templates: list[ToolAction] = []
    if "search" in tools:
        words = [w for w in _WORD_RE.findall(question) if w.casefold() not in _STOPWORDS]
        half = len(words) // 2
        # All keywords, the question itself, then each half of the keywords (a narrower query).
        queries = [" ".join(words), question.strip()] + (
            [" ".join(words[:half]), " ".join(words[half:])] if half >= 2 else []
        )
        for query in dict.fromkeys(q[:200] for q in queries if q):
            templates.append(ToolAction(tool="search", arguments={"query": [query]}))
    if "visit" in tools:
        seen = [u for s in reversed(steps[:k]) for u in _urls(s.observation)]
        for url in dict.fromkeys(seen):
            templates.append(ToolAction(tool="visit", arguments={"url": url, "goal": question.strip()[:200]}))
    out.extend(Option(thought, a, None, _action_key(a), "template") for a in templates)
    return out


def shuffle_options(
    original: Option, alternatives: Sequence[Option], seed: int, trajectory_id: str, k: int
) -> tuple[list[Option], int]:
    """Original + alternatives in a seeded order; returns (options, index of the original)."""
    pool = [original, *alternatives]
    order = list(range(len(pool)))
    random.Random(int(content_hash([seed, trajectory_id, k], 16), 16)).shuffle(order)
    return [pool[i] for i in order], order.index(0)


def trajectory_tools(rollout: RolloutRecord, allowed: Sequence[str]) -> list[str]:
    """The tools an alternative may call: ``allowed`` ∩ the trajectory's own (all of ``allowed``
    when it uses none of them)."""
    used = {s.action.tool for s in rollout.steps if s.action is not None}
    return [t for t in allowed if t in used] or list(allowed)


# ---------------------------------------------------------------------------
# One step
# ---------------------------------------------------------------------------


class InsufficientAlternatives(Exception):
    def __init__(self, k: int, have: int, need: int) -> None:
        super().__init__(f"step {k + 1}: only {have} distinct valid alternatives, {need} needed")


@dataclass(frozen=True)
class StepPlan:
    """What one decision step asks for: its form, tools and thought-length band, and the limits."""

    k: int
    answers: bool
    tools: tuple[str, ...]
    words: tuple[int, int]  # (low, high) words asked of an alternative's thought
    answer_words: tuple[int, int] | None  # ... and of its answer, at an answer step
    target: int  # the thought length the band is centred on
    cap: int  # completion cap of each call
    future: frozenset[str]


async def _llm_candidates(llm: LLM, messages: list[Message], plan: StepPlan, n: int) -> list[Candidate]:
    try:
        reply = await llm.complete(
            messages, reply_model(plan.tools, plan.answers, n), stage="decisions", max_tokens=plan.cap
        )
    except (LLMInvalidOutput, LLMTruncated):
        return []  # no valid alternatives from the model: the step is filled (module docstring)
    return reply.candidates


def _fit_alternative(option: Option, plan: StepPlan) -> Option | None:
    """An LLM option with its thought fitted to the band: trimmed when long, refused when empty
    (while the original has a thought) — an empty thought among full ones gives the choice away."""
    low, high = plan.words
    if high == 0:
        return replace(option, thought="")
    if option.words == 0:
        return None
    return replace(option, thought=trim_words(option.thought, high)) if option.words > high else option


def select_alternatives(
    original: Option, llm_options: Sequence[Option | None], fills: Sequence[Option], plan: StepPlan, n: int
) -> list[Option]:
    """The first ``n`` distinct, leak-free options: the LLM's (fitted to the band), then fills."""
    chosen: list[Option] = []
    seen = {original.key}
    fitted = [_fit_alternative(o, plan) if o is not None else None for o in llm_options]
    for option in [*fitted, *fills]:
        if len(chosen) == n:
            break
        if option is None or option.key in seen or leaks(option, plan.future):
            continue
        seen.add(option.key)
        chosen.append(option)
    return chosen


def length_fit(original_words: int, alternatives: Sequence[Option], length_band: tuple[float, float]) -> bool:
    """Whether every LLM alternative's thought is within the band of ``original_words``."""
    low, high = length_band
    lengths = [o.words for o in alternatives if o.source == "llm"]
    return all(low * original_words <= w <= high * original_words for w in lengths)


def condense_target(
    alternatives: list[Option], length_band: tuple[float, float]
) -> tuple[list[Option], tuple[int, int], int]:
    """Where to condense the original to: (alternatives, possibly trimmed so that one length can
    fit all of them; the (low, high) words the original may have; the target within it)."""
    low, high = length_band
    lengths = [o.words for o in alternatives if o.source == "llm"]
    shortest = min(lengths)
    # Every alternative a must satisfy low*L <= a <= high*L: L in [max/high, min/low]. When the
    # alternatives differ too much for any L, the longest are trimmed to high/low times the shortest.
    ceiling = math.floor(shortest * high / low)
    alternatives = [
        replace(o, thought=trim_words(o.thought, ceiling)) if o.source == "llm" and o.words > ceiling else o
        for o in alternatives
    ]
    lengths = [o.words for o in alternatives if o.source == "llm"]
    ceil_low, floor_high = math.ceil(max(lengths) / high), math.floor(min(lengths) / low)
    allowed = (min(ceil_low, floor_high), floor_high)  # rounding can cross the bounds by one word
    target = min(max(round(statistics.median(lengths)), allowed[0]), allowed[1])
    return alternatives, allowed, target


async def condense(
    llm: LLM, thought: str, allowed: tuple[int, int], target: int, cap: int
) -> tuple[str, str]:
    """The original thought shortened into ``allowed`` words: (text, "llm" | "cut")."""
    low, high = allowed
    try:
        reply = await llm.complete(
            build_condense_messages(thought, low, min(high, max(low, target))),
            Condensed,
            stage="decisions",
            max_tokens=cap,
        )
        if low <= count_words(reply.thought) <= high:
            return reply.thought.strip(), "llm"
    except (LLMInvalidOutput, LLMTruncated):
        pass
    cut = trim_words(thought, target)
    if count_words(cut) < low:  # the whole trailing sentences were too few words
        cut = " ".join(thought.split()[-target:])
    return cut, "cut"


async def decide_step(
    rollout: RolloutRecord, k: int, llm: LLM, cfg: DecisionsConfig, seed: int, plan: StepPlan
) -> tuple[DecisionStep, int]:
    """Decision step k: (the step, how many options were filled). Raises LLMError, InsufficientAlternatives."""
    steps = rollout.steps
    n = cfg.alternatives
    original = original_option(steps, k, rollout.final_answer)
    messages = build_messages(
        rollout.question, steps, k, cfg, tools=plan.tools, answers=plan.answers, words=plan.words,
        answer_words=plan.answer_words,
    )  # fmt: skip
    candidates = await _llm_candidates(llm, messages, plan, n)
    llm_options = [candidate_option(c, plan.tools, plan.answers) for c in candidates]
    fills = fill_options(rollout.question, steps, k, plan.tools, plan.target)
    alternatives = select_alternatives(original, llm_options, fills, plan, n)
    if len(alternatives) < n:
        raise InsufficientAlternatives(k, len(alternatives), n)

    condensed: str | None = None
    shown = original
    if cfg.condense and original.words and any(o.source == "llm" for o in alternatives):
        if not length_fit(original.words, alternatives, cfg.length_band):
            alternatives, allowed, target = condense_target(alternatives, cfg.length_band)
            if target < original.words:
                text, condensed = await condense(llm, original.thought, allowed, target, plan.cap)
                shown = replace(original, thought=text)

    options, index = shuffle_options(shown, alternatives, seed, rollout.id, k)
    observation = steps[k].observation if steps[k].action is not None else None
    step = DecisionStep(
        options=[o.text for o in options],
        chosen=index,
        observation=observation,
        sources=[o.source for o in options],
        original_thought=original.thought if condensed else None,
        condensed=condensed,  # type: ignore[arg-type]
    )
    return step, sum(1 for o in alternatives if o.source in ("earlier_step", "template"))


def plan_step(
    rollout: RolloutRecord, k: int, cfg: DecisionsConfig, cap: int, first: dict[str, int]
) -> StepPlan:
    """The form, tools and thought-length band of decision step ``k``."""
    original = original_option(rollout.steps, k, rollout.final_answer)
    # Ask for the original's length, or for what the cap leaves room for; in the latter case the
    # original is condensed to the alternatives afterwards (decide_step).
    target = min(original.words, words_budget(cap, cfg.alternatives))
    # An answer's length is part of its form too: a one-line guess beside a full-sentence answer
    # gives the choice away as surely as a short thought does.
    answer_words = band(max(1, count_words(original.answer)), cfg.length_band) if original.answer else None
    return StepPlan(
        k=k,
        answers=original.action is None,
        answer_words=answer_words,
        tools=tuple(trajectory_tools(rollout, cfg.tools)),
        words=band(target, cfg.length_band),
        target=target,
        cap=cap,
        future=future_strings(first, k),
    )


def decision_points(rollout: RolloutRecord) -> list[int]:
    """Indexes of the steps that act: a tool call, or the final answer."""
    return [
        k
        for k, s in enumerate(rollout.steps)
        if s.action is not None or step_answer(rollout.steps, k, rollout.final_answer) is not None
    ]


# ---------------------------------------------------------------------------
# One trajectory
# ---------------------------------------------------------------------------


def filled_flag(filled: int, total: int, max_share: float) -> tuple[float, str | None]:
    """(filled share, the flag that keeps the record out of the corpus or None)."""
    share = filled / total if total else 0.0
    if share > max_share + 1e-9:
        return (
            share,
            f"filled_share {share:.2f} > {max_share:.2f}: {filled} of {total} alternatives are fills",
        )
    return share, None


async def decide(rollout: RolloutRecord, ctx: StageContext, cfg: DecisionsConfig) -> DecisionRecord | Failure:
    """The decision record of one trajectory, or a Failure naming why it has none."""
    points = decision_points(rollout)
    if not points:
        return Failure(
            input_ids=[rollout.id],
            error_kind="no_decision_steps",
            message="the trajectory has no tool call and no answer",
        )
    cap = completion_cap(cfg.max_tokens, ctx.spec.llm.max_tokens)
    first = first_appearances(rollout.question, rollout.steps)
    outcomes = await asyncio.gather(
        *(
            decide_step(rollout, k, ctx.llm, cfg, ctx.seed, plan_step(rollout, k, cfg, cap, first))
            for k in points
        ),
        return_exceptions=True,
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
    filled = sum(f for _, f in results)
    share, flag = filled_flag(filled, len(steps) * cfg.alternatives, cfg.max_filled_share)
    text = render_decisions(rollout.question, steps, rollout.outcome)
    params = {
        "prompt": STAGE.prompt_fingerprint,
        "model": ctx.llm.model_name,
        "alternatives": cfg.alternatives,
        "length_band": list(cfg.length_band),
        "condense": cfg.condense,
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
        filled_options=filled,
        question=rollout.question,
        filled_share=round(share, 4),
        flag=flag,
    )


class DecisionsStage(Stage[DecisionsConfig, RolloutRecord]):
    config_type = DecisionsConfig
    record_type = DecisionRecord
    verdict = Verdict(accepted_sql="outcome = 'correct'", rejected_sql="outcome = 'incorrect'")
    summary_fields = ("outcome", "trajectory_id")
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
