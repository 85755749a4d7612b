"""Turning a model's reply text into a validated pydantic object, tolerantly.

Models wrap JSON in code fences, lead with prose ("Sure! Here is the JSON:"), leave
trailing commas, or - SmolLM2-135M asked for JSON with a one-shot example - write several
objects one after another (NOTES.md: 0 of 8 replies parsed as "first ``{`` to last ``}``",
each began with a valid object). So we do not parse the whole text: we scan for every
top-level JSON value with ``json.JSONDecoder().raw_decode`` and take the first one that
validates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)

_DECODER = json.JSONDecoder()
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
# A comma followed only by whitespace and a closing bracket. Applied as a repair to a
# candidate that failed to decode; commas inside strings are protected by _mask_strings.
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


class OutputParseError(ValueError):
    """No JSON value in the reply validated against the schema; the message says why."""


def json_candidates(text: str, opener: str = "{") -> Iterator[Any]:
    """Every JSON value starting with ``opener`` in ``text``, in order of appearance.

    Fenced blocks come first (a fence is the model saying "this is the answer"), then the
    whole text scanned left to right. A value that fails to decode is retried with trailing
    commas removed. Values nested inside a yielded value are not yielded again (a fenced
    value is seen twice: once in its fence, once in the whole text).
    """
    sources = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for source in sources:
        pos = source.find(opener)
        while pos >= 0:
            value, end = _decode_at(source, pos)
            if end > pos:
                yield value
                pos = source.find(opener, end)
            else:
                pos = source.find(opener, pos + 1)


def _decode_at(source: str, pos: int) -> tuple[Any, int]:
    """Decode the JSON value at ``pos``; ``(None, pos)`` if there is none."""
    try:
        return _DECODER.raw_decode(source, pos)
    except json.JSONDecodeError:
        pass
    # Repair: drop trailing commas within the smallest balanced span that starts here.
    end = _balanced_end(source, pos)
    if end is None:
        return None, pos
    repaired = _remove_trailing_commas(source[pos:end])
    try:
        value, used = _DECODER.raw_decode(repaired)
    except json.JSONDecodeError:
        return None, pos
    return (value, end) if used == len(repaired) else (None, pos)


def _balanced_end(source: str, pos: int) -> int | None:
    """Index after the bracket that closes the one at ``pos`` (string-aware), or None."""
    depth = 0
    in_string = False
    escape = False
    for i in range(pos, len(source)):
        ch = source[i]
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _remove_trailing_commas(fragment: str) -> str:
    strings: list[str] = []

    def stash(m: re.Match[str]) -> str:
        strings.append(m.group(0))
        return f'"\x00{len(strings) - 1}\x00"'

    masked = _STRING.sub(stash, fragment)
    masked = _TRAILING_COMMA.sub(r"\1", masked)
    return re.sub(r'"\x00(\d+)\x00"', lambda m: strings[int(m.group(1))], masked)


def first_json_object(text: str) -> Any:
    """The first JSON object in ``text`` (see ``json_candidates``); ``OutputParseError`` if none."""
    for value in json_candidates(text):
        return value
    raise OutputParseError("no JSON object in the reply")


def parse_structured(text: str, schema: type[T]) -> T:
    """The first JSON object in ``text`` that validates as ``schema``.

    Raises ``OutputParseError`` naming the first validation error when objects were found
    but none validated, or saying that no JSON object was found.
    """
    first_error: ValidationError | None = None
    for value in json_candidates(text):
        try:
            return schema.model_validate(value)
        except ValidationError as err:
            first_error = first_error or err
    if first_error is None:
        raise OutputParseError(f"no JSON object in the reply (expected {schema.__name__})")
    raise OutputParseError(f"reply does not match {schema.__name__}: {_brief(first_error)}")


def _brief(err: ValidationError, limit: int = 3) -> str:
    parts = []
    for e in err.errors()[:limit]:
        loc = ".".join(str(x) for x in e["loc"]) or "(root)"
        parts.append(f"{loc}: {e['msg']}")
    more = err.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
