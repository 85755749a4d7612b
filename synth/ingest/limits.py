"""Bounds on what one input line or page may be, so a hostile or broken input is a ledger row.

Without them one line sinks the run and every resume: ``json.loads`` raises ``RecursionError``
on a 100k-deep array and ``ValueError`` on a 5,000-digit integer (CPython's 4,300-digit cap),
and libxml2 silently cuts a text node past 10,000,000 bytes (a 50 MB page became a
503-character document). Every reader checks these limits and raises ``InputLimitError``,
whose ``kind`` goes into the failed ledger and whose message the reader prefixes with the
file and line (or WARC record).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

# libxml2 (lxml, trafilatura) truncates a text node past XML_MAX_TEXT_LENGTH = 10,000,000
# bytes unless huge_tree is on: a page above this would be cut silently, so it is refused.
MAX_PAGE_BYTES = 10_000_000
# A JSONL line holds a page plus JSON escaping, or a whole trajectory with page observations.
MAX_LINE_BYTES = 32 * 1024 * 1024
# Real pages and trajectories nest a handful of levels; 64 leaves room and keeps every
# recursive walk downstream (pydantic, answer flattening) far from Python's recursion limit.
MAX_JSON_DEPTH = 64
# Digits (and sign, point, exponent) of one JSON number: ids and measurements fit easily.
MAX_NUMBER_CHARS = 100

_CHUNK_BYTES = 1 << 20


class InputLimitError(ValueError):
    """An input over a limit or unparseable; ``kind`` is the failed-ledger error kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def too_large(what: str, size: int, limit: int) -> InputLimitError:
    return InputLimitError("too_large", f"{what} is {size:,} bytes, over the {limit:,}-byte limit")


def _bounded_number(text: str) -> str:
    if len(text) > MAX_NUMBER_CHARS:
        raise InputLimitError(
            "invalid_input", f"a number of {len(text):,} characters (limit {MAX_NUMBER_CHARS})"
        )
    return text


def _parse_int(text: str) -> int:
    return int(_bounded_number(text))


def _parse_float(text: str) -> float:
    return float(_bounded_number(text))


def _check_depth(value: Any) -> None:
    """Iterative walk (a recursive one would itself overflow on the input it guards against)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            raise InputLimitError("invalid_input", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def loads_bounded(data: str | bytes) -> Any:
    """``json.loads`` that refuses deep nesting and huge numbers with an InputLimitError.

    Malformed JSON is an InputLimitError too (kind ``invalid_input``), so a caller has one
    exception to turn into a ledger row.
    """
    try:
        value = json.loads(data, parse_int=_parse_int, parse_float=_parse_float)
    except RecursionError:
        # The C scanner checks the interpreter's recursion limit: no partial state is left.
        raise InputLimitError("invalid_input", f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as err:
        raise InputLimitError("invalid_input", f"not valid JSON: {err.msg} (column {err.colno})") from None
    except UnicodeDecodeError as err:
        raise InputLimitError("invalid_input", f"not UTF-8 (byte {err.start})") from None
    _check_depth(value)
    return value


@dataclass(frozen=True)
class Line:
    """One line of a file as ``iter_lines`` sees it; ``data`` is None when it is over the limit."""

    number: int  # 1-based
    offset: int
    length: int  # bytes, newline included
    sha256: str
    data: bytes | None

    @property
    def blank(self) -> bool:
        return self.data is not None and not self.data.strip()


def iter_lines(fh: IO[bytes], max_bytes: int = MAX_LINE_BYTES) -> Iterator[Line]:
    """Lines of a binary file with offset, length and hash, holding at most ``max_bytes`` of one line.

    A longer line is hashed and measured while it streams past and comes back with
    ``data=None``: a 10 GB line without a newline costs one chunk of memory, not 10 GB.
    """
    number, offset = 0, 0
    while True:
        number += 1
        digest = hashlib.sha256()
        kept = bytearray()
        length = 0
        over = False
        while True:
            chunk = fh.readline(_CHUNK_BYTES)
            if not chunk:
                break
            digest.update(chunk)
            length += len(chunk)
            if not over:
                if length > max_bytes:
                    over = True
                    kept = bytearray()
                else:
                    kept += chunk
            if chunk.endswith(b"\n"):
                break
        if length == 0:
            return
        yield Line(number, offset, length, digest.hexdigest(), None if over else bytes(kept))
        offset += length
