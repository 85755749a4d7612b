"""Exact + MinHash near-duplicate detection: keeps the first of each group, deterministically."""

from __future__ import annotations

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
