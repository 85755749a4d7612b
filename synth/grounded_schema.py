"""Reply schemas narrowed to one prompt's facts, for small models under constrained decoding.

A 135M model asked for a question about a few facts writes valid JSON (the embedded endpoint
enforces the schema) that the validators then reject: answers the facts do not state
("Wellington"), citations that are not handles ("S1, Transcribed from…"), questions that
repeat until the token cap (the quickstart's questions stage: 0 of 20 kept). Constrained
decoding can rule those out before a token is spent: the schema sent for one prompt lists
its handles (``S1``…``Sn``) as the only citations, the spans of its facts (numbers with
their unit, names, years) as the only answers, and bounds the question to one sentence.

The validators still decide (a span of an uncited fact is still ``ungrounded_answer``);
the schema only keeps the model inside what could pass. Servers without constrained
decoding ignore it, and a strong model does not need it: ``questions.grounded_schema`` is
off by default and on in the quickstart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

# A number with its unit or scale word ("2.41 million", "1.2 km", "35 %", "2024").
_NUMBER_SPAN = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:\s?(?:%|[a-zA-Z]{1,12}\b))?")
# Capitalised names of up to five words, "of"/"the"/"and" allowed inside ("Port of Elan").
_NAME_SPAN = re.compile(r"\b[A-Z][\w'-]+(?:\s+(?:(?:of|the|and|de|la)\s+)?[A-Z][\w'-]+){0,4}")
# Words that follow a number without being its unit ("2024 the", "12 in").
_NOT_A_UNIT = frozenset(
    {"a", "an", "and", "as", "at", "by", "for", "from", "in", "into", "is", "of", "on", "or", "the", "to", "was",
     "were", "with"}
)  # fmt: skip
# Sentence-initial words that are not names.
_NOT_A_NAME = frozenset(
    {"The", "A", "An", "In", "On", "At", "It", "Its", "This", "That", "There", "By", "From"}
)
MAX_QUESTION_CHARS = 200
MAX_CITED = 3


def _number_spans(text: str) -> Iterable[str]:
    for match in _NUMBER_SPAN.finditer(text):
        span = match.group(0).rstrip(",")
        head, _, unit = span.rpartition(" ")
        if head and unit.lower() in _NOT_A_UNIT:
            span = head
        yield span
        if " " in span:
            yield span.split(" ", 1)[0]  # the bare number too: "410,000" of "410,000 square"


def _name_spans(text: str) -> Iterable[str]:
    for match in _NAME_SPAN.finditer(text):
        words = match.group(0).split()
        while words and words[0] in _NOT_A_NAME:
            words = words[1:]
        if words:
            yield " ".join(words)


def answer_spans(facts: Sequence[str], exclude: Iterable[str] = ()) -> list[str]:
    """Short spans of ``facts`` that can be a factual answer, in first-seen order.

    ``exclude``: names the question is about (a question's own entity is not its answer).
    """
    excluded = {e.casefold() for e in exclude}
    out: dict[str, None] = {}
    for fact in facts:
        for span in (*_number_spans(fact), *_name_spans(fact)):
            span = span.strip()
            if span and span.casefold() not in excluded:
                out.setdefault(span, None)
    return list(out)


def narrowed_schema(
    base: type[BaseModel], *, handles: Sequence[str], answers: Sequence[str] | None, drop: Sequence[str] = ()
) -> type[BaseModel]:
    """A subclass of ``base`` whose JSON schema allows only these citations and answers.

    ``base`` must have ``question`` (a string), ``answer`` (a string) and ``statements`` (a
    list of strings). ``answers=None`` leaves the answer free (a computed or long answer);
    ``drop`` removes optional fields from the schema (what this style never needs). Parsing
    is ``base``'s own: only the schema the server enforces changes.
    """

    base_extra = base.model_config.get("json_schema_extra")

    def narrow(schema: dict[str, Any]) -> None:
        if isinstance(base_extra, dict):
            schema.update(base_extra)  # e.g. the base's own "required" list
        props = schema["properties"]
        props["question"] = {
            **props["question"],
            "maxLength": MAX_QUESTION_CHARS,
            # One sentence that asks: no braces, quotes or new lines, ends with "?".
            "pattern": r"^[A-Z][^{}\"\\\n?]{8,198}\?$",
        }
        props["statements"] = {
            **props["statements"],
            "items": {"type": "string", "enum": list(handles)},
            "minItems": 1,
            "maxItems": min(MAX_CITED, len(handles)),
        }
        if answers:
            props["answer"] = {**props["answer"], "enum": list(answers)}
        for name in drop:
            props.pop(name, None)
        schema["required"] = [r for r in schema.get("required", list(props)) if r in props]

    # A fresh class per prompt: the client caches schemas per class (bounded), and the name
    # stays the base's so the request reads the same to a server that logs it.
    return type(
        base.__name__,
        (base,),
        {
            "model_config": ConfigDict(**{**base.model_config, "json_schema_extra": narrow}),
            "__module__": __name__,
        },
    )
