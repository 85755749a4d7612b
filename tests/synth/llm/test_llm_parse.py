"""Tolerant parsing of model replies into validated pydantic objects."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, Field

from synth.llm.parse import OutputParseError, first_json_object, json_candidates, parse_structured


class Plan(BaseModel):
    tool: Literal["search", "visit", "answer"]
    query: str = Field(min_length=1)


def test_plain_json_parses() -> None:
    assert parse_structured('{"tool": "search", "query": "x"}', Plan) == Plan(tool="search", query="x")


def test_code_fence_with_language_tag_parses() -> None:
    text = 'Here you go:\n```json\n{"tool": "visit", "query": "https://a.b"}\n```\nDone.'
    assert parse_structured(text, Plan).tool == "visit"


def test_leading_prose_and_trailing_chatter_are_ignored() -> None:
    text = 'Sure! The plan is {"tool": "answer", "query": "42"} - hope that helps {not json}'
    assert parse_structured(text, Plan).query == "42"


def test_several_objects_in_a_row_take_the_first_valid_one() -> None:
    # SmolLM2-135M given a one-shot example often writes several objects one after another.
    text = '{"tool": "search", "query": "a"}\n{"tool": "visit", "query": "b"}{"tool": "answer"'
    assert parse_structured(text, Plan) == Plan(tool="search", query="a")


def test_an_invalid_first_object_is_skipped_for_a_later_valid_one() -> None:
    text = '{"example": true} then {"tool": "search", "query": "real"}'
    assert parse_structured(text, Plan).query == "real"


def test_trailing_commas_are_repaired_but_commas_inside_strings_are_kept() -> None:
    text = '{"tool": "search", "query": "a, b,}",\n}'
    assert parse_structured(text, Plan).query == "a, b,}"


def test_braces_inside_strings_do_not_confuse_the_scanner() -> None:
    text = 'x {"tool": "search", "query": "{not an object}"} y'
    assert parse_structured(text, Plan).query == "{not an object}"


def test_no_json_raises_output_parse_error_naming_the_schema() -> None:
    with pytest.raises(OutputParseError, match="no JSON object.*Plan"):
        parse_structured("I cannot help with that.", Plan)


def test_wrong_shape_raises_naming_the_failing_field() -> None:
    with pytest.raises(OutputParseError, match="tool"):
        parse_structured('{"tool": "fly", "query": "x"}', Plan)


def test_truncated_json_is_an_error_not_a_partial_object() -> None:
    with pytest.raises(OutputParseError):
        parse_structured('{"tool": "search", "query": "abc', Plan)


def test_nested_objects_are_not_yielded_separately() -> None:
    assert list(json_candidates('{"a": {"b": 1}} {"c": 2}')) == [{"a": {"b": 1}}, {"c": 2}]


def test_first_json_object_raises_when_there_is_none() -> None:
    with pytest.raises(OutputParseError):
        first_json_object("[1, 2, 3]")
