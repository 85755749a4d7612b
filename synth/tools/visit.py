"""The offline `visit` tool: a page of the run read for a goal, in the released Tongyi agent's format.

The released agent's `visit` (Tongyi DeepResearch, ``tool_visit.py``) has an LLM read the
page for the call's ``goal`` and answers::

    The useful information in {url} for user goal {goal} as follows:

    Evidence in page:
    {evidence}

    Summary:
    {summary}

Offline, the **evidence** is the page's own words chosen for the goal (nothing invented):
when a page is longer than the budget, its passages that share the most words with the goal
are kept, in page order. ``visit_tool`` returns the evidence alone; ``SummarizingVisit``
(``rollouts.visit_summary``, on in the long-horizon profile) adds a **summary** written by
the LLM from that evidence, and hands back the raw page text for the rollout record to keep.
A page the run does not have gets the released tool's own "could not be accessed" answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from synth.llm.base import LLM, LLMInvalidOutput, LLMTruncated, Message
from synth.tools.search import SearchIndex, split_passages

_WORD_RE = re.compile(r"\w{3,}")
_STOPWORDS = frozenset(
    "the and for with that this from what which who whom whose when where how why are was were "
    "has have had not but all any can its into about information find page".split()
)
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+")

# The released tool's wording (Tongyi DeepResearch, inference/tool_visit.py).
HEADER = "The useful information in {url} for user goal {goal} as follows: \n\n"
UNAVAILABLE_EVIDENCE = (
    "The provided webpage content could not be accessed. Please check the URL or file format."
)
UNAVAILABLE_SUMMARY = (
    "The webpage content could not be processed, and therefore, no information is available."
)

SUMMARY_SYSTEM = """You read the relevant parts of a web page for a user goal. Write one concise paragraph saying what they state about the goal and how far they answer it. Use only the page text; add nothing.
Reply with one JSON object only: {"summary": "..."}"""
SUMMARY_USER = """Page: {url}
Goal: {goal}

Page text:
{evidence}"""


def _goal_words(goal: str) -> set[str]:
    return {w for w in _WORD_RE.findall(goal.casefold()) if w not in _STOPWORDS}


def select_for_goal(text: str, goal: str, max_chars: int) -> tuple[str, bool]:
    """``text`` if it fits, else its passages most related to ``goal`` within ``max_chars``; (text, cut)."""
    if len(text) <= max_chars:
        return text, False
    # Passages small enough that several fit: the goal's evidence rarely fills a whole budget.
    passages = split_passages(text, max_chars=max(100, min(800, max_chars // 3)))
    words = _goal_words(goal)
    scored = sorted(
        range(len(passages)),
        key=lambda i: (-len(words & set(_WORD_RE.findall(passages[i].casefold()))), i),
    )
    keep: list[int] = []
    used = 0
    for i in scored:
        cost = len(passages[i]) + 3
        if used + cost > max_chars:
            continue
        keep.append(i)
        used += cost
    if not keep:  # a single passage longer than the budget
        return text[:max_chars].rsplit(" ", 1)[0] + " …", True
    return "\n…\n".join(passages[i] for i in sorted(keep)), True


def _urls(urls: str | Sequence[str]) -> list[str]:
    return [urls] if isinstance(urls, str) else list(urls)


def _budget(max_chars: int, n_urls: int) -> int:
    return max(200, max_chars // max(1, n_urls))


def format_visit(url: str, goal: str, evidence: str, summary: str | None = None) -> str:
    """One url's answer in the released tool's format (the summary section only when there is one)."""
    text = HEADER.format(url=url, goal=goal) + f"Evidence in page: \n{evidence}\n\n"
    if summary is not None:
        text += f"Summary: \n{summary}\n\n"
    return text.rstrip()


def visit_tool(index: SearchIndex, urls: str | Sequence[str], goal: str, max_chars: int) -> str:
    """The `visit` tool without a summary: each url's evidence for the goal (or that it cannot be read)."""
    url_list = _urls(urls)
    budget = _budget(max_chars, len(url_list))
    parts: list[str] = []
    for url in url_list:
        page = index.page(url)
        if page is None:
            parts.append(format_visit(url, goal, UNAVAILABLE_EVIDENCE))
            continue
        evidence, _ = select_for_goal(page.text, goal, budget)
        parts.append(format_visit(page.url, goal, evidence))
    return "\n=======\n".join(parts)


class PageSummary(BaseModel):
    """The LLM's summary of a page's evidence for a goal."""

    model_config = ConfigDict(extra="ignore")
    summary: str = Field(description="what the page states about the goal")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: object) -> object:
        if isinstance(data, dict) and "summary" not in data:
            for alias in ("text", "answer", "content"):
                if isinstance(data.get(alias), str):
                    return {**data, "summary": data[alias]}
        return data


def build_summary_messages(url: str, goal: str, evidence: str) -> list[Message]:
    return [
        {"role": "system", "content": SUMMARY_SYSTEM},
        {"role": "user", "content": SUMMARY_USER.format(url=url, goal=goal, evidence=evidence)},
    ]


def extractive_summary(evidence: str, max_sentences: int = 2) -> str:
    """The first sentences of the evidence: the summary when the LLM gives none."""
    sentences = [s.strip() for s in _SENTENCE_RE.split(" ".join(evidence.split())) if s.strip()]
    return " ".join(sentences[:max_sentences])


@dataclass(frozen=True)
class VisitResult:
    observation: str  # what the agent sees: evidence and summary per url
    raw: str  # the pages as they were read (kept in the rollout record, never in a CPT text)


@dataclass
class SummarizingVisit:
    """`visit` as the released agent does it: goal-conditioned evidence plus an LLM summary per url."""

    index: SearchIndex
    llm: LLM
    max_chars: int = 6000
    summary_max_tokens: int | None = 256

    async def summarize(self, url: str, goal: str, evidence: str) -> str:
        try:
            reply = await self.llm.complete(
                build_summary_messages(url, goal, evidence), PageSummary, stage="rollouts",
                max_tokens=self.summary_max_tokens,
            )  # fmt: skip
        except (LLMInvalidOutput, LLMTruncated):
            return extractive_summary(evidence)  # a summary from the page itself, never an invented one
        return " ".join(reply.summary.split()) or extractive_summary(evidence)

    async def __call__(self, urls: str | Sequence[str], goal: str) -> VisitResult:
        """Raises the LLM's transport errors (``LLMError``); the rollout records them as a failure."""
        url_list = _urls(urls)
        budget = _budget(self.max_chars, len(url_list))
        parts: list[str] = []
        raw: list[str] = []
        for url in url_list:
            page = self.index.page(url)
            if page is None:
                parts.append(format_visit(url, goal, UNAVAILABLE_EVIDENCE, UNAVAILABLE_SUMMARY))
                continue
            evidence, _ = select_for_goal(page.text, goal, budget)
            summary = await self.summarize(page.url, goal, evidence)
            parts.append(format_visit(page.url, goal, evidence, summary))
            raw.append(f"{page.url}\n{page.title}\n\n{page.text}")
        return VisitResult(observation="\n=======\n".join(parts), raw="\n=======\n".join(raw))
