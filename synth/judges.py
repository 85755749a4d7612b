"""The answer judge, shared by the stages that grade a final answer against a gold answer
(reasoning's step 2, rollouts' outcome). One prompt, one verdict model: editing it changes
both stages on purpose, and both stages' prompt fingerprints include it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from synth.llm.base import Message


def _clip(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _take_alias(data: dict[str, Any], field: str, aliases: tuple[str, ...]) -> None:
    if field not in data:
        for alias in aliases:
            if alias in data:
                data[field] = data.pop(alias)
                break


JUDGE_SYSTEM = """You grade an answer against the gold answer of a question. It is correct when it means the same thing as the gold answer, even if worded differently; it is wrong when it names something else.
Reply with one JSON object: {"correct": true or false, "rationale": "one sentence"}"""
JUDGE_USER = """Question: {question}
Gold answer: {gold}
Answer to grade: {predicted}"""
# One example of each verdict, the rejection last: a weak judge tends to copy the last
# example, and rejecting a right answer costs a sample while keeping a wrong one pollutes
# the corpus.
JUDGE_EXAMPLES: tuple[tuple[str, str, str, str], ...] = (
    (
        "Which ship was found abandoned near the Azores in December 1872?",
        "Mary Celeste",
        "the brigantine Mary Celeste",
        '{"correct": true, "rationale": "Both name the ship Mary Celeste."}',
    ),
    (
        "Which lake is the source of the Nile's longest branch?",
        "Lake Victoria",
        "Lake Tana",
        '{"correct": false, "rationale": "Lake Tana is the source of the Blue Nile, not Lake Victoria."}',
    ),
)


def build_judge_messages(question: str, gold: str, predicted: str) -> list[Message]:
    """The answer judge: one correct and one wrong example, then the question, gold and answer."""
    messages: list[Message] = [{"role": "system", "content": JUDGE_SYSTEM}]
    for ex_question, ex_gold, ex_predicted, ex_reply in JUDGE_EXAMPLES:
        ex_user = JUDGE_USER.format(question=ex_question, gold=ex_gold, predicted=ex_predicted)
        messages += [{"role": "user", "content": ex_user}, {"role": "assistant", "content": ex_reply}]
    user = JUDGE_USER.format(question=question, gold=gold, predicted=_clip(predicted, 500))
    return [*messages, {"role": "user", "content": user}]


class AnswerVerdict(BaseModel):
    """The judge's reply ("yes"/"no"/"true"/"false" are accepted as booleans)."""

    model_config = ConfigDict(extra="ignore")
    correct: bool = Field(description="the answer means the same as the gold answer")
    rationale: str = Field("", description="one sentence saying why")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            _take_alias(data, "correct", ("verdict", "is_correct", "match"))
            if isinstance(data.get("correct"), str):
                word = data["correct"].strip().lower()
                data["correct"] = {"correct": True, "incorrect": False, "wrong": False}.get(word, word)
            if data.get("rationale") is None:
                data["rationale"] = ""
        return data


# ---------------------------------------------------------------------------
# The rubric judge: long-form (report) answers, graded point by point
# ---------------------------------------------------------------------------

RUBRIC_SYSTEM = """You grade a long answer against a rubric: the key points a good answer states. For each numbered point, say whether the answer states it (in any wording). Also say whether the answer contradicts any point.
Reply with one JSON object: {"covered": [true or false for each point, in order], "contradiction": true or false}"""
RUBRIC_USER = """Question: {question}
Rubric:
{points}
Answer to grade: {answer}"""
# One example: a report that covers two of three points and contradicts none. About a place
# no document mentions, so the judge learns no fact from it.
RUBRIC_EXAMPLE: tuple[str, tuple[str, ...], str, str] = (
    "Write a short report on the Osk ferry terminal.",
    (
        "The Osk ferry terminal reopened on 4 March 2024.",
        "The rebuild took two years.",
        "The rebuild cost 14 million euros.",
    ),
    "After a two-year rebuild, the Osk ferry terminal opened again in March 2024.",
    '{"covered": [true, true, false], "contradiction": false}',
)


def _points(points: tuple[str, ...] | list[str]) -> str:
    return "\n".join(f"{i}. {p}" for i, p in enumerate(points, 1))


def build_rubric_messages(question: str, points: list[str], answer: str) -> list[Message]:
    """The rubric judge: one example, then the question, the rubric points and the answer."""
    ex_question, ex_points, ex_answer, ex_reply = RUBRIC_EXAMPLE
    return [
        {"role": "system", "content": RUBRIC_SYSTEM},
        {"role": "user", "content": RUBRIC_USER.format(question=ex_question, points=_points(ex_points), answer=ex_answer)},
        {"role": "assistant", "content": ex_reply},
        {"role": "user", "content": RUBRIC_USER.format(question=question, points=_points(points), answer=_clip(answer, 4000))},
    ]


class RubricVerdict(BaseModel):
    """The rubric judge's reply: which points the answer states, and whether it contradicts one."""

    model_config = ConfigDict(extra="ignore")
    covered: list[bool] = Field(description="one entry per rubric point, in order")
    contradiction: bool = Field(False, description="the answer contradicts a point")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            _take_alias(data, "covered", ("points", "verdicts", "stated"))
            points = data.get("covered")
            if isinstance(points, list):  # [{"n": 1, "covered": true}, ...]
                data["covered"] = [p.get("covered", p.get("stated")) if isinstance(p, dict) else p for p in points]
            if data.get("contradiction") is None:
                data["contradiction"] = False
        return data

    def coverage(self, n_points: int) -> float:
        """Share of the ``n_points`` points covered (a point the judge left out counts as not covered)."""
        return sum(1 for c in self.covered[:n_points] if c) / n_points if n_points else 0.0
