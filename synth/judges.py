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
