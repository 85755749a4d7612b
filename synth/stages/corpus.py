"""The `corpus` stage: gather, dedup, decontaminate and split into CPT stages 1 and 2.

A barrier stage (it needs every upstream record first, to dedup across kinds):

* ``prepare`` gathers the CPT texts of the upstream stages — accepted planning samples,
  correct reasoning samples, rollouts, HAS decision texts and, optionally, memory
  statements grouped per entity as knowledge text — in a deterministic order, drops
  exact and near duplicates (keeping the first) and texts that share a long n-gram
  with a benchmark question. Each drop is a ``Failure`` naming the source record.
* ``process`` counts tokens with the CPT tokenizer and routes each text to CPT stage 1
  (``n_tokens <= stage1_max_tokens``) or 2 (``<= stage2_max_tokens``); longer ones are
  dropped as ``too_long``. Counting happens per work unit, so it runs in parallel.

The paper trains stage 1 on ~200B tokens of shorter samples at 32K context and stage 2
on ~100B of long, high-quality ones at 128K (AgentFounder §3.1); the limits default to
those windows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt, model_validator

from synth.decontam import NgramIndex, load_benchmark_questions
from synth.errors import SpecError
from synth.ids import record_id
from synth.inputs import resolve_globs
from synth.records import (
    CorpusKind,
    CorpusRecord,
    DecisionRecord,
    Failure,
    MemoryRecord,
    PlanningRecord,
    ReasoningRecord,
    Record,
    RolloutRecord,
)
from synth.stage import Prepared, Stage, StageContext, StageOutput

KINDS: tuple[CorpusKind, ...] = ("planning", "reasoning", "rollout", "decision", "knowledge")


class CorpusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dedup: Literal["minhash", "exact", "none"] = Field("minhash", description="dedup across kinds")
    decontaminate: list[str] = Field(
        default_factory=list, description="benchmark JSONL globs with a `question` field"
    )
    stage1_max_tokens: PositiveInt = Field(
        32768, description="records up to this many tokens go to CPT stage 1"
    )
    stage2_max_tokens: PositiveInt = Field(
        131072, description="records up to this many tokens go to CPT stage 2; longer are dropped"
    )
    ngram: PositiveInt = Field(
        13,
        description="decontamination window: a text sharing this many consecutive words with a benchmark question is dropped",
    )
    ngram_min_words: PositiveInt = Field(
        8,
        description="benchmark questions shorter than `ngram` words are matched whole if they have at least this many words; shorter ones are ignored",
    )
    near_dup_threshold: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="MinHash Jaccard similarity (word 5-gram shingles) at or above which two texts are near duplicates",
    )
    include_knowledge: bool = Field(
        False, description="also emit memory statements, grouped per entity, as `knowledge` texts"
    )
    weights: dict[CorpusKind, NonNegativeFloat] = Field(
        default_factory=dict,
        description="mixing weight per kind, per token: a kind's blend weight is weight x its tokens, so 1.0 "
        "(the default for a kind left out) keeps natural proportions, 2.0 doubles its share, 0 leaves it out",
    )
    tokenizer: str | None = Field(
        None,
        description="local tokenizer directory (or tokenizer.json) for token counts; null = the embedded model's",
    )

    @model_validator(mode="after")
    def _stage2_not_below_stage1(self) -> CorpusConfig:
        if self.stage2_max_tokens < self.stage1_max_tokens:
            raise ValueError("stage2_max_tokens must be >= stage1_max_tokens")
        return self

    def weight(self, kind: str) -> float:
        """Mixing weight per token of ``kind`` (1.0 when the spec leaves it out)."""
        return self.weights.get(kind, 1.0)  # type: ignore[call-overload]


class CorpusCandidate(BaseModel):
    """One CPT text before token counting: a work item of the corpus stage."""

    model_config = ConfigDict(extra="forbid")
    kind: CorpusKind = Field(description="planning | reasoning | rollout | decision | knowledge")
    text: str = Field(description="the rendered CPT text")
    source_ids: list[str] = Field(
        description="ids of the upstream records it was made from (first one is its key)"
    )

    @property
    def key(self) -> str:
        return self.source_ids[0]


# ---------------------------------------------------------------------------
# Gathering
# ---------------------------------------------------------------------------


def _missing_text(record: Record, kind: str) -> Failure:
    return Failure(
        input_ids=[record.id], error_kind="missing_text", message=f"{kind} record {record.id} has no text"
    )


def knowledge_text(entity: str, statements: Sequence[MemoryRecord]) -> str:
    """Memory statements about one entity, as one knowledge text (a heading and a bullet list)."""
    lines = [f"# {entity}"]
    for s in statements:
        lines.append(f"- {s.statement}" + (f" ({s.time})" if s.time else ""))
    return "\n".join(lines)


def gather_candidates(
    read_stage: Callable[[str], list[Record]], stages: Sequence[str], include_knowledge: bool
) -> tuple[list[CorpusCandidate], list[Failure]]:
    """CPT texts of the given upstream stages, ordered by kind then source id (deterministic).

    Rejected planning and incorrect reasoning samples are not corpus inputs (their stage
    keeps them, flagged); a record that should have text but has none is a failure.
    """
    candidates: list[CorpusCandidate] = []
    failures: list[Failure] = []

    def add(kind: CorpusKind, record: Record, text: str | None) -> None:
        if text and text.strip():
            candidates.append(CorpusCandidate(kind=kind, text=text, source_ids=[record.id]))
        else:
            failures.append(_missing_text(record, kind))

    for stage in stages:
        records = read_stage(stage)
        if stage == "planning":
            for r in records:
                if isinstance(r, PlanningRecord) and r.accepted:
                    add("planning", r, r.text)
        elif stage == "reasoning":
            for r in records:
                if isinstance(r, ReasoningRecord) and r.correct:
                    add("reasoning", r, r.text)
        elif stage == "rollouts":
            for r in records:
                if isinstance(r, RolloutRecord):
                    add("rollout", r, r.text)
        elif stage == "decisions":
            for r in records:
                if isinstance(r, DecisionRecord):
                    add("decision", r, r.text)
        elif stage == "memory" and include_knowledge:
            knowledge, blank = _knowledge_candidates([r for r in records if isinstance(r, MemoryRecord)])
            candidates += knowledge
            failures += blank

    order = {k: i for i, k in enumerate(KINDS)}
    candidates.sort(key=lambda c: (order[c.kind], c.key))
    return candidates, failures


def _knowledge_candidates(memory: list[MemoryRecord]) -> tuple[list[CorpusCandidate], list[Failure]]:
    # Group case- and space-insensitively ("Marie Curie" and "marie  curie" are one
    # entity) and show the spelling of the group's first statement in id order.
    groups: dict[str, list[MemoryRecord]] = {}
    failures: list[Failure] = []
    for m in sorted(memory, key=lambda m: m.id):
        if m.statement.strip():
            groups.setdefault(" ".join(m.entity.casefold().split()), []).append(m)
        else:
            failures.append(_missing_text(m, "memory"))
    candidates = [
        CorpusCandidate(
            kind="knowledge", text=knowledge_text(ms[0].entity.strip(), ms), source_ids=[m.id for m in ms]
        )
        for ms in groups.values()
    ]
    return candidates, failures


# ---------------------------------------------------------------------------
# Dedup and decontamination
# ---------------------------------------------------------------------------


def drop_duplicates(
    candidates: list[CorpusCandidate], near: bool, threshold: float
) -> tuple[list[CorpusCandidate], list[Failure]]:
    """Keep the first of each group of duplicates (in the candidates' order); drop the rest.

    Exact duplicates (equal after ``synth.dedup.normalize_text``: case, punctuation and
    spacing ignored) become ``duplicate``; with ``near``, MinHash near duplicates
    (estimated Jaccard >= ``threshold`` over word 5-gram shingles) become ``near_duplicate``.
    """
    from synth.dedup import find_duplicate_matches

    by_key = {c.key: c for c in candidates}
    matches = find_duplicate_matches([(c.key, c.text) for c in candidates], threshold, near=near)
    kept = [c for c in candidates if c.key not in matches]
    failures: list[Failure] = []
    for c in candidates:
        match = matches.get(c.key)
        if match is None:
            continue
        original = by_key[match.kept_id]
        if match.kind == "exact":
            error_kind, how = "duplicate", "is a copy (up to case, punctuation and spacing)"
        else:
            error_kind, how = "near_duplicate", f"is a near duplicate (Jaccard ~{match.similarity:.2f})"
        failures.append(
            Failure(
                input_ids=c.source_ids,
                error_kind=error_kind,
                message=f"{c.kind} text of {c.key} {how} of the {original.kind} text of {original.key}",
            )
        )
    return kept, failures


def decontaminate(
    candidates: list[CorpusCandidate], index: NgramIndex
) -> tuple[list[CorpusCandidate], list[Failure]]:
    """Drop texts sharing an n-gram with a benchmark question (`contaminated`, naming the question)."""
    kept: list[CorpusCandidate] = []
    failures: list[Failure] = []
    for c in candidates:
        hit = index.find(c.text)
        if hit is None:
            kept.append(c)
        else:
            failures.append(
                Failure(
                    input_ids=c.source_ids,
                    error_kind="contaminated",
                    message=f"{c.kind} text of {c.key} shares {len(hit.ngram.split())} words with the "
                    f"benchmark question at {hit.question.source}: {hit.ngram!r}",
                )
            )
    return kept, failures


def build_decontam_index(cfg: CorpusConfig, base_dir: Path | None) -> NgramIndex | None:
    """The n-gram index of the spec's benchmark files, or None when none are listed."""
    if not cfg.decontaminate:
        return None
    from synth.decontam import BenchmarkFileError

    paths: list[Path] = []
    for i, pattern in enumerate(cfg.decontaminate):
        paths.extend(resolve_globs([pattern], f"stages.corpus.decontaminate[{i}]", base_dir))
    try:
        questions = load_benchmark_questions(paths)
    except BenchmarkFileError as err:
        raise SpecError("stages.corpus.decontaminate", str(err)) from None
    return NgramIndex(questions, n=cfg.ngram, min_words=cfg.ngram_min_words)


# ---------------------------------------------------------------------------
# Token counting and CPT stage routing
# ---------------------------------------------------------------------------


def route_cpt_stage(n_tokens: int, cfg: CorpusConfig) -> Literal[1, 2] | None:
    """CPT stage 1 up to stage1_max_tokens, 2 up to stage2_max_tokens, None (dropped) beyond."""
    if n_tokens <= cfg.stage1_max_tokens:
        return 1
    if n_tokens <= cfg.stage2_max_tokens:
        return 2
    return None


def resolve_tokenizer_path(cfg: CorpusConfig, base_dir: Path | None) -> Path | None:
    """The spec's tokenizer path, relative paths taken from the spec's base directory; None = default."""
    if cfg.tokenizer is None:
        return None
    p = Path(cfg.tokenizer).expanduser()
    return p if p.is_absolute() or base_dir is None else base_dir / p


class CorpusStage(Stage[CorpusConfig, CorpusCandidate]):
    config_type = CorpusConfig
    record_type = CorpusRecord
    summary_fields = ('kind', 'cpt_stage', 'n_tokens')
    name = "corpus"
    upstream = ("planning", "reasoning", "rollouts", "decisions", "memory")
    barrier = True

    def prepare(self, ctx: StageContext) -> Prepared[CorpusCandidate]:
        cfg = self.config(ctx.spec)
        enabled = set(ctx.spec.stages.enabled())
        # Memory is read only for knowledge texts (it can be the largest upstream stage).
        sources = [s for s in self.upstream if s in enabled and (s != "memory" or cfg.include_knowledge)]
        candidates, dropped = gather_candidates(ctx.read_stage, sources, cfg.include_knowledge)
        if cfg.dedup != "none":
            candidates, more = drop_duplicates(candidates, cfg.dedup == "minhash", cfg.near_dup_threshold)
            dropped += more
        index = build_decontam_index(cfg, ctx.base_dir)
        if index is not None:
            candidates, more = decontaminate(candidates, index)
            dropped += more
        return Prepared(items=candidates, dropped=dropped)

    async def process(self, items: Sequence[CorpusCandidate], ctx: StageContext) -> StageOutput:
        from synth.tokens import load_tokenizer  # lazy: keeps `synth.spec` imports light

        cfg = self.config(ctx.spec)
        tokenizer = load_tokenizer(resolve_tokenizer_path(cfg, ctx.base_dir))
        counts = tokenizer.count_tokens([c.text for c in items])
        out = StageOutput()
        for c, n_tokens in zip(items, counts, strict=True):
            cpt_stage = route_cpt_stage(n_tokens, cfg)
            if cpt_stage is None:
                out.failures.append(
                    Failure(
                        input_ids=c.source_ids,
                        error_kind="too_long",
                        message=f"{c.kind} text of {c.key} has {n_tokens} tokens, more than "
                        f"stage2_max_tokens={cfg.stage2_max_tokens}",
                    )
                )
                continue
            out.records.append(
                CorpusRecord(
                    id=record_id("corpus", c.source_ids, {"kind": c.kind}, c.text),
                    run_id=ctx.run_id,
                    parent_ids=c.source_ids,
                    kind=c.kind,
                    text=c.text,
                    n_tokens=n_tokens,
                    cpt_stage=cpt_stage,
                    source_ids=c.source_ids,
                )
            )
        return out


STAGE = CorpusStage()


# ---------------------------------------------------------------------------
# Statistics (for `agentcpt stats` and the API)
# ---------------------------------------------------------------------------

# The same numbers as `summarize_corpus`, as SQL over the catalog's `corpus` view.
CORPUS_SUMMARY_SQL = (
    "select cpt_stage, kind, count(*) as records, sum(n_tokens) as tokens "
    "from corpus group by cpt_stage, kind order by cpt_stage, kind"
)


class CorpusSummaryRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpt_stage: int = Field(description="1 or 2")
    kind: CorpusKind
    records: int = Field(description="corpus records of this kind and CPT stage")
    tokens: int = Field(description="their tokens (CPT tokenizer, without EOD)")


class CorpusSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[CorpusSummaryRow] = Field(description="per CPT stage and kind, in that order")
    dropped: dict[str, int] = Field(
        description="dropped inputs per reason (duplicate, near_duplicate, contaminated, too_long, ...)"
    )

    @property
    def total_tokens(self) -> int:
        return sum(r.tokens for r in self.rows)


def summarize_corpus(run_dir: str | Path) -> CorpusSummary:
    """Tokens and records per CPT stage and kind of a run's committed corpus, and drops per reason.

    Reads only the small columns of the committed shards (never the texts).
    """
    from synth.shards import ShardStore

    store = ShardStore(run_dir)
    tables = [pq.read_table(p, columns=["cpt_stage", "kind", "n_tokens"]) for p in store.files("corpus")]
    rows: list[CorpusSummaryRow] = []
    if tables:
        grouped = (
            pa.concat_tables(tables)
            .group_by(["cpt_stage", "kind"])
            .aggregate([("n_tokens", "count"), ("n_tokens", "sum")])
            .sort_by([("cpt_stage", "ascending"), ("kind", "ascending")])
        )
        for g in grouped.to_pylist():
            rows.append(
                CorpusSummaryRow(
                    cpt_stage=g["cpt_stage"],
                    kind=g["kind"],
                    records=g["n_tokens_count"],
                    tokens=g["n_tokens_sum"] or 0,
                )
            )
    dropped: dict[str, int] = {}
    failed = [pq.read_table(p, columns=["error_kind"]) for p in store.files("corpus", kind="failed")]
    if failed:
        counts = pc.value_counts(pa.concat_tables(failed).column("error_kind").combine_chunks())
        dropped = {v["values"]: v["counts"] for v in counts.to_pylist()}
    return CorpusSummary(rows=rows, dropped=dict(sorted(dropped.items())))
