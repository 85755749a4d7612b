"""Reply schemas narrowed to a prompt's facts: under the embedded endpoint's mask, even a model
with no idea (random scores) can only cite the prompt's handles and answer with a span of its facts."""

from __future__ import annotations

import json
from typing import Any

from synth.grounded_schema import answer_spans, narrowed_schema
from synth.llm.client import response_format
from synth.llm.grammar import JsonConstraints, grammar_for
from synth.stages.questions import QuestionDraft
from testing.masked_decoding import decode_under_mask

FACTS = [
    "Riverton had 2.41 million overnight visitors in 2024.",
    "The Silvermere River is 183 km long and flows into Lake Varn.",
    "Port of Elan opened a new terminal in 2019, built by Calder Power.",
]


def test_answer_spans_are_the_facts_numbers_with_their_units_and_names_but_not_the_asked_entity() -> None:
    spans = answer_spans(FACTS, exclude=["Riverton"])
    for expected in (
        "2.41 million",
        "2024",
        "183 km",
        "Silvermere River",
        "Lake Varn",
        "Port of Elan",
        "Calder Power",
    ):
        assert expected in spans, (expected, spans)
    assert "Riverton" not in spans
    assert "The" not in spans and "2024." not in spans
    assert all(any(s in fact for fact in FACTS) for s in spans)  # every span is verbatim text of a fact


def test_the_narrowed_schema_lists_handles_and_answers_and_keeps_the_bases_parsing() -> None:
    schema = narrowed_schema(QuestionDraft, handles=["S1", "S2"], answers=["183 km"], drop=["calculation"])
    doc = schema.model_json_schema()
    assert doc["properties"]["statements"]["items"]["enum"] == ["S1", "S2"]
    assert doc["properties"]["answer"]["enum"] == ["183 km"]
    assert "calculation" not in doc["properties"]
    assert set(doc["required"]) == {"question", "answer", "statements"}
    parsed = schema.model_validate(
        {"question": "How long is it?", "answer": "183 km", "statements": "S1, S2"}
    )
    assert isinstance(parsed, QuestionDraft) and parsed.statements == ["S1", "S2"]  # the base's loose parsing
    assert (
        QuestionDraft.model_json_schema()["properties"]["answer"].get("enum") is None
    )  # the base is untouched


def test_under_the_mask_any_decoding_cites_only_handles_and_answers_with_a_span(
    constraints: JsonConstraints, tokenizer: Any
) -> None:
    spans = answer_spans(FACTS, exclude=["Riverton"])
    schema = narrowed_schema(QuestionDraft, handles=["S1", "S2", "S3"], answers=spans, drop=["calculation"])
    grammar = grammar_for(response_format(schema))
    assert grammar is not None
    for seed in range(4):
        reply = json.loads(tokenizer.decode(decode_under_mask(constraints, grammar, seed, max_steps=400)))
        assert set(reply["statements"]) <= {"S1", "S2", "S3"} and 1 <= len(reply["statements"]) <= 3
        assert reply["answer"] in spans
        assert reply["question"].endswith("?") and len(reply["question"]) <= 200
        assert "{" not in reply["question"] and "\n" not in reply["question"]
