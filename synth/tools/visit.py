"""The offline `visit` tool: the text of a page of the run, cut to a budget with the stated goal in mind.

The released agent's `visit` has an LLM summarize the page for the goal. Offline we return
the page's own words instead (no extra model call, nothing invented): when a page is longer
than the budget, its passages that share the most words with the goal are kept, in page
order, so the evidence the goal asks for survives the cut.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from synth.tools.search import SearchIndex, split_passages

_WORD_RE = re.compile(r"\w{3,}")
_STOPWORDS = frozenset(
    "the and for with that this from what which who whom whose when where how why are was were "
    "has have had not but all any can its into about information find page".split()
)


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


def visit_tool(index: SearchIndex, urls: str | Sequence[str], goal: str, max_chars: int) -> str:
    """The `visit` tool: each url's page text (or why it is unavailable), headed by the goal."""
    url_list = [urls] if isinstance(urls, str) else list(urls)
    budget = max(200, max_chars // max(1, len(url_list)))
    parts: list[str] = []
    for url in url_list:
        page = index.page(url)
        if page is None:
            parts.append(
                f"The page {url} is not available offline. Only urls returned by search can be visited."
            )
            continue
        body, cut = select_for_goal(page.text, goal, budget)
        note = (
            f"\n[page cut to {len(body)} of {len(page.text)} characters, keeping the parts about the goal]"
            if cut
            else ""
        )
        parts.append(f"Page {page.url} ({page.title}), read for the goal: {goal}\n\n{body}{note}")
    return "\n=======\n".join(parts)
