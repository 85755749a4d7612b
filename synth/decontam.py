"""N-gram decontamination against benchmark questions.

A training text that shares a long word n-gram with a benchmark question has (almost
surely) seen that question, so it is dropped. 13 words is the window GPT-3 (Brown et al.
2020, appendix C) and most CPT reports since use; questions shorter than the window are
matched whole, down to ``min_words`` words, so a short question cannot slip through
just because it has no 13-gram (GPT-3's rule too). Words are lowercased Unicode word
characters, so punctuation, case and spacing differences do not hide a copy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

_WORD_RE = re.compile(r"\w+")


def normalize_words(text: str) -> list[str]:
    """Lowercased word tokens of ``text`` (Unicode ``\\w+`` runs; punctuation and spacing dropped)."""
    return _WORD_RE.findall(text.lower())


@dataclass(frozen=True)
class BenchmarkQuestion:
    """One benchmark question and where it came from (for the drop message)."""

    source: str  # "<file>:<line>"
    question: str


@dataclass(frozen=True)
class Contamination:
    """Why a text was found contaminated: the benchmark question and the shared words."""

    question: BenchmarkQuestion
    ngram: str


class BenchmarkFileError(ValueError):
    """A benchmark file that is not JSONL with a string ``question`` on every line."""


def load_benchmark_questions(paths: Sequence[Path]) -> list[BenchmarkQuestion]:
    """Every ``question`` of JSONL benchmark files, in file and line order.

    Blank lines are skipped; a line that is not a JSON object with a string ``question``
    raises ``BenchmarkFileError`` naming the file and line.
    """
    out: list[BenchmarkQuestion] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise BenchmarkFileError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
                question = obj.get("question") if isinstance(obj, dict) else None
                if not isinstance(question, str):
                    raise BenchmarkFileError(f"{path}:{line_no}: no string `question` field")
                out.append(BenchmarkQuestion(source=f"{path}:{line_no}", question=question))
    return out


class NgramIndex:
    """The word n-grams of a set of benchmark questions, and a fast membership test for texts."""

    def __init__(self, questions: Iterable[BenchmarkQuestion], n: int = 13, min_words: int = 8) -> None:
        if n < 1 or min_words < 1:
            raise ValueError("n and min_words must be positive")
        self.n = n
        self.min_words = min(min_words, n)
        # n-gram length -> {joined n-gram: question}. Lengths other than n come only from
        # questions shorter than n words, matched whole.
        self._by_length: dict[int, dict[str, BenchmarkQuestion]] = {}
        self.n_questions = 0
        self.n_too_short = 0
        for q in questions:
            words = normalize_words(q.question)
            if len(words) < self.min_words:
                self.n_too_short += 1  # too short to tell a copy from a common phrase
                continue
            self.n_questions += 1
            size = min(n, len(words))
            grams = self._by_length.setdefault(size, {})
            for i in range(len(words) - size + 1):
                grams.setdefault(" ".join(words[i : i + size]), q)
        # Only windows starting with a word that starts some benchmark n-gram can match:
        # testing that first skips building most join strings.
        self._first_words = {
            size: {gram.split(" ", 1)[0] for gram in grams} for size, grams in self._by_length.items()
        }

    def __len__(self) -> int:
        return sum(len(g) for g in self._by_length.values())

    def find(self, text: str) -> Contamination | None:
        """The first benchmark n-gram found in ``text``, or None when it is clean."""
        words = normalize_words(text)
        for size, grams in self._by_length.items():
            first = self._first_words[size]
            for i in range(len(words) - size + 1):
                if words[i] in first:
                    gram = " ".join(words[i : i + size])
                    hit = grams.get(gram)
                    if hit is not None:
                        return Contamination(question=hit, ngram=gram)
        return None
