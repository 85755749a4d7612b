"""Answer normalization and exact/numeric matching (the cheap half of the reasoning judge)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synth.answers import (
    answer_consistent,
    match_answers,
    mentions_answer,
    normalize_answer,
    parse_date,
    parse_quantity,
    stated_answer,
)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("**The Mary Celeste.**", "mary celeste"),
        ("César Manrique", "cesar manrique"),
        ("Answer: Paris", "paris"),
        ("The answer is Lyon", "lyon"),
        ('"Leviathan"', "leviathan"),
        ("4,222", "4222"),
        ("4.5", "4.5"),
        ("U.S.", "us"),
        ("-5", "minus 5"),
        ("$5", "usd 5"),
        ("45%", "45 percent"),
        ("Jean-Paul  Sartre", "jean paul sartre"),
    ],
)
def test_normalize_answer(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


# (predicted, gold, verdict, decided_by)
MATCH_CASES = [
    # exact after normalization
    ("**The Mary Celeste**", "Mary Celeste", "match", "exact"),
    ("cesar manrique", "César Manrique", "match", "exact"),
    ("KRYPTON", "krypton", "match", "exact"),
    ("", "Paris", "mismatch", "exact"),
    # thousands separators and scale words
    ("4,222 thousand", "4222000", "match", "numeric"),
    ("4222000", "4,222 thousand", "match", "numeric"),
    ("4 222 000", "4,222,000", "match", "numeric"),
    ("1.2 million", "1,200,000", "match", "numeric"),
    ("3.5bn", "3,500,000,000", "match", "numeric"),
    ("12k", "12000", "match", "numeric"),
    # currency symbols and codes
    ("$1.2 million", "1,200,000 USD", "match", "numeric"),
    ("$5", "5 dollars", "match", "numeric"),
    ("€5", "$5", "inconclusive", None),
    # percentages, also against fractions
    ("45%", "45 percent", "match", "exact"),
    ("45%", "45", "match", "numeric"),
    ("45%", "0.45", "match", "numeric"),
    ("45 per cent", "0.5", "mismatch", "numeric"),
    # number words (real gold answers of the WebDancer trajectories are written like this)
    ("298", "two hundred and ninety eight", "match", "numeric"),
    ("1948", "one thousand, nine hundred and forty-eight", "match", "numeric"),
    ("12", "TWELVE", "match", "numeric"),
    ("4 inches", "Four inches", "match", "numeric"),
    # units, converted when both are common ones
    ("4 inches", "10.16 cm", "match", "numeric"),
    ("4 inches", "4 cm", "mismatch", "numeric"),
    ("120 miles", "412 km", "mismatch", "numeric"),
    ("256 miles", "412 km", "inconclusive", None),
    ("0.48 GW", "480 megawatts", "match", "numeric"),
    ("480 MW", "480 years", "mismatch", "numeric"),
    ("412 kilometres", "412 km", "match", "numeric"),
    ("298 people", "298 persons", "inconclusive", None),
    ("298 people", "298", "match", "numeric"),
    # signs, decimals, hedges
    ("-5", "−5", "match", "exact"),
    ("-5", "5", "mismatch", "numeric"),
    ("4.5", "45", "mismatch", "numeric"),
    ("about 4,200", "4200", "match", "numeric"),
    # different numbers; roundings go to the judge
    ("1948", "1964", "mismatch", "numeric"),
    ("12", "10", "mismatch", "numeric"),
    ("1950", "1948", "mismatch", "numeric"),
    ("4,222,000", "4.2 million", "inconclusive", None),
    # dates
    ("September 5, 1847", "5 September 1847", "match", "numeric"),
    ("1847-09-05", "Sept. 5th, 1847", "match", "numeric"),
    ("September 6, 1847", "5 September 1847", "mismatch", "numeric"),
    ("September 1847", "5 September 1847", "inconclusive", None),
    # paraphrases and sentences are for the judge
    ("Epsom Derby", "English horse race Derby", "inconclusive", None),
    ("The surname is Adkins and she was born in 1988", "Adkins", "inconclusive", None),
    ("3rd to 13th September", "3 to 13 September", "inconclusive", None),
]


@pytest.mark.parametrize(("predicted", "gold", "verdict", "decided_by"), MATCH_CASES)
def test_match_answers_table(predicted: str, gold: str, verdict: str, decided_by: str | None) -> None:
    result = match_answers(predicted, gold)
    assert (result.verdict, result.decided_by) == (verdict, decided_by), result.detail


def test_numeric_tolerance_is_configurable() -> None:
    assert match_answers("101", "100").verdict == "mismatch"
    assert match_answers("101", "100", rel_tol=0.02).verdict == "match"
    # 100.4 is 100 to three significant digits: a rounding, so the judge decides.
    assert match_answers("100.4", "100").verdict == "inconclusive"


@pytest.mark.parametrize(
    ("text", "value", "unit", "currency"),
    [
        ("4,222 thousand", 4_222_000, None, None),
        ("US$ 3 billion", 3e9, None, "usd"),
        ("£20", 20, None, "gbp"),
        ("12.5%", 12.5, "%", None),
        ("a hundred", 100, None, None),
        ("Four inches", 4, "inch", None),
        ("777 km", 777, "km", None),
    ],
)
def test_parse_quantity(text: str, value: float, unit: str | None, currency: str | None) -> None:
    q = parse_quantity(text)
    assert q is not None
    assert (q.value, q.unit, q.currency) == (pytest.approx(value), unit, currency)


@pytest.mark.parametrize(
    "text", ["Ricin", "it was 12 in 1990", "1,5", "12 players were on the field today", ""]
)
def test_parse_quantity_refuses_sentences_and_words(text: str) -> None:
    assert parse_quantity(text) is None


def test_parse_date_keeps_precision() -> None:
    assert parse_date("September 1847") is not None
    assert parse_date("September 1847").day is None
    assert parse_date("1847") is None  # a bare year is a number
    assert parse_date("31 February 2020") is not None  # day range only, not calendar validity
    assert parse_date("45 May 2020") is None


def test_answer_consistency_reads_the_stated_answer() -> None:
    assert stated_answer("First x. Then y. So the answer is Paris.") == "Paris"
    assert answer_consistent("Bell was born in 1847. So the answer is 1847.", "1847")
    assert answer_consistent("The total is 4.2 million. So the answer is 4.2 million.", "4,200,000")
    assert not answer_consistent("So the answer is Lyon.", "Paris")
    assert answer_consistent("Paris is the capital of France.", "Paris")
    assert not answer_consistent("The capital is on the Seine.", "Paris")
    assert mentions_answer("There are 12 players on the field.", "twelve")


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (real trajectories) is not present")
def test_real_number_word_gold_answers_match_their_digits() -> None:
    golds: dict[str, str] = {}
    with (DATA / "trajectories" / "webdancer_sample_traj.jsonl").open(encoding="utf-8") as f:
        for line in f:
            answer = json.loads(line)["answer"]
            while isinstance(answer, list):
                answer = answer[0]
            golds[answer.lower()] = answer
    expected = {
        "two hundred and ninety eight": "298",
        "one thousand, nine hundred and forty-eight": "1948",
        "twelve": "12",
        "four inches": "4 inches",
    }
    for key, digits in expected.items():
        assert key in golds, f"{key!r} is no longer among the real gold answers"
        result = match_answers(digits, golds[key])
        assert (result.verdict, result.decided_by) == ("match", "numeric"), (golds[key], result.detail)
    # No real gold answer crashes the matcher, and each matches itself exactly.
    for gold in golds.values():
        assert match_answers(gold, gold).verdict == "match"
