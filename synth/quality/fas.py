"""Quality figures of a run's first-order synthesis: memory, questions, planning, reasoning (issue 16).

* **memory**: the support rate — of the statements the judge checked against their source
  chunk, the share it found supported (``verified_by = 'judge'`` records over those plus
  ``unsupported_statement`` and ``incomplete_statement`` ledger rows) — and every rejection
  reason of the memory ledger with its count.
* **questions**: every rejection reason (``too_easy`` included) with its count and its share
  of all question attempts (records + rejections).
* **planning**: the judge's reasons as percentages of all planning samples (the paper's
  Fig. 9 style), ``accepted`` included.
* **reasoning**: accuracy before the second filter (answers the first filter found correct)
  and after it (samples kept), over all reasoning samples, and the reject reasons.

Only the columns a figure needs are read, so the report stays cheap on large runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from synth.layout import RunLayout
from synth.shards import FileKind, ShardStore

# Reasoning reject reasons of the first filter (the answer against the gold one); the rest
# are the second filter's (length, consistency).
FIRST_FILTER_REASONS = frozenset({"wrong_answer", "unverified"})
# Memory ledger kinds that are a verdict of the support check.
SUPPORT_REJECTIONS = frozenset({"unsupported_statement", "incomplete_statement"})


class ReasonCount(BaseModel):
    """One reason, how often, and its share of the stage's attempts (0..1)."""

    model_config = ConfigDict(extra="forbid")
    reason: str
    count: int
    share: float = Field(description="count / attempts of the stage")


class MemoryQuality(BaseModel):
    model_config = ConfigDict(extra="forbid")
    statements: int = Field(description="memory records")
    judged: int = Field(description="statements the support check gave a verdict on")
    supported: int = Field(description="records the judge found supported by their source")
    support_rate: float | None = Field(description="supported / judged; null when nothing was judged")
    unverified: int = Field(description="statements left unchecked (the judge gave no verdict, or failed)")
    from_triples: int = Field(description="records from knowledge-graph triples (supported by construction)")
    rejections: list[ReasonCount] = Field(
        description="why statements were not kept; share of statement attempts (records + rejections)"
    )
    dropped_documents: dict[str, int] = Field(description="documents memory did not read, by reason (duplicates, caps)")


class QuestionQuality(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attempts: int = Field(description="questions asked for (records + rejections)")
    kept: int
    too_easy: int = Field(description="dropped because the model answered them closed-book")
    too_easy_share: float | None
    rejections: list[ReasonCount]
    styles: dict[str, int] = Field(description="kept questions per style")


class PlanningQuality(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples: int
    reasons: list[ReasonCount] = Field(description="judge reasons over all samples, accepted included")
    percentages: dict[str, float] = Field(description="reason -> percent of samples")


class ReasoningQuality(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples: int
    accuracy_before_filter: float | None = Field(description="share whose final answer the first filter accepted")
    accuracy_after_filter: float | None = Field(description="share kept after the length/consistency filter")
    reject_reasons: list[ReasonCount]
    decided_by: dict[str, int] = Field(description="what settled the first filter: exact, numeric, judge, rubric")


class FasQuality(BaseModel):
    """The FAS section of ``agentcpt quality``; a part is null when its stage has no records."""

    model_config = ConfigDict(extra="forbid")
    memory: MemoryQuality | None
    questions: QuestionQuality | None
    planning: PlanningQuality | None
    reasoning: ReasoningQuality | None


def _column(store: ShardStore, stage: str, kind: FileKind, column: str) -> list[object]:
    """One column of a stage's committed records or failed ledger (verified files, unit order)."""
    values: list[object] = []
    for path in store.files(stage, kind):
        schema = pq.read_schema(path)
        if column in schema.names:
            values.extend(pq.read_table(path, columns=[column]).column(column).to_pylist())
        else:  # a shard written before the column existed
            values.extend([None] * pq.read_metadata(path).num_rows)
    return values


def _reasons(counts: Counter[str], attempts: int) -> list[ReasonCount]:
    return [
        ReasonCount(reason=reason, count=n, share=n / attempts if attempts else 0.0)
        for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def _counts(values: Iterable[object]) -> Counter[str]:
    return Counter(str(v) for v in values if v is not None)


def memory_quality(store: ShardStore) -> MemoryQuality | None:
    verified = _column(store, "memory", "records", "verified_by")
    kinds = _column(store, "memory", "failed", "error_kind")
    inputs = _column(store, "memory", "failed", "input_ids")
    if not verified and not kinds:
        return None
    # Statement rejections name their chunk ("<doc>#c<k>"); dropped documents name the document.
    statement_kinds: Counter[str] = Counter()
    document_kinds: Counter[str] = Counter()
    for kind, ids in zip(kinds, inputs, strict=True):
        chunk_level = bool(ids) and "#c" in str(ids[0])  # type: ignore[index]
        (statement_kinds if chunk_level else document_kinds)[str(kind)] += 1
    by_check = _counts(verified)
    supported = by_check.get("judge", 0)
    judged = supported + sum(statement_kinds.get(k, 0) for k in SUPPORT_REJECTIONS)
    return MemoryQuality(
        statements=len(verified),
        judged=judged,
        supported=supported,
        support_rate=supported / judged if judged else None,
        unverified=statement_kinds.get("unverified_statement", 0),
        from_triples=by_check.get("triple", 0),
        rejections=_reasons(statement_kinds, len(verified) + sum(statement_kinds.values())),
        dropped_documents=dict(sorted(document_kinds.items())),
    )


def question_quality(store: ShardStore) -> QuestionQuality | None:
    styles = _counts(_column(store, "questions", "records", "style"))
    ledger = _counts(_column(store, "questions", "failed", "error_kind"))
    # Clusters that fit no style are dropped before any question is asked: not attempts.
    ledger.pop("no_applicable_style", None)
    kept = sum(styles.values())
    attempts = kept + sum(ledger.values())
    if not attempts:
        return None
    too_easy = ledger.get("too_easy", 0)
    return QuestionQuality(
        attempts=attempts,
        kept=kept,
        too_easy=too_easy,
        too_easy_share=too_easy / attempts,
        rejections=_reasons(ledger, attempts),
        styles=dict(sorted(styles.items())),
    )


def planning_quality(store: ShardStore) -> PlanningQuality | None:
    reasons = _counts(_column(store, "planning", "records", "reason"))
    samples = sum(reasons.values())
    if not samples:
        return None
    rows = _reasons(reasons, samples)
    return PlanningQuality(
        samples=samples, reasons=rows, percentages={r.reason: round(100 * r.share, 1) for r in rows}
    )


def reasoning_quality(store: ShardStore) -> ReasoningQuality | None:
    rejects = _column(store, "reasoning", "records", "reject_reason")
    samples = len(rejects)
    if not samples:
        return None
    reasons = _counts(rejects)
    first_failed = sum(n for r, n in reasons.items() if r in FIRST_FILTER_REASONS)
    kept = sum(1 for r in rejects if r is None)
    return ReasoningQuality(
        samples=samples,
        accuracy_before_filter=(samples - first_failed) / samples,
        accuracy_after_filter=kept / samples,
        reject_reasons=_reasons(reasons, samples),
        decided_by=dict(sorted(_counts(_column(store, "reasoning", "records", "decided_by")).items())),
    )


def fas_quality(layout: RunLayout) -> FasQuality:
    """The FAS figures of the run at ``layout`` (committed shards only)."""
    store = ShardStore(layout.root)
    return FasQuality(
        memory=memory_quality(store),
        questions=question_quality(store),
        planning=planning_quality(store),
        reasoning=reasoning_quality(store),
    )
