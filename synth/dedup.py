"""Exact and near-duplicate detection over texts (documents, CPT samples).

Two passes, both keeping the FIRST occurrence in the caller's order, so the result is a
pure function of the input sequence:

* exact: SHA-256 of the normalized text (NFKC, case-folded, punctuation and whitespace
  collapsed), so re-posts that differ only in spacing or capitalization collide;
* near: MinHash over word n-gram shingles (datasketch), candidates from an LSH index,
  confirmed by the estimated Jaccard similarity against the threshold. A candidate is
  only ever compared with texts that were kept, so chains (A~B, B~C, A!~C) resolve the
  same way whatever the LSH bucket order.

The API is small on purpose: the documents pipeline calls ``find_duplicate_matches`` to
drop re-posted pages, and the corpus stage can call ``find_duplicates`` (or feed a
``NearDuplicateIndex`` incrementally) for cross-kind dedup of CPT texts.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from datasketch import MinHash

_NON_WORD_RE = re.compile(r"[\W_]+", re.UNICODE)


def normalize_text(text: str) -> str:
    """Text reduced to lowercase words separated by single spaces (the dedup key space)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _NON_WORD_RE.sub(" ", folded).strip()


def exact_key(text: str) -> str:
    """SHA-256 hex digest of the normalized text: equal for texts that differ only in form."""
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()


def shingles(normalized: str, ngram: int) -> set[bytes]:
    """Word n-grams of an already normalized text; a text shorter than n is one shingle."""
    words = normalized.split()
    if not words:
        return set()
    if len(words) <= ngram:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + ngram]).encode("utf-8") for i in range(len(words) - ngram + 1)}


@dataclass(frozen=True)
class DuplicateMatch:
    """Why an item was dropped: the id it duplicates, and how close it is."""

    kept_id: str
    kind: Literal["exact", "near"]
    similarity: float


class NearDuplicateIndex:
    """Incremental exact + MinHash dedup: ``check_and_add`` each text in order.

    Memory is one 128-value signature per kept text (about 1 KB), so a few million texts
    fit on one machine; beyond that, shard the input by exact key first.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {ngram}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.ngram = ngram
        self._seed = seed
        # datasketch pulls in scipy (~0.4 s): imported on first use, not with synth.spec.
        from datasketch import MinHash, MinHashLSH

        self._exact: dict[str, str] = {}
        self._signatures: dict[str, MinHash] = {}
        self._order: dict[str, int] = {}
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        # One MinHash object supplies the permutations; copies share them (datasketch
        # otherwise regenerates them from the seed for every new MinHash).
        self._template = MinHash(num_perm=num_perm, seed=seed)

    def __len__(self) -> int:
        return len(self._order)

    def signature(self, normalized: str) -> MinHash | None:
        """MinHash of a normalized text, or None when it has no words."""
        grams = shingles(normalized, self.ngram)
        if not grams:
            return None
        m = self._template.copy()
        m.update_batch(list(grams))  # min over hashes: order does not matter
        return m

    def check_and_add(self, item_id: str, text: str) -> DuplicateMatch | None:
        """The match if ``text`` duplicates a kept text; otherwise keep it and return None."""
        if item_id in self._order:
            raise ValueError(f"id {item_id!r} appears twice")
        normalized = normalize_text(text)
        key = hashlib.sha256(normalized.encode("utf-8")).hexdigest()
        kept = self._exact.get(key)
        if kept is not None:
            return DuplicateMatch(kept_id=kept, kind="exact", similarity=1.0)
        signature = self.signature(normalized)
        if signature is not None:
            best: tuple[int, str, float] | None = None
            for candidate in self._lsh.query(signature):
                similarity = float(signature.jaccard(self._signatures[candidate]))
                if similarity >= self.threshold:
                    rank = self._order[candidate]
                    if best is None or rank < best[0]:
                        best = (rank, candidate, similarity)
            if best is not None:
                return DuplicateMatch(kept_id=best[1], kind="near", similarity=round(best[2], 4))
            self._lsh.insert(item_id, signature)
            self._signatures[item_id] = signature
        self._exact[key] = item_id
        self._order[item_id] = len(self._order)
        return None


def find_duplicate_matches(
    items: Iterable[tuple[str, str]],
    threshold: float = 0.8,
    *,
    num_perm: int = 128,
    ngram: int = 5,
    near: bool = True,
) -> dict[str, DuplicateMatch]:
    """Duplicates among ``(id, text)`` pairs: ``{dup_id: DuplicateMatch}``; the first of a group is kept.

    ``near=False`` does exact (normalized) dedup only. Ids must be unique.
    """
    if not near:
        seen: dict[str, str] = {}
        ids: set[str] = set()
        out: dict[str, DuplicateMatch] = {}
        for item_id, text in items:
            if item_id in ids:
                raise ValueError(f"id {item_id!r} appears twice")
            ids.add(item_id)
            key = exact_key(text)
            if key in seen:
                out[item_id] = DuplicateMatch(kept_id=seen[key], kind="exact", similarity=1.0)
            else:
                seen[key] = item_id
        return out
    index = NearDuplicateIndex(threshold=threshold, num_perm=num_perm, ngram=ngram)
    matches: dict[str, DuplicateMatch] = {}
    for item_id, text in items:
        if item_id in matches:
            raise ValueError(f"id {item_id!r} appears twice")
        match = index.check_and_add(item_id, text)
        if match is not None:
            matches[item_id] = match
    return matches


def find_duplicates(
    items: Sequence[tuple[str, str]],
    threshold: float = 0.8,
    *,
    num_perm: int = 128,
    ngram: int = 5,
    near: bool = True,
) -> dict[str, str]:
    """``{dup_id: kept_id}`` for ``(id, text)`` pairs, keeping the first of each group in the given order."""
    matches = find_duplicate_matches(items, threshold, num_perm=num_perm, ngram=ngram, near=near)
    return {dup: m.kept_id for dup, m in matches.items()}


def jaccard(a: str, b: str, ngram: int = 5) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (for tests and diagnostics)."""
    sa, sb = shingles(normalize_text(a), ngram), shingles(normalize_text(b), ngram)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


__all__ = [
    "DuplicateMatch",
    "NearDuplicateIndex",
    "exact_key",
    "find_duplicate_matches",
    "find_duplicates",
    "jaccard",
    "normalize_text",
    "shingles",
]
