"""The dedup of before issue 19, kept as the reference the new path must agree with.

One process, datasketch ``MinHash`` per text (shingle set, ``update_batch``) and a
``MinHashLSH`` index: exactly what ``synth.dedup.find_duplicate_matches`` did, used by the
equivalence tests and by ``bench/dedup.py`` as "today's" timing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from synth.dedup import DuplicateMatch, normalize_text, shingles


def reference_duplicate_matches(
    items: Iterable[tuple[str, str]],
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int = 5,
    seed: int = 1,
) -> dict[str, DuplicateMatch]:
    """``{dup_id: DuplicateMatch}`` computed the datasketch way, first occurrence kept."""
    from datasketch import MinHash, MinHashLSH

    template = MinHash(num_perm=num_perm, seed=seed)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    exact: dict[str, str] = {}
    signatures: dict[str, MinHash] = {}
    order: dict[str, int] = {}
    matches: dict[str, DuplicateMatch] = {}
    for item_id, text in items:
        normalized = normalize_text(text)
        key = hashlib.sha256(normalized.encode("utf-8")).hexdigest()
        if key in exact:
            matches[item_id] = DuplicateMatch(kept_id=exact[key], kind="exact", similarity=1.0)
            continue
        grams = shingles(normalized, ngram)
        if grams:
            m = template.copy()
            m.update_batch(list(grams))
            best: tuple[int, str, float] | None = None
            for candidate in lsh.query(m):
                similarity = float(m.jaccard(signatures[candidate]))
                if similarity >= threshold and (best is None or order[candidate] < best[0]):
                    best = (order[candidate], candidate, similarity)
            if best is not None:
                matches[item_id] = DuplicateMatch(kept_id=best[1], kind="near", similarity=round(best[2], 4))
                continue
            lsh.insert(item_id, m)
            signatures[item_id] = m
        exact[key] = item_id
        order[item_id] = len(order)
    return matches


def near_duplicate_corpus(n: int, *, words: int = 120, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` ``(id, text)`` pairs where about a third re-post an earlier text with edits.

    Edits (a few replaced words, a sentence appended, case and punctuation changed, a
    verbatim copy) are drawn so that the Jaccard similarity of re-posts spans the usual
    0.8 threshold on both sides; a few texts are empty or shorter than a shingle.
    """
    import random

    rng = random.Random(seed)
    vocab = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(30_000)
    ]
    out: list[tuple[str, str]] = []
    for i in range(n):
        roll = rng.random()
        if out and roll < 0.33:
            _, src = out[rng.randrange(len(out))]
            ws = src.split()
            kind = rng.random()
            if kind < 0.15:
                text = src.upper().replace(" ", "  ")
            elif kind < 0.3:
                text = src + " " + " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 12))) + "."
            else:
                for _ in range(rng.randint(1, max(1, len(ws) // 25))):
                    if ws:
                        ws[rng.randrange(len(ws))] = rng.choice(vocab)
                text = " ".join(ws)
        elif roll < 0.335:
            text = rng.choice(["", "...", "ok", "short text here"])
        else:
            text = " ".join(rng.choice(vocab) for _ in range(max(1, int(rng.gauss(words, words / 4)))))
        out.append((f"t{i:07d}", text))
    return out
