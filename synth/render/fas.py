"""CPT text for First-order Action Synthesis samples (paper §2.2.2-2.2.3).

* planning: the question, the problem analysis in ``<think>``, then exactly one
  ``<tool_call>`` (the predicted first action, never executed) or one ``<answer>``.
* reasoning: the question, the knowledge it was answered with (the cited statements with
  their time and source URL, as the agent would have retrieved them), step 1 (decomposition
  and a speculative answer from the model's own knowledge) and step 2 (the refinement
  against that knowledge) in ``<think>``, then ``<answer>`` — in that order. Without the
  knowledge in the text, CPT would teach step 2's corrections as ungrounded self-correction.

Each kind has a few framings; the record id picks one (a hash, so reruns render the same
text) and the corpus does not repeat a single frame millions of times. Generated text is
scrubbed of ReAct tags before it is framed: a model that writes ``<tool_call>`` inside its
analysis must not add a second tool call to the sample.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from synth.knowledge import evidence_line
from synth.records import MemoryRecord, PlanningRecord, ReasoningRecord, ToolAction
from synth.render import tags

# Tag names of DESIGN §1; any opening or closing form of them inside generated text is removed.
_REACT_TAG_RE = re.compile(r"</?\s*(?:think|tool_call|tool_response|answer)\s*/?>", re.I)


def scrub_tags(text: str) -> str:
    """``text`` without ReAct tags, so only the renderer's own tags structure a sample."""
    # Repeat until stable: removing one tag may join the halves of another ("<tool_<answer>call>").
    while True:
        scrubbed = _REACT_TAG_RE.sub("", text)
        if scrubbed == text:
            return scrubbed.strip()
        text = scrubbed


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_tags(value)
    if isinstance(value, list):
        return [_scrub_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    return value


def pick_variant(record_id: str, n_variants: int) -> int:
    """A stable index in ``range(n_variants)`` from a record id (never Python's salted hash)."""
    return int(hashlib.sha256(record_id.encode("utf-8")).hexdigest()[:8], 16) % n_variants


# ---------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------

# (question frame, opening line of the analysis). The analysis itself follows the opening.
PLANNING_FRAMES: tuple[tuple[str, str], ...] = (
    ("Question: {question}", ""),
    ("User: {question}\n\nAssistant:", "Let me analyze the problem before acting."),
    ("## Task\n{question}\n\n## Agent", "First, what does this question need?"),
    ("Research question: {question}", "Plan before searching."),
)


def render_planning(record: PlanningRecord, question: str) -> str:
    """A planning sample: question, ``<think>`` analysis, one tool call or one answer."""
    frame, opening = PLANNING_FRAMES[pick_variant(record.id, len(PLANNING_FRAMES))]
    analysis = scrub_tags(record.analysis)
    thought = f"{opening}\n{analysis}" if opening else analysis
    if record.action is not None:
        action = ToolAction(tool=record.action.tool, arguments=_scrub_value(record.action.arguments))
        final = tags.tool_call(action)
    elif record.answer is not None:
        final = tags.answer(scrub_tags(record.answer))
    else:
        raise ValueError(f"planning record {record.id} has neither an action nor an answer")
    return f"{frame.format(question=scrub_tags(question))}\n{tags.think(thought)}\n{final}"


# ---------------------------------------------------------------------------
# Reasoning
# ---------------------------------------------------------------------------

# (question frame, knowledge heading, step-1 heading, step-2 heading).
REASONING_FRAMES: tuple[tuple[str, str, str, str], ...] = (
    (
        "Question: {question}",
        "Knowledge:",
        "Step 1 - decompose and answer from what I know:",
        "Step 2 - check against the facts and refine:",
    ),
    (
        "User: {question}\n\nAssistant:",
        "Retrieved information:",
        "First attempt, from memory:",
        "Now verify each part against the retrieved information and fix any mistakes:",
    ),
    (
        "## Problem\n{question}",
        "## Relevant knowledge",
        "Initial reasoning:",
        "Refinement with the relevant knowledge:",
    ),
    (
        "Q: {question}",
        "Facts found:",
        "Let me break this down and guess first.",
        "Checking that guess against the facts found:",
    ),
)


def knowledge_block(statements: Sequence[MemoryRecord]) -> str:
    """The statements as numbered evidence lines, each with its time and source URL."""
    return "\n".join(
        f"[{i}] {scrub_tags(evidence_line(s.statement, s.time, s.source_url))}" for i, s in enumerate(statements, 1)
    )


def render_reasoning(record: ReasoningRecord, question: str, statements: Sequence[MemoryRecord]) -> str:
    """A reasoning sample: question, knowledge, step 1 and step 2 in ``<think>``, ``<answer>``."""
    frame, head_k, head1, head2 = REASONING_FRAMES[pick_variant(record.id, len(REASONING_FRAMES))]
    thought = f"{head1}\n{scrub_tags(record.step1)}\n\n{head2}\n{scrub_tags(record.step2)}"
    knowledge = f"{head_k}\n{knowledge_block(statements)}\n" if statements else ""
    return (
        f"{frame.format(question=scrub_tags(question))}\n{knowledge}{tags.think(thought)}\n"
        f"{tags.answer(scrub_tags(record.final_answer))}"
    )
