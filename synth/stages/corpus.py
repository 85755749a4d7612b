"""The `corpus` stage: gather, dedup, decontaminate and assign texts to CPT stages 1 and 2.

A barrier stage (it needs every upstream record first, to dedup across kinds):

* ``prepare`` gathers the CPT texts of the upstream stages — accepted planning samples,
  correct reasoning samples, rollouts judged correct, judged HAS decision texts that are
  not flagged (too many filled options) and, optionally, memory statements grouped per
  entity as knowledge text — in a deterministic order, drops exact and near duplicates
  (keeping the first) and texts that share a long n-gram with a benchmark question. Each
  drop is a ``Failure`` naming the source record. A wrong answer is never taught as a right
  one: an incorrect or unjudged rollout is no rollout text, unless ``incorrect_rollouts``
  admits the incorrect ones with an explicit outcome line; an unjudged trajectory's HAS
  text never enters.
* ``process`` counts tokens with the CPT tokenizer and assigns each text by the spec's
  mixture rule (``stage1`` / ``stage2``): the first CPT stage whose kinds (and, for
  decisions, outcomes) take it and whose window (``stageN_max_tokens``) holds it. A text
  no stage takes is dropped (``too_long`` beyond stage 2's window, else ``no_cpt_stage``).
  Counting happens per work unit, so it runs in parallel.

The defaults follow the paper (AgentFounder §3.1): stage 1 (~200B tokens at 32K context)
trains planning, reasoning, short HAS and correct rollouts; stage 2 (~100B at 128K) trains
high-quality long HAS — judged-correct decision texts too long for stage 1 — plus a replay
share of stage 1's data (``stage2.replay_share``, applied by ``agentcpt tokenize`` in
``blend_cpt2.json``). ``target_share`` is each stage's intended share of the corpus's
tokens; ``mixture_report`` compares it with what a run made (``agentcpt stats``,
``agentcpt quality``) and names what a short stage is missing.
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
from synth.dedup import SignatureMap, stage_signatures
from synth.errors import SpecError
from synth.ids import record_id
from synth.inputs import resolve_globs
from synth.records import (
    CorpusKind,
    CorpusRecord,
    DecisionRecord,
    Failure,
    MemoryRecord,
    Outcome,
    PlanningRecord,
    ReasoningRecord,
    Record,
    RolloutRecord,
)
from synth.render.traces import render_rollout
from synth.stage import Prepared, Stage, StageContext, StageOutput

KINDS: tuple[CorpusKind, ...] = ("planning", "reasoning", "rollout", "decision", "knowledge")
JudgedOutcome = Literal["correct", "incorrect"]


class StageMix(BaseModel):
    """One CPT stage's part of the mixture rule."""

    model_config = ConfigDict(extra="forbid")
    kinds: list[CorpusKind] = Field(description="corpus kinds this CPT stage trains on")
    decision_outcomes: list[JudgedOutcome] = Field(
        default_factory=lambda: ["correct"],
        description="judged outcomes of the trajectories whose HAS (decision) texts it takes",
    )
    target_share: float = Field(ge=0.0, le=1.0, description="intended share of the corpus's tokens")
    replay_share: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="share of this stage's blend drawn from the earlier stages' data (against forgetting)",
    )


def _stage1_mix() -> StageMix:
    return StageMix(
        kinds=["planning", "reasoning", "decision", "rollout", "knowledge"],
        decision_outcomes=["correct", "incorrect"],
        target_share=2 / 3,
    )


def _stage2_mix() -> StageMix:
    return StageMix(kinds=["decision"], decision_outcomes=["correct"], target_share=1 / 3, replay_share=0.1)


class CorpusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dedup: Literal["minhash", "exact", "none"] = Field("minhash", description="dedup across kinds")
    decontaminate: list[str] = Field(
        default_factory=list, description="benchmark JSONL globs with a `question` field"
    )
    stage1_max_tokens: PositiveInt = Field(
        32768, description="CPT stage 1's window: its texts have at most this many tokens"
    )
    stage2_max_tokens: PositiveInt = Field(
        131072, description="CPT stage 2's window; longer texts are dropped (too_long)"
    )
    stage1: StageMix = Field(
        default_factory=_stage1_mix,
        description="CPT stage 1's mixture rule (default: planning, reasoning, short HAS, correct rollouts)",
    )
    stage2: StageMix = Field(
        default_factory=_stage2_mix,
        description="CPT stage 2's mixture rule (default: judged-correct long HAS, 10% replay of stage 1)",
    )
    incorrect_rollouts: bool = Field(
        False,
        description="also admit rollouts judged incorrect, every rollout text then ending with an explicit "
        "outcome line; off: only judged-correct rollouts are rollout texts",
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
        total = self.stage1.target_share + self.stage2.target_share
        if abs(total - 1.0) > 0.01:
            raise ValueError(f"stage1.target_share + stage2.target_share must be 1 (is {total:g})")
        return self

    def mix(self, cpt_stage: int) -> StageMix:
        return self.stage1 if cpt_stage == 1 else self.stage2

    def window(self, cpt_stage: int) -> int:
        return self.stage1_max_tokens if cpt_stage == 1 else self.stage2_max_tokens

    def weight(self, kind: str) -> float:
        """Mixing weight per token of ``kind`` (1.0 when the spec leaves it out)."""
        return self.weights.get(kind, 1.0)  # type: ignore[call-overload]


class CorpusCandidate(BaseModel):
    """One CPT text before token counting: a work item of the corpus stage."""

    model_config = ConfigDict(extra="forbid")
    kind: CorpusKind = Field(description="planning | reasoning | rollout | decision | knowledge")
    text: str = Field(description="the rendered CPT text")
    outcome: Outcome | None = Field(None, description="judged outcome of its trajectory (rollout, decision)")
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


def rollout_text(record: RolloutRecord, with_outcome: bool) -> str | None:
    """A rollout's CPT text: its trace, or (``with_outcome``) the trace ending in an outcome line."""
    if not with_outcome:
        return record.text
    return render_rollout(record.question, record.steps, record.final_answer, record.outcome)


def gather_candidates(
    read_stage: Callable[[str], list[Record]],
    stages: Sequence[str],
    include_knowledge: bool,
    incorrect_rollouts: bool = False,
) -> tuple[list[CorpusCandidate], list[Failure]]:
    """CPT texts of the given upstream stages, ordered by kind then source id (deterministic).

    Rejected planning samples, incorrect reasoning samples, rollouts not judged correct
    (unless ``incorrect_rollouts``, then judged ones, with an outcome line), unjudged or
    flagged decision records are not corpus inputs (their stage keeps them, flagged); a
    record that should have text but has none is a failure.
    """
    candidates: list[CorpusCandidate] = []
    failures: list[Failure] = []
    rollout_outcomes = ("correct", "incorrect") if incorrect_rollouts else ("correct",)

    def add(kind: CorpusKind, record: Record, text: str | None, outcome: Outcome | None = None) -> None:
        if text and text.strip():
            candidates.append(CorpusCandidate(kind=kind, text=text, source_ids=[record.id], outcome=outcome))
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
                if isinstance(r, RolloutRecord) and r.outcome in rollout_outcomes:
                    add("rollout", r, rollout_text(r, incorrect_rollouts), r.outcome)
        elif stage == "decisions":
            for r in records:
                if isinstance(r, DecisionRecord) and r.flag is None and r.outcome != "unknown":
                    add("decision", r, r.text, r.outcome)
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
    candidates: list[CorpusCandidate], near: bool, threshold: float, signatures: SignatureMap | None = None
) -> tuple[list[CorpusCandidate], list[Failure]]:
    """Keep the first of each group of duplicates (in the candidates' order); drop the rest.

    Exact duplicates (equal after ``synth.dedup.normalize_text``: case, punctuation and
    spacing ignored) become ``duplicate``; with ``near``, MinHash near duplicates
    (estimated Jaccard >= ``threshold`` over word 5-gram shingles) become ``near_duplicate``.
    ``signatures``: the ones the upstream units made (``synth.dedup.stage_signatures``).
    """
    from synth.dedup import find_duplicate_matches

    by_key = {c.key: c for c in candidates}
    pairs = [(c.key, c.text) for c in candidates]
    matches = find_duplicate_matches(pairs, threshold, near=near, signatures=signatures)
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


def route_cpt_stage(
    kind: CorpusKind, outcome: Outcome | None, n_tokens: int, cfg: CorpusConfig
) -> Literal[1, 2] | None:
    """The first CPT stage whose mixture rule takes the text (kind, decision outcome) and whose
    window holds its ``n_tokens``; None when no stage does."""
    for cpt_stage in (1, 2):
        mix = cfg.mix(cpt_stage)
        if kind not in mix.kinds or n_tokens > cfg.window(cpt_stage):
            continue
        if kind == "decision" and outcome not in mix.decision_outcomes:
            continue
        return cpt_stage  # type: ignore[return-value]
    return None


def _unrouted(c: CorpusCandidate, n_tokens: int, cfg: CorpusConfig) -> Failure:
    """Why no CPT stage takes a text: too long for every window, or no rule for its kind and length."""
    if n_tokens > cfg.stage2_max_tokens:
        return Failure(
            input_ids=c.source_ids,
            error_kind="too_long",
            message=f"{c.kind} text of {c.key} has {n_tokens} tokens, more than stage2_max_tokens={cfg.stage2_max_tokens}",
        )
    rules = "; ".join(
        f"stage {s} takes {', '.join(cfg.mix(s).kinds) or 'nothing'} up to {cfg.window(s)} tokens"
        + (
            f" (decisions: {', '.join(cfg.mix(s).decision_outcomes)})"
            if "decision" in cfg.mix(s).kinds
            else ""
        )
        for s in (1, 2)
    )
    outcome = f", outcome {c.outcome}" if c.outcome else ""
    return Failure(
        input_ids=c.source_ids,
        error_kind="no_cpt_stage",
        message=f"{c.kind} text of {c.key} ({n_tokens} tokens{outcome}) fits no CPT stage's rule: {rules}",
    )


def resolve_tokenizer_path(cfg: CorpusConfig, base_dir: Path | None) -> Path | None:
    """The spec's tokenizer path, relative paths taken from the spec's base directory; None = default."""
    if cfg.tokenizer is None:
        return None
    p = Path(cfg.tokenizer).expanduser()
    return p if p.is_absolute() or base_dir is None else base_dir / p


class CorpusStage(Stage[CorpusConfig, CorpusCandidate]):
    config_type = CorpusConfig
    record_type = CorpusRecord
    summary_fields = ("kind", "cpt_stage", "n_tokens")
    name = "corpus"
    upstream = ("planning", "reasoning", "rollouts", "decisions", "memory")
    barrier = True

    def prepare(self, ctx: StageContext) -> Prepared[CorpusCandidate]:
        cfg = self.config(ctx.spec)
        enabled = set(ctx.spec.stages.enabled())
        # Memory is read only for knowledge texts (it can be the largest upstream stage).
        sources = [s for s in self.upstream if s in enabled and (s != "memory" or cfg.include_knowledge)]
        candidates, dropped = gather_candidates(
            ctx.read_stage, sources, cfg.include_knowledge, cfg.incorrect_rollouts
        )
        if cfg.dedup != "none":
            near = cfg.dedup == "minhash"
            # Signatures were made by the upstream units (in parallel): only banding here.
            signatures = stage_signatures(ctx.run_dir, sources) if near else None
            candidates, more = drop_duplicates(candidates, near, cfg.near_dup_threshold, signatures)
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
            cpt_stage = route_cpt_stage(c.kind, c.outcome, n_tokens, cfg)
            if cpt_stage is None:
                out.failures.append(_unrouted(c, n_tokens, cfg))
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


# ---------------------------------------------------------------------------
# The mixture against its targets (for `agentcpt stats`, `agentcpt quality`, the dashboard)
# ---------------------------------------------------------------------------

# A CPT stage holding less than this fraction of its target share is reported as short.
SHORT_OF_TARGET = 0.8


class StageShare(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpt_stage: int = Field(description="1 or 2")
    records: int
    tokens: int
    share: float = Field(description="share of the corpus's tokens")
    target_share: float = Field(description="the spec's intended share (stageN.target_share)")
    replay_share: float = Field(description="share of this stage's blend replayed from earlier stages")
    kinds: dict[str, int] = Field(description="tokens per kind in this stage")


class MixtureReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    total_tokens: int
    stages: list[StageShare] = Field(description="CPT stage 1 then 2")
    warnings: list[str] = Field(
        description="one line per CPT stage short of its target, naming what is missing"
    )


def _missing(cpt_stage: int, kinds: dict[str, int], cfg: CorpusConfig) -> str:
    """What a short stage lacks: its kinds with no tokens ("no …"), else all of its kinds ("more …")."""
    mix = cfg.mix(cpt_stage)
    absent = [k for k in mix.kinds if not kinds.get(k)]
    word = "no" if absent else "too few"
    parts: list[str] = []
    for kind in absent or mix.kinds:
        if kind == "decision" and cpt_stage == 2:
            parts.append(
                f"{word} decision (HAS) texts of {cfg.stage1_max_tokens + 1}-{cfg.stage2_max_tokens} tokens judged "
                f"{' or '.join(mix.decision_outcomes)} (long trajectories: rollouts.profile: long, or imported "
                "long trajectories)"
            )
        elif kind == "decision":
            parts.append(
                f"{word} decision (HAS) texts judged {' or '.join(mix.decision_outcomes)} (stages.decisions)"
            )
        elif kind == "rollout":
            parts.append(f"{word} rollout texts judged correct (stages.rollouts)")
        elif kind == "knowledge":
            parts.append(f"{word} knowledge texts (stages.corpus.include_knowledge)")
        else:
            parts.append(f"{word} {kind} texts (stages.{kind})")
    return "; ".join(parts)


def mixture_report(rows: Sequence[CorpusSummaryRow], cfg: CorpusConfig) -> MixtureReport:
    """Tokens per CPT stage and kind against the spec's target shares, with a warning naming what a
    stage below ``SHORT_OF_TARGET`` of its target is missing."""
    total = sum(r.tokens for r in rows)
    stages: list[StageShare] = []
    warnings: list[str] = []
    for cpt_stage in (1, 2):
        mine = [r for r in rows if r.cpt_stage == cpt_stage]
        tokens = sum(r.tokens for r in mine)
        kinds = {r.kind: r.tokens for r in mine}
        mix = cfg.mix(cpt_stage)
        share = tokens / total if total else 0.0
        stages.append(
            StageShare(
                cpt_stage=cpt_stage,
                records=sum(r.records for r in mine),
                tokens=tokens,
                share=round(share, 4),
                target_share=round(mix.target_share, 4),
                replay_share=mix.replay_share,
                kinds=kinds,
            )
        )
        if mix.target_share > 0 and share < SHORT_OF_TARGET * mix.target_share:
            warnings.append(
                f"CPT stage {cpt_stage} holds {share:.1%} of the corpus's tokens (target {mix.target_share:.1%}): "
                f"it has {_missing(cpt_stage, kinds, cfg)}"
            )
    return MixtureReport(total_tokens=total, stages=stages, warnings=warnings)
