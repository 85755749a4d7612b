"""Quality figures of a run's HAS decisions, rollout outcomes and corpus mixture (issue 15).

The central figure is the **chosen-option probe**: a logistic regression that sees only cheap
surface features of each option — its length, its position, its lexical overlap with the
question and with the responses of earlier steps, its tool — is trained on half of the
decision steps to find the chosen option, and scored on the other half. Chance is
1/(N+1). A probe that beats chance by more than ``LEAK_MARGIN`` means the options still give
the choice away (the original is longer, or quotes the future, or is the only answer), and
CPT on them would teach that tell instead of decision quality.

Every section function takes a ``RunLayout`` and returns a pydantic model (the contract of
``synth.quality``); the probe itself works on decision records, so tests can hand it a set.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from synth.ids import content_hash
from synth.layout import RunLayout
from synth.records import DecisionRecord, DecisionStep
from synth.render import tags
from synth.render.traces import count_words
from synth.shards import ShardStore
from synth.stages.corpus import CorpusConfig, MixtureReport, mixture_report, summarize_corpus

# Accuracy above chance by more than this is a leak (the acceptance gate).
LEAK_MARGIN = 0.10
PROBE_FEATURES: tuple[str, ...] = (
    "log_thought_words",
    "log_chars",
    "log_thought_words_vs_step",
    "log_chars_vs_step",
    "position",
    "question_overlap",
    "earlier_overlap",
    "question_overlap_vs_step",
    "earlier_overlap_vs_step",
    "tool_search",
    "tool_visit",
    "tool_python",
    "answer",
    "tool_other",
)
_WORD_RE = re.compile(r"\w{3,}")
_STOPWORDS = frozenset(
    "the and for with that this from what which who whom whose when where how why are was were has have had "
    "not but all any can its into about will would should could there their then than they them been".split()
)


class ProbeResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accuracy: float | None = Field(description="share of held-out steps whose chosen option the probe found")
    chance: float | None = Field(description="mean 1/(N+1) over the held-out steps")
    margin: float | None = Field(description="accuracy - chance")
    stderr: float | None = Field(description="binomial standard error of the accuracy")
    leaks: bool | None = Field(description=f"margin > {LEAK_MARGIN}: the options still give the choice away")
    train_steps: int
    test_steps: int
    features: list[str] = Field(description="what the probe sees of each option")
    note: str = Field("", description="why there is no figure, when there is none")


class DecisionQuality(BaseModel):
    model_config = ConfigDict(extra="forbid")
    records: int
    flagged: int = Field(description="records kept out of the corpus (too many filled options)")
    steps: int
    options_per_step: float
    alternatives: int
    filled: int = Field(description="alternatives not written by the LLM")
    filled_share: float
    options_by_source: dict[str, int] = Field(
        description="every option by origin: original, llm, earlier_step, template"
    )
    condensed_steps: dict[str, int] = Field(
        description="steps whose original thought was condensed, by how (llm, cut)"
    )
    length_ratio_median: float | None = Field(
        description="median over steps of chosen thought words / mean alternative words"
    )
    length_ratio_mean: float | None
    length_ratio_in_band: float | None = Field(description="share of steps whose ratio lies in 0.5-1.5")
    probe: ProbeResult


class RolloutOutcomes(BaseModel):
    model_config = ConfigDict(extra="forbid")
    records: int
    by_source: dict[str, dict[str, int]] = Field(
        description="source (rollout, import:…) -> outcome -> records"
    )
    judged_by: dict[str, int] = Field(
        description="what decided the outcomes (label, exact, numeric, judge, evidence, …)"
    )
    dropped: dict[str, int] = Field(
        description="failed-ledger rows of the rollouts stage by kind (unjudged, …)"
    )


class CorpusQuality(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: int
    texts_by_kind: dict[str, int]
    correct_outcome_texts: int = Field(
        description="texts whose judged outcome is correct (reasoning judged correct; rollout and decision "
        "texts of trajectories judged correct)"
    )
    correct_outcome_share: float | None
    mixture: MixtureReport | None = Field(description="tokens per kind and CPT stage against the targets")


# ---------------------------------------------------------------------------
# Option features
# ---------------------------------------------------------------------------


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD_RE.findall(text.casefold()) if w not in _STOPWORDS}


def _form(option: str) -> str:
    calls = tags.find_tool_calls(option)
    if calls:
        try:
            tool = tags.parse_tool_call(calls[0]).tool
        except ValueError:
            return "tool_other"
        return f"tool_{tool}" if tool in ("search", "visit", "python") else "tool_other"
    return "answer" if tags.find_answers(option) else "tool_other"


def step_features(question: str, earlier: str, step: DecisionStep) -> np.ndarray:
    """One row of ``PROBE_FEATURES`` per option of ``step``."""
    q_words, e_words = _content_words(question), _content_words(earlier)
    n = len(step.options)
    rows: list[list[float]] = []
    for i, option in enumerate(step.options):
        thought = " ".join(tags.find_thoughts(option))
        words = _content_words(option)
        form = _form(option)
        rows.append(
            [
                math.log1p(count_words(thought)),
                math.log1p(len(option)),
                0.0,
                0.0,
                i / max(1, n - 1),
                len(words & q_words) / max(1, len(words)),
                len(words & e_words) / max(1, len(words)),
                0.0,
                0.0,
                *(
                    float(form == f)
                    for f in ("tool_search", "tool_visit", "tool_python", "answer", "tool_other")
                ),
            ]
        )
    x = np.array(rows, dtype=float)
    # Within-step contrasts: "longer than the other options" is the tell a linear model needs.
    for target, source in ((2, 0), (3, 1), (7, 5), (8, 6)):
        x[:, target] = x[:, source] - x[:, source].mean()
    return x


def record_question(record: DecisionRecord) -> str:
    if record.question is not None:
        return record.question
    return record.text.split("\n\n", 1)[0].removeprefix("Question: ")  # records written before the field


def decision_steps(records: Sequence[DecisionRecord]) -> list[tuple[str, np.ndarray, int]]:
    """(record id, option features, chosen index) of every step of every record."""
    out: list[tuple[str, np.ndarray, int]] = []
    for record in records:
        question = record_question(record)
        earlier: list[str] = []
        for step in record.steps:
            out.append((record.id, step_features(question, "\n".join(earlier), step), step.chosen))
            if step.observation:
                earlier.append(step.observation)
    return out


# ---------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------


def chosen_option_probe(records: Sequence[DecisionRecord]) -> ProbeResult:
    """Fit on the steps of half of the records (a deterministic split by record id), score on the rest."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps = decision_steps(records)
    ids = sorted({rid for rid, _, _ in steps}, key=lambda rid: content_hash(rid, 16))
    train_ids = set(ids[::2])
    train = [s for s in steps if s[0] in train_ids]
    test = [s for s in steps if s[0] not in train_ids]
    empty = {"accuracy": None, "chance": None, "margin": None, "stderr": None, "leaks": None}
    base = {"train_steps": len(train), "test_steps": len(test), "features": list(PROBE_FEATURES)}
    if not train or not test:
        return ProbeResult(**empty, **base, note="fewer than two decision records: nothing to hold out")
    x = np.vstack([f for _, f, _ in train])
    y = np.concatenate([np.arange(len(f)) == chosen for _, f, chosen in train]).astype(int)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x, y)
    hits = [int(np.argmax(model.decision_function(f)) == chosen) for _, f, chosen in test]
    accuracy = sum(hits) / len(hits)
    chance = statistics.fmean(1 / len(f) for _, f, _ in test)
    margin = accuracy - chance
    return ProbeResult(
        accuracy=round(accuracy, 4),
        chance=round(chance, 4),
        margin=round(margin, 4),
        stderr=round(math.sqrt(accuracy * (1 - accuracy) / len(hits)), 4),
        leaks=margin > LEAK_MARGIN,
        **base,
    )


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


def _length_ratios(records: Sequence[DecisionRecord]) -> list[float]:
    ratios: list[float] = []
    for record in records:
        for step in record.steps:
            lengths = [count_words(" ".join(tags.find_thoughts(o))) for o in step.options]
            others = [w for i, w in enumerate(lengths) if i != step.chosen]
            mean = statistics.fmean(others) if others else 0.0
            if mean > 0:
                ratios.append(lengths[step.chosen] / mean)
    return ratios


def summarize_decisions(records: Sequence[DecisionRecord]) -> DecisionQuality:
    """The decision section over a set of decision records (the probe over the unflagged ones,
    which are what the corpus may take)."""
    steps = [s for r in records for s in r.steps]
    alternatives = sum(len(s.options) - 1 for s in steps)
    filled = sum(r.filled_options for r in records)
    ratios = _length_ratios(records)
    return DecisionQuality(
        records=len(records),
        flagged=sum(1 for r in records if r.flag is not None),
        steps=len(steps),
        options_per_step=round(statistics.fmean(len(s.options) for s in steps), 3) if steps else 0.0,
        alternatives=alternatives,
        filled=filled,
        filled_share=round(filled / alternatives, 4) if alternatives else 0.0,
        options_by_source=dict(sorted(Counter(src for s in steps for src in s.sources).items())),
        condensed_steps=dict(sorted(Counter(s.condensed for s in steps if s.condensed).items())),
        length_ratio_median=round(statistics.median(ratios), 3) if ratios else None,
        length_ratio_mean=round(statistics.fmean(ratios), 3) if ratios else None,
        length_ratio_in_band=round(sum(0.5 <= r <= 1.5 for r in ratios) / len(ratios), 4) if ratios else None,
        probe=chosen_option_probe([r for r in records if r.flag is None]),
    )


def decision_quality(layout: RunLayout) -> DecisionQuality | None:
    """The decision section of a run, or None when it has no decision records."""
    records = [r for r in ShardStore(layout.root).read_records("decisions") if isinstance(r, DecisionRecord)]
    return summarize_decisions(records) if records else None


def _columns(paths: Sequence[object], wanted: Sequence[str]) -> pa.Table | None:
    tables = []
    for path in paths:
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=[c for c in wanted if c in names])
        for c in wanted:
            if c not in table.column_names:  # shards written before the column existed
                table = table.append_column(c, pa.nulls(table.num_rows, pa.string()))
        tables.append(table.select(list(wanted)))
    return pa.concat_tables(tables) if tables else None


def rollout_outcomes(layout: RunLayout) -> RolloutOutcomes | None:
    """Rollout records by source and outcome, what judged them, and what the stage dropped."""
    store = ShardStore(layout.root)
    table = _columns(store.files("rollouts"), ("source", "outcome", "judged_by"))
    failed = _columns(store.files("rollouts", kind="failed"), ("error_kind",))
    if table is None and failed is None:
        return None
    by_source: dict[str, Counter[str]] = {}
    judged: Counter[str] = Counter()
    for row in table.to_pylist() if table is not None else []:
        by_source.setdefault(row["source"], Counter())[row["outcome"]] += 1
        judged[row["judged_by"] or "none"] += 1
    dropped = Counter(r["error_kind"] for r in failed.to_pylist()) if failed is not None else Counter()
    return RolloutOutcomes(
        records=table.num_rows if table is not None else 0,
        by_source={s: dict(sorted(c.items())) for s, c in sorted(by_source.items())},
        judged_by=dict(sorted(judged.items())),
        dropped=dict(sorted(dropped.items())),
    )


def corpus_quality(layout: RunLayout, cfg: CorpusConfig | None) -> CorpusQuality | None:
    """Corpus texts with a judged-correct outcome, and the mixture against its targets."""
    store = ShardStore(layout.root)
    corpus = _columns(store.files("corpus"), ("kind", "source_ids"))
    if corpus is None:
        return None
    outcomes: dict[str, str] = {}
    for stage in ("rollouts", "decisions"):
        table = _columns(store.files(stage), ("id", "outcome"))
        if table is not None:
            outcomes.update(
                zip(table.column("id").to_pylist(), table.column("outcome").to_pylist(), strict=True)
            )
    kinds: Counter[str] = Counter()
    correct = 0
    for row in corpus.to_pylist():
        kinds[row["kind"]] += 1
        source = (row["source_ids"] or [""])[0]
        # Reasoning texts are in the corpus only when judged correct (synth.stages.corpus).
        if row["kind"] == "reasoning" or outcomes.get(source) == "correct":
            correct += 1
    texts = corpus.num_rows
    return CorpusQuality(
        texts=texts,
        texts_by_kind=dict(sorted(kinds.items())),
        correct_outcome_texts=correct,
        correct_outcome_share=round(correct / texts, 4) if texts else None,
        mixture=mixture_report(summarize_corpus(layout.root).rows, cfg) if cfg is not None else None,
    )
