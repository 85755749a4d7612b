"""Deterministic content ids.

Ids must be identical across processes and machines, so they never use Python's
salted ``hash()``: they are a SHA-256 over canonical JSON (sorted keys, no spaces).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(value: Any, n_hex: int = 32) -> str:
    """The first ``n_hex`` hex digits of SHA-256 over ``canonical_json(value)``."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:n_hex]


def record_id(stage: str, parent_ids: Sequence[str], params: Any, content: Any) -> str:
    """Id of a record: hash of its stage, lineage, generation parameters and content."""
    return content_hash({"stage": stage, "parents": list(parent_ids), "params": params, "content": content})
