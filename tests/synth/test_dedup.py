"""Exact + MinHash near-duplicate detection: keeps the first of each group, deterministically."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from synth.dedup import NearDuplicateIndex, find_duplicate_matches, find_duplicates, jaccard, normalize_text

BASE = (
    "The Kestrel Bay Bridge is a suspension bridge that carries Route 9 across the mouth of Kestrel Bay, "
    "connecting the city of Port Elan with the town of Greywick. With a main span of 1,080 metres and a "
    "total length of 3,120 metres, it was the longest suspension bridge in the region when it opened on "
    "18 May 1998. Planning began in 1986, after a ferry accident prompted calls for a fixed crossing, and "
    "construction started in August 1993 and took almost five years to complete."
)
OTHER = (
    "The amber-tailed marmot is a large ground squirrel found only in the alpine meadows of the Calder "
    "Range, between 1,900 and 2,800 metres above sea level. Adults weigh between 4 and 7 kilograms, and "
    "the species takes its name from the reddish-gold fur of its bushy tail. Colonies of 6 to 20 animals "
    "share a system of burrows and hibernate for up to eight months."
)


def test_normalization_ignores_case_spacing_and_punctuation() -> None:
    assert normalize_text("  The BRIDGE,\n opened —  in 1998! ") == "the bridge opened in 1998"


def test_exact_duplicates_after_normalization_keep_the_first() -> None:
    items = [("a", BASE), ("b", OTHER), ("c", BASE.upper().replace(",", " ,")), ("d", "  " + BASE + "\n")]
    matches = find_duplicate_matches(items)
    assert set(matches) == {"c", "d"}
    assert all(m.kept_id == "a" and m.kind == "exact" and m.similarity == 1.0 for m in matches.values())


def test_a_reposted_text_with_a_small_edit_is_a_near_duplicate_and_unrelated_text_is_not() -> None:
    repost = BASE + " This report was first published by the Greywick Gazette."
    assert jaccard(BASE, repost) > 0.8
    matches = find_duplicate_matches([("orig", BASE), ("other", OTHER), ("repost", repost)], threshold=0.8)
    assert list(matches) == ["repost"]
    assert matches["repost"].kept_id == "orig" and matches["repost"].kind == "near"
    assert 0.8 <= matches["repost"].similarity < 1.0


def test_texts_below_the_threshold_are_kept() -> None:
    half = BASE[: len(BASE) // 2] + " " + OTHER[len(OTHER) // 2 :]
    assert find_duplicates([("a", BASE), ("b", half)], threshold=0.8) == {}


def test_the_first_in_the_given_order_is_kept() -> None:
    repost = BASE + " Reposted."
    assert find_duplicates([("x", BASE), ("y", repost)]) == {"y": "x"}
    assert find_duplicates([("y", repost), ("x", BASE)]) == {"x": "y"}


def test_results_are_the_same_on_every_run() -> None:
    items = [(f"id{i}", BASE + f" Variant {i}.") for i in range(20)] + [("other", OTHER)]
    first = find_duplicates(items)
    assert first == find_duplicates(items)
    assert set(first.values()) == {"id0"} and "other" not in first


def test_exact_only_mode_ignores_near_duplicates() -> None:
    items = [("a", BASE), ("b", BASE + " Reposted."), ("c", BASE.lower())]
    assert find_duplicates(items, near=False) == {"c": "a"}


def test_repeated_ids_are_an_error() -> None:
    with pytest.raises(ValueError, match="twice"):
        find_duplicates([("a", BASE), ("a", OTHER)])
    with pytest.raises(ValueError, match="twice"):
        find_duplicates([("a", BASE), ("a", OTHER)], near=False)


def test_incremental_index_matches_the_batch_function() -> None:
    index = NearDuplicateIndex(threshold=0.8)
    assert index.check_and_add("a", BASE) is None
    assert index.check_and_add("b", OTHER) is None
    match = index.check_and_add("c", BASE + " Reposted.")
    assert match is not None and match.kept_id == "a"
    assert len(index) == 2
    # Empty or punctuation-only texts dedup exactly and never crash the MinHash path.
    assert index.check_and_add("e1", "...") is None
    assert index.check_and_add("e2", "  !! ") is not None


def test_invalid_parameters_are_rejected() -> None:
    with pytest.raises(ValueError):
        NearDuplicateIndex(threshold=0)
    with pytest.raises(ValueError):
        NearDuplicateIndex(ngram=0)


# --------------------------------------------------------------------------------------
# Issue 19: signatures made where records are produced, the barrier only bands
# --------------------------------------------------------------------------------------


def test_signatures_are_bit_identical_to_datasketch_minhash() -> None:
    from datasketch import MinHash

    from synth.dedup import shingles
    from synth.minhash import MinHasher

    texts = [BASE, OTHER, "one two three", "ünïcödé Straße café " * 40, "x", BASE + " " + OTHER]
    normalized = [normalize_text(t) for t in texts]
    matrix, has_words = MinHasher().signatures(normalized)
    for i, norm in enumerate(normalized):
        m = MinHash(num_perm=128, seed=1)
        m.update_batch(list(shingles(norm, 5)))
        assert has_words[i] and (matrix[i] == m.hashvalues).all(), texts[i][:30]
    _, words = MinHasher().signatures(["", "a"])
    assert words.tolist() == [False, True]


def test_the_kept_set_is_identical_to_the_single_process_datasketch_dedup() -> None:
    from testing.dedup_reference import near_duplicate_corpus, reference_duplicate_matches

    items = near_duplicate_corpus(1500, words=80, seed=3)
    expected = reference_duplicate_matches(items)
    near = [m for m in expected.values() if m.kind == "near"]
    assert len(near) > 100 and min(m.similarity for m in near) < 0.85  # borderline pairs are exercised
    assert find_duplicate_matches(items) == expected


def test_side_file_signatures_are_used_and_a_stale_one_is_ignored(tmp_path: Path) -> None:
    from synth.dedup import load_signatures, sign_texts, write_unit_signatures

    class Doc:
        def __init__(self, id: str, text: str) -> None:
            self.id, self.text = id, text

    repost = BASE + " Reposted by the Greywick Gazette."
    docs = [Doc("orig", BASE), Doc("other", OTHER), Doc("repost", repost), Doc("notext", "")]
    path = tmp_path / "part-00000.parquet"
    assert write_unit_signatures(path, docs) == 3  # texts only
    sigs = load_signatures([path])
    assert set(sigs) == {"orig", "other", "repost"}
    items = [(d.id, d.text) for d in docs[:3]]
    assert find_duplicate_matches(items, signatures=sigs) == find_duplicate_matches(items)

    # Used: a saved signature stands for its text (here OTHER's saved as if it were the repost's).
    forged = load_signatures([path])
    forged["repost"] = replace(sign_texts([OTHER])[0], text_hash=sigs["repost"].text_hash)
    assert find_duplicate_matches(items, signatures=forged)["repost"].kept_id == "other"
    # Stale: the text changed since it was signed, so the side file is not trusted.
    forged["repost"] = replace(sign_texts([OTHER])[0], text_hash=b"\0" * 8)
    assert find_duplicate_matches(items, signatures=forged)["repost"].kept_id == "orig"


def test_signatures_made_with_other_parameters_are_not_used(tmp_path: Path) -> None:
    from synth.dedup import load_signatures, write_unit_signatures
    from synth.minhash import MinHashParams

    class Doc:
        def __init__(self, id: str, text: str) -> None:
            self.id, self.text = id, text

    path = tmp_path / "part-00000.parquet"
    write_unit_signatures(path, [Doc("a", BASE)], MinHashParams(num_perm=64))
    assert load_signatures([path]) == {}
    assert set(load_signatures([path], MinHashParams(num_perm=64))) == {"a"}
