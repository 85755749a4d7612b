"""CPT text of agent trajectories: tool-call traces (rollouts) and decision texts (HAS, paper §2.3).

Both are built only from ``synth.render.tags`` helpers, so they share the tag dialect of the
rest of the corpus. A step's *action text* (``render_action``) is the unit both use: a trace
is the question followed by action texts and tool responses; a decision step lists N+1
action texts as options, of which the chosen one is exactly the trajectory's own step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from synth.records import DecisionStep, Outcome, ToolAction, TrajectoryStep
from synth.render import tags

# About 4 characters per token for English BPE vocabularies; the corpus stage recounts
# with the real tokenizer before routing, so this only needs to be cheap and stable.
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """A cheap token estimate (characters / 4, rounded up)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def render_action(thought: str, action: ToolAction | None, answer: str | None = None) -> str:
    """One step as the agent writes it: ``<think>`` then a ``<tool_call>`` or an ``<answer>``."""
    parts: list[str] = []
    if thought.strip():
        parts.append(tags.think(thought))
    if action is not None:
        parts.append(tags.tool_call(action))
    elif answer is not None:
        parts.append(tags.answer(answer))
    return "\n".join(parts)


def step_answer(steps: Sequence[TrajectoryStep], index: int, final_answer: str | None) -> str | None:
    """The answer a step gives: the final answer on the last step when that step calls no tool."""
    is_final = index == len(steps) - 1 and steps[index].action is None
    return final_answer if is_final else None


def render_step(steps: Sequence[TrajectoryStep], index: int, final_answer: str | None) -> str:
    """The action text of ``steps[index]`` (the option a decision text marks as chosen)."""
    step = steps[index]
    return render_action(step.thought, step.action, step_answer(steps, index, final_answer))


def render_rollout(
    question: str,
    steps: Sequence[TrajectoryStep],
    final_answer: str | None,
    outcome: Outcome | None = None,
) -> str:
    """A tool-call trace: the question, then per step think / tool_call / tool_response, then the answer.

    With a judged ``outcome`` the trace ends with an explicit outcome line (the corpus's switch
    for admitting incorrect rollouts: a wrong answer is never taught as a right one).
    """
    blocks = [f"Question: {question.strip()}"]
    for i, step in enumerate(steps):
        body = render_step(steps, i, final_answer)
        if step.action is not None and step.observation is not None:
            body = (
                f"{body}\n{tags.tool_response(step.observation)}"
                if body
                else tags.tool_response(step.observation)
            )
        if body:
            blocks.append(body)
    if outcome is not None and outcome in ROLLOUT_OUTCOME_LINES:
        blocks.append(ROLLOUT_OUTCOME_LINES[outcome])
    return "\n\n".join(blocks)


ROLLOUT_OUTCOME_LINES: dict[str, str] = {
    "correct": "This final answer is correct.",
    "incorrect": "This final answer is incorrect.",
}

# The paper's HAS ending (AgentFounder §2.3). An unjudged trajectory gets no ending at all: its
# text never enters the corpus, and no sentence about the pipeline ever stands in for one.
OUTCOME_SENTENCES: dict[str, str] = {
    "correct": "My decision is Correct.",
    "incorrect": "My decision is Incorrect.",
}


def render_decisions(question: str, steps: Sequence[DecisionStep], outcome: Outcome) -> str:
    """The HAS text: per step the N+1 options, "I will choose option n", the real response; then the
    judged outcome (none when the outcome is unknown)."""
    blocks = [f"Question: {question.strip()}"]
    for k, step in enumerate(steps, 1):
        lines = [f"Step {k}. The candidate next actions are:"]
        for n, option in enumerate(step.options, 1):
            lines.append(f"\nOption {n}:\n{option}")
        lines.append(f"\nI will choose option {step.chosen + 1}.")
        if step.observation is not None:
            lines.append(tags.tool_response(step.observation))
        blocks.append("\n".join(lines))
    if outcome in OUTCOME_SENTENCES:
        blocks.append(OUTCOME_SENTENCES[outcome])
    return "\n\n".join(blocks)


def count_words(text: str) -> int:
    """Whitespace-separated words: the unit of the HAS thought-length band."""
    return len(text.split())
