"""JSON-schema constraints for a local model: ``response_format`` → token masks (llguidance).

The embedded endpoint (``synth.llm.constrained_server``) uses this to make a structured reply
parse by construction: at every decoding step a grammar matcher says which tokens may come
next, and all others get ``-inf``. Three pieces, each usable on its own:

* ``grammar_for(response_format)``: the llguidance grammar of an OpenAI ``response_format``
  (``json_schema`` → that schema, ``json_object`` → any object, ``text``/absent → none).
* ``JsonConstraints``: one per server and tokenizer. Builds the ``LLTokenizer`` once (about
  1-3 s for SmolLM2's 49k vocabulary), validates grammars, hands out fresh matchers (a
  pristine matcher per grammar is kept and deep-copied: ~0.05 ms instead of ~1 ms), and holds
  which request id is bound to which grammar, so generation code that only sees a request id
  (the continuous-batching loop) can find its constraint.
* ``fill_mask`` / ``apply_token_bitmask``: one matcher's allowed tokens into a bitmask row,
  and bitmask rows onto a score matrix.

Why llguidance and not xgrammar: both are registry packages made for this, but xgrammar's
wheel requires ``triton`` and ``apache-tvm-ffi`` on Linux (hundreds of MB, GPU-oriented),
while llguidance is one 3 MB wheel with no dependencies. Its torch helper
``apply_token_bitmask_inplace`` is wrapped in ``torch.compile``, which on a CPU-only machine
means a C++ toolchain and a long first call, so the mask is applied here with plain tensor ops.

Objects that list their ``properties`` and do not say otherwise are closed
(``additionalProperties: false``), as OpenAI's strict structured outputs and xgrammar's
default strict mode do: JSON Schema leaves them open, pydantic's schemas never say, and a
small model under an open object invents keys until the token cap (seen with a random-weight
model: a valid object, then ``," dynamics rabbin…`` for 20 more tokens).

Compile options: compact JSON (``whitespace_flexible: false``): a 135M model given free
whitespace tends to emit newlines and spaces until the token cap, and every separator it
does not write is a token it does not pay for. ``lenient: true``: JSON-schema keywords
llguidance does not know (pydantic's ``format`` values, for one) are ignored rather than
refused; the client validates every reply against the pydantic model anyway.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import llguidance
import torch

# Options of llguidance's JSON compiler applied to every schema (see the module docstring).
JSON_COMPILE_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "lenient": True}
# Bits per bitmask word: llguidance writes one bit per token into int32 words.
_BITS = 32


class UnsupportedResponseFormat(ValueError):
    """``response_format`` cannot be enforced (unknown type, or a schema the compiler refuses)."""


def grammar_for(response_format: Mapping[str, Any] | None) -> str | None:
    """The llguidance grammar enforcing ``response_format``, or ``None`` for free text.

    Accepts the OpenAI shapes ``{"type": "json_schema", "json_schema": {"schema": {…}}}``,
    ``{"type": "json_object"}`` and ``{"type": "text"}``. Raises
    ``UnsupportedResponseFormat`` for anything else.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise UnsupportedResponseFormat(
            f"response_format must be an object, got {type(response_format).__name__}"
        )
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return _compile_schema(json.dumps({"type": "object"}))
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise UnsupportedResponseFormat("response_format.json_schema.schema must be a JSON schema object")
        return _compile_schema(json.dumps(closed_objects(schema)))
    raise UnsupportedResponseFormat(
        f"response_format.type {kind!r} is not supported (use json_schema, json_object or text)"
    )


# JSON Schema keywords whose value is a schema, a list of schemas, or a name → schema map.
_SCHEMA_KEYS = (
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "additionalItems",
)
_SCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_SCHEMA_MAP_KEYS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")


def closed_objects(schema: Any) -> Any:
    """A copy of ``schema`` where every object listing ``properties`` without an explicit
    ``additionalProperties`` (or ``patternProperties``) gets ``additionalProperties: false``."""
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = dict(schema)
    for key in _SCHEMA_KEYS:
        if isinstance(out.get(key), Mapping):
            out[key] = closed_objects(out[key])
    for key in _SCHEMA_LIST_KEYS:
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(s) for s in out[key]]
    for key in _SCHEMA_MAP_KEYS:
        if isinstance(out.get(key), Mapping):
            out[key] = {name: closed_objects(s) for name, s in out[key].items()}
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=256)
def _compile_schema(schema_json: str) -> str:
    # Stages send the same few schemas thousands of times: compile each once.
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema_json, overrides=JSON_COMPILE_OPTIONS)
    except ValueError as err:
        raise UnsupportedResponseFormat(f"response_format schema: {err}") from None


class JsonConstraints:
    """Grammars, matchers and request bindings for one tokenizer (see the module docstring).

    ``tokenizer`` is a Hugging Face fast tokenizer; ``vocab_size`` the width of the model's
    logits (may exceed the tokenizer's vocabulary: the extra ids are never allowed);
    ``eos_token_ids`` the tokens that end a reply: once the grammar is complete, only these
    are allowed, so the reply stops right after the JSON value.
    """

    def __init__(self, tokenizer: Any, *, vocab_size: int, eos_token_ids: Iterable[int]) -> None:
        from llguidance.hf import from_tokenizer

        eos = sorted({int(t) for t in eos_token_ids if int(t) >= 0})
        if not eos:
            raise ValueError("constrained decoding needs at least one end-of-sequence token id")
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(eos)
        self._tokenizer = from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=eos[0] if len(eos) == 1 else eos
        )
        self._pristine: dict[str, llguidance.LLMatcher] = {}
        self._bound: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def mask_words(self) -> int:
        """int32 words per bitmask row."""
        return (self.vocab_size + _BITS - 1) // _BITS

    def check(self, grammar: str) -> None:
        """Raise ``UnsupportedResponseFormat`` with the compiler's message if ``grammar`` is invalid."""
        self._pristine_matcher(grammar)

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        """A fresh matcher for ``grammar``, positioned before the first token."""
        return self._pristine_matcher(grammar).deep_copy()

    def _pristine_matcher(self, grammar: str) -> llguidance.LLMatcher:
        with self._lock:
            found = self._pristine.get(grammar)
        if found is not None:
            return found
        error = llguidance.LLMatcher.validate_grammar(grammar, self._tokenizer)
        if error:
            raise UnsupportedResponseFormat(f"response_format schema: {error}")
        matcher = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise UnsupportedResponseFormat(f"response_format schema: {matcher.get_error()}")
        with self._lock:
            if len(self._pristine) >= 256:  # a client inventing schemas must not grow this forever
                self._pristine.clear()
            return self._pristine.setdefault(grammar, matcher)

    # -- which request is bound to which grammar ------------------------------------------

    def bind(self, request_id: str, grammar: str) -> None:
        """Constrain request ``request_id`` by ``grammar`` until ``unbind``."""
        with self._lock:
            self._bound[request_id] = grammar

    def unbind(self, request_id: str) -> None:
        with self._lock:
            self._bound.pop(request_id, None)

    def grammar_of(self, request_id: str) -> str | None:
        """The grammar bound to ``request_id``, or ``None`` for an unconstrained request."""
        with self._lock:
            return self._bound.get(request_id)


class TrackedMatcher:
    """A matcher fed from a growing list of generated tokens (it remembers how many it ate).

    Generation loops hand us "all tokens generated so far", not "the token just sampled";
    ``advance`` consumes only the new ones. A token the grammar refuses (it cannot be
    sampled under the mask, but a loop could append one anyway) puts the matcher in its
    error state; ``fill_mask`` then allows only end-of-sequence, ending the reply.
    """

    __slots__ = ("matcher", "consumed")

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self.matcher = matcher
        self.consumed = 0

    def advance(self, generated: list[int]) -> None:
        new = generated[self.consumed :]
        if new:
            self.matcher.consume_tokens(new)
            self.consumed = len(generated)


def fill_mask(constraints: JsonConstraints, tracked: TrackedMatcher, bitmask: torch.Tensor, row: int) -> None:
    """Write the tokens ``tracked`` allows next into ``bitmask[row]`` (int32, CPU, contiguous)."""
    matcher = tracked.matcher
    if matcher.is_error():
        _eos_only(constraints, bitmask, row)
        return
    view = bitmask[row]
    matcher.unsafe_compute_mask_ptr(view.data_ptr(), view.numel() * view.element_size())
    if not bool(view.any()):  # nothing allowed (should not happen): end the reply instead of NaNs
        _eos_only(constraints, bitmask, row)


def _eos_only(constraints: JsonConstraints, bitmask: torch.Tensor, row: int) -> None:
    bitmask[row].zero_()
    for token in constraints.eos_token_ids:
        word, bit = divmod(token, _BITS)
        # Build the word as a Python int and reinterpret it as int32 (bit 31 is the sign bit).
        value = (int(bitmask[row, word]) & 0xFFFFFFFF) | (1 << bit)
        bitmask[row, word] = value - (1 << 32) if value >= 1 << 31 else value


_SHIFTS = torch.arange(_BITS, dtype=torch.int32)


def allowed_tokens(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Bool matrix ``[rows, vocab_size]``: True where the bitmask allows the token."""
    bits = (bitmask.unsqueeze(-1) >> _SHIFTS) & 1  # [rows, words, 32], little-endian bit order
    flat = bits.reshape(bitmask.shape[0], -1).bool()
    if flat.shape[1] < vocab_size:  # logits wider than the mask: the extra ids are never allowed
        pad = torch.zeros(flat.shape[0], vocab_size - flat.shape[1], dtype=torch.bool)
        flat = torch.cat([flat, pad], dim=1)
    return flat[:, :vocab_size]


def apply_token_bitmask(scores: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """``scores`` ``[rows, vocab]`` with every token the matching ``bitmask`` row forbids at ``-inf``.

    If an earlier processor (top-k, top-p) already removed every allowed token of a row, that
    row becomes uniform over the allowed tokens: a valid token beats a NaN that would kill
    the generation loop.
    """
    allowed = allowed_tokens(bitmask, scores.shape[-1]).to(scores.device)
    masked = scores.masked_fill(~allowed, float("-inf"))
    dead = torch.isinf(masked).all(dim=-1) & allowed.any(dim=-1)
    if bool(dead.any()):
        masked[dead] = torch.where(allowed[dead], 0.0, float("-inf")).to(masked.dtype)
    return masked
