"""N-gram decontamination: word normalisation, the 13-word window, short questions, real benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synth.decontam import (
    BenchmarkFileError,
    BenchmarkQuestion,
    NgramIndex,
    load_benchmark_questions,
    normalize_words,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BENCHMARKS = SHARED_DATA / "benchmarks"

QUESTION = (
    "Which bridge over the Silvermere River was completed in 1931 and later renamed after a local "
    "schoolteacher who campaigned for its construction?"
)


def index_of(*questions: str, n: int = 13, min_words: int = 8) -> NgramIndex:
    return NgramIndex(
        [BenchmarkQuestion(f"q.jsonl:{i + 1}", q) for i, q in enumerate(questions)], n, min_words
    )


def test_words_are_lowercased_without_punctuation() -> None:
    assert normalize_words("Hello, WORLD!  It's 1931—\nfine") == ["hello", "world", "it", "s", "1931", "fine"]


def test_text_sharing_thirteen_words_is_contaminated_whatever_case_punctuation_and_spacing() -> None:
    words = QUESTION.split()
    copied = " ".join(words[3:16]).upper().replace(" ", " ,\n ")
    hit = index_of(QUESTION).find(f"Some preamble. {copied} and then more text.")
    assert hit is not None
    assert hit.question.source == "q.jsonl:1"
    assert hit.ngram == " ".join(normalize_words(" ".join(words[3:16])))


def test_text_sharing_only_twelve_words_is_clean() -> None:
    words = QUESTION.split()
    assert index_of(QUESTION).find("intro " + " ".join(words[0:12]) + " outro") is None


def test_window_size_is_configurable() -> None:
    words = QUESTION.split()
    assert index_of(QUESTION, n=8).find("x " + " ".join(words[5:13]) + " y") is not None


def test_question_shorter_than_the_window_is_matched_whole_unless_below_min_words() -> None:
    short = "Who founded the Lanternfall festival in Riverton, and when?"  # 10 words
    tiny = "Who won?"
    idx = index_of(short, tiny)
    assert idx.n_questions == 1 and idx.n_too_short == 1
    assert idx.find(f"Q: {short} A: nobody knows") is not None
    assert idx.find("Who won? The home team, as usual.") is None


def test_benchmark_line_without_question_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bench.jsonl"
    bad.write_text(json.dumps({"question": "ok"}) + "\n\n" + json.dumps({"prompt": "no"}) + "\n")
    with pytest.raises(BenchmarkFileError, match=r"bench\.jsonl:3: no string `question`"):
        load_benchmark_questions([bad])
    bad.write_text("{not json\n")
    with pytest.raises(BenchmarkFileError, match=r"bench\.jsonl:1: not valid JSON"):
        load_benchmark_questions([bad])


def test_every_real_benchmark_question_is_caught_inside_a_longer_text_and_real_trajectories_are_clean() -> (
    None
):
    if not BENCHMARKS.is_dir():
        pytest.skip(f"benchmark files not found at {BENCHMARKS} (../shared/data is absent)")
    questions = load_benchmark_questions(sorted(BENCHMARKS.glob("*.jsonl")))
    assert len(questions) == 357
    idx = NgramIndex(questions)
    for q in questions:
        if len(normalize_words(q.question)) >= idx.min_words:
            assert idx.find(f"Here is a task I saw somewhere.\n\n{q.question}\n\nLet me think.") is not None
    trajectories = SHARED_DATA / "trajectories" / "webdancer_sample_traj.jsonl"
    with open(trajectories, encoding="utf-8") as f:
        texts = ["\n".join(m["content"] for m in json.loads(line)["messages"]) for line in f]
    assert [t[:60] for t in texts if idx.find(t)] == []  # WebDancer's own questions are not benchmark ones
