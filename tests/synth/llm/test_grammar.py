"""JSON-schema constraints (llguidance): response_format → grammar → token masks that only allow valid JSON."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
import torch
from pydantic import BaseModel, Field

from synth.llm.client import response_format
from synth.llm.grammar import (
    JsonConstraints,
    TrackedMatcher,
    UnsupportedResponseFormat,
    allowed_tokens,
    apply_token_bitmask,
    closed_objects,
    fill_mask,
    grammar_for,
)
from testing.masked_decoding import EOS, decode_under_mask


class Verdict(BaseModel):
    verdict: Literal["correct", "incorrect"]
    confidence: int = Field(ge=0, le=9)
    note: str = Field(max_length=6)


class Nested(BaseModel):
    verdicts: list[Verdict] = Field(min_length=1, max_length=2)
    done: bool


# --------------------------------------------------------------------------------------
# response_format → grammar
# --------------------------------------------------------------------------------------


def test_free_text_formats_have_no_grammar() -> None:
    assert grammar_for(None) is None
    assert grammar_for({"type": "text"}) is None


def test_json_schema_and_json_object_formats_compile() -> None:
    assert "json_schema" in (grammar_for(response_format(Verdict)) or "")
    assert grammar_for({"type": "json_object"})


@pytest.mark.parametrize(
    "bad",
    [{"type": "xml"}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": {"schema": 3}}, "json"],
)
def test_formats_that_cannot_be_enforced_are_refused_with_a_reason(bad: object) -> None:
    with pytest.raises(UnsupportedResponseFormat, match="response_format"):
        grammar_for(bad)  # type: ignore[arg-type]


def test_a_schema_the_compiler_refuses_names_the_problem(constraints: JsonConstraints) -> None:
    grammar = grammar_for({"type": "json_schema", "json_schema": {"schema": {"type": "strin"}}})
    assert grammar is not None
    with pytest.raises(UnsupportedResponseFormat, match="strin"):
        constraints.check(grammar)


def test_objects_listing_properties_are_closed_everywhere_but_where_the_schema_says_otherwise() -> None:
    schema = {
        "type": "object",
        "properties": {
            # a property *named* "properties" is not a schema keyword
            "properties": {"type": "object", "properties": {"a": {"type": "string"}}},
            "items": {"type": "array", "items": {"type": "object", "properties": {"b": {"type": "integer"}}}},
            "open": {"type": "object", "properties": {"c": {}}, "additionalProperties": True},
            "either": {"anyOf": [{"$ref": "#/$defs/D"}, {"type": "null"}]},
        },
        "$defs": {"D": {"type": "object", "properties": {"d": {"type": "boolean"}}}},
    }
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["properties"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["properties"]["properties"]
    assert closed["properties"]["items"]["items"]["additionalProperties"] is False
    assert closed["properties"]["open"]["additionalProperties"] is True
    assert closed["$defs"]["D"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the input is not modified


def test_pydantic_schema_keeps_its_field_order_in_the_grammar() -> None:
    grammar = grammar_for(response_format(Verdict)) or ""
    fields = json.loads(grammar)["grammars"][0]["json_schema"]["properties"]
    assert list(fields) == ["verdict", "confidence", "note"]


# --------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", [Verdict, Nested])
def test_decoding_random_scores_under_the_mask_always_yields_a_valid_reply(
    constraints: JsonConstraints, tokenizer: Any, schema: type[BaseModel]
) -> None:
    grammar = grammar_for(response_format(schema))
    assert grammar is not None
    for seed in range(4):
        text = tokenizer.decode(decode_under_mask(constraints, grammar, seed))
        schema.model_validate_json(text)  # raises if the mask let anything invalid through


def test_random_scores_without_the_mask_do_not_make_json(
    constraints: JsonConstraints, tokenizer: Any
) -> None:
    # The control for the test above: the validity comes from the mask, not from luck.
    gen = torch.Generator().manual_seed(0)
    tokens = [int(torch.randn(constraints.vocab_size, generator=gen).argmax()) for _ in range(20)]
    with pytest.raises(ValueError):
        Verdict.model_validate_json(tokenizer.decode(tokens))


def test_bitmask_bits_agree_with_the_matcher_token_by_token(constraints: JsonConstraints) -> None:
    grammar = grammar_for(response_format(Verdict))
    assert grammar is not None
    tracked = TrackedMatcher(constraints.matcher(grammar))
    bitmask = torch.zeros((1, constraints.mask_words), dtype=torch.int32)
    fill_mask(constraints, tracked, bitmask, 0)
    allowed = allowed_tokens(bitmask, constraints.vocab_size)[0]
    assert 0 < int(allowed.sum()) < constraints.vocab_size
    probe = torch.cat([allowed.nonzero().flatten()[:50], (~allowed).nonzero().flatten()[::997]])
    for token in probe.tolist():
        assert bool(allowed[token]) == (tracked.matcher.validate_tokens([token]) == 1), token


def test_a_finished_object_allows_only_end_of_sequence(constraints: JsonConstraints, tokenizer: Any) -> None:
    grammar = grammar_for(response_format(Verdict))
    assert grammar is not None
    tracked = TrackedMatcher(constraints.matcher(grammar))
    tokens = tokenizer.encode('{"verdict":"correct","confidence":3,"note":"ok"}', add_special_tokens=False)
    tracked.advance(tokens)
    assert not tracked.matcher.is_error()
    bitmask = torch.zeros((1, constraints.mask_words), dtype=torch.int32)
    fill_mask(constraints, tracked, bitmask, 0)
    assert allowed_tokens(bitmask, constraints.vocab_size)[0].nonzero().flatten().tolist() == [EOS]


def test_a_matcher_in_error_ends_the_reply_instead_of_masking_everything(
    constraints: JsonConstraints,
) -> None:
    grammar = grammar_for(response_format(Verdict))
    assert grammar is not None
    tracked = TrackedMatcher(constraints.matcher(grammar))
    tracked.advance([EOS + 1000, EOS + 1001])  # tokens the grammar forbids
    assert tracked.matcher.is_error()
    bitmask = torch.zeros((1, constraints.mask_words), dtype=torch.int32)
    fill_mask(constraints, tracked, bitmask, 0)
    assert allowed_tokens(bitmask, constraints.vocab_size)[0].nonzero().flatten().tolist() == [EOS]


def test_tracked_matcher_consumes_only_tokens_it_has_not_seen(
    constraints: JsonConstraints, tokenizer: Any
) -> None:
    grammar = grammar_for({"type": "json_object"})
    assert grammar is not None
    tracked = TrackedMatcher(constraints.matcher(grammar))
    ids = tokenizer.encode('{"a":1}', add_special_tokens=False)
    tracked.advance(ids[:2])
    tracked.advance(ids)  # the whole list again: only the rest is new
    assert tracked.consumed == len(ids) and not tracked.matcher.is_error()


def test_a_row_emptied_by_an_earlier_filter_becomes_uniform_over_allowed_tokens() -> None:
    bitmask = torch.tensor([[0b1010, 0]], dtype=torch.int32)  # tokens 1 and 3 of 64
    scores = torch.full((1, 64), float("-inf"))
    scores[0, 0] = 5.0  # top-k kept only a token the grammar forbids
    out = apply_token_bitmask(scores, bitmask)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [1, 3]


def test_logits_wider_than_the_tokenizer_never_allow_the_extra_ids() -> None:
    bitmask = torch.full((1, 1), -1, dtype=torch.int32)  # 32 tokens, all allowed
    out = apply_token_bitmask(torch.zeros((1, 40)), bitmask)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == list(range(32))


@pytest.mark.parametrize("reply_model", ["planning", "decisions"])
def test_tool_arguments_are_guided_flat_and_validated_loosely(
    reply_model: str, constraints: JsonConstraints, tokenizer: Any
) -> None:
    """The 135M model nested ``{"query": {"query": …`` until the cap cut every planning reply of
    a preview; guided replies cannot, and unguided near-misses still reach the tool check."""
    from synth.stages.decisions import Candidate
    from synth.stages.planning import PlanDraft

    model = PlanDraft if reply_model == "planning" else Candidate
    grammar = grammar_for(response_format(model))
    assert grammar is not None

    def accepted(text: str) -> bool:
        matcher = constraints.matcher(grammar)
        return matcher.validate_tokens(tokenizer.encode(text, add_special_tokens=False)) == len(
            tokenizer.encode(text, add_special_tokens=False)
        )

    # The grammar writes compact JSON (no spaces between tokens).
    first = (
        '{"analysis":"a","tool":"search",' if reply_model == "planning" else '{"thought":"a","tool":"search",'
    )
    assert accepted(first + '"arguments":{"query":["riverton visitors"],"n":3}}')
    assert not accepted(first + '"arguments":{"query":{"query"')
    nested = {"tool": "search", "arguments": {"query": {"query": 1}}}
    loose = model.model_validate({"analysis": "a", "thought": "a", **nested})
    assert loose.arguments == {"query": {"query": 1}}  # left for the tool check to name
