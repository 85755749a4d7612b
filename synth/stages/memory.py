"""The `memory` stage: documents to an entity-anchored open-world memory (paper §2.2.1).

Each document chunk is rewritten by the LLM into (entity, statement, time) entries:
declarative, self-contained sentences that keep numbers, dates and attribution ("Riverton
welcomed 2.41 million overnight visitors in 2024, according to the Riverton Visitor
Bureau."). It is not a knowledge graph: relations stay implicit in dense statements, and
the entity is only the anchor that gathers statements from many documents.

* ``prepare`` (barrier, upstream ``documents``) sees every document, so it is where
  exact and MinHash near-duplicates are dropped (``synth.dedup``), keeping the earliest
  published copy; the rest is cut into chunks at paragraph boundaries.
* ``process`` asks the LLM for statements per chunk and validates every one of them: an
  entity that is not in the text, a number that is not in the text, a statement that does
  not name its entity are each dropped with a counted reason. Entity names are normalized
  (``canonical_entity``) by a pure function of the name, so units running in parallel put
  "The Riverton Transit Authority" and "riverton transit authority" under one entity.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from synth.dedup import find_duplicate_matches
from synth.entities import (
    NOT_ENTITIES,
    Rejection,
    display_name,
    entity_key,
    numbers_in,
    text_aliases,
)
from synth.ids import record_id
from synth.llm.base import LLMError, Message
from synth.records import DocumentRecord, Failure, MemoryRecord
from synth.stage import Prepared, Stage, StageContext, StageOutput


class MemoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_statements_per_doc: PositiveInt = Field(20, description="cap on statements kept per document")
    chunk_chars: PositiveInt = Field(3000, description="characters of document text per LLM call")
    aliases: dict[str, str] = Field(
        default_factory=dict,
        description="entity alias -> canonical name (e.g. {'RTA': 'Riverton Transit Authority'}); compared after normalization",
    )
    max_tokens: PositiveInt | None = Field(
        None, description="completion cap per chunk; null = the llm block's max_tokens"
    )
    max_documents: PositiveInt | None = Field(
        None,
        description="cap on documents read (earliest first, after dedup); the rest go to the failed "
        "ledger as over_max_documents. null = all",
    )


# ---------------------------------------------------------------------------
# Chunks
# ---------------------------------------------------------------------------

_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")


def chunk_text(text: str, chunk_chars: int) -> list[str]:
    """Paragraph-aligned chunks of at most ``chunk_chars`` (a longer paragraph is cut at sentences,
    a longer sentence at the limit). Joining the chunks loses only whitespace."""
    pieces: list[str] = []
    for para in (p.strip() for p in text.split("\n")):
        if not para:
            continue
        if len(para) <= chunk_chars:
            pieces.append(para)
            continue
        for sentence in _SENTENCE_END_RE.split(para):
            while len(sentence) > chunk_chars:
                pieces.append(sentence[:chunk_chars])
                sentence = sentence[chunk_chars:]
            if sentence:
                pieces.append(sentence)
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 1 + len(piece) > chunk_chars:
            chunks.append(current)
            current = piece
        else:
            current = f"{current}\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


class MemoryChunk(BaseModel):
    """A work item of the memory stage: one chunk of one (deduplicated) document."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    doc_id: str
    url: str
    title: str | None = None
    date: str | None = None
    index: int = Field(ge=0, description="chunk number within its document")
    n_chunks: int = Field(ge=1, description="chunks of the document")
    text: str

    @property
    def chunk_id(self) -> str:
        return f"{self.doc_id}#c{self.index}"


# ---------------------------------------------------------------------------
# Prompt (one place, versioned: the version is part of every record id)
# ---------------------------------------------------------------------------


_SYSTEM = "You turn a text into facts. Reply with JSON only."
_INSTRUCTIONS = (
    "List up to {n} facts from the text. Each fact is one full sentence that names its subject "
    "(the entity) and keeps the numbers, dates and sources as written. time is the date or year the "
    "fact refers to, or null.\n"
    'Reply as {{"statements": [{{"entity": "...", "statement": "...", "time": "..."}}]}}\n\n'
)
# The one-shot example is about a place no document mentions: SmolLM2-135M sometimes echoes
# it verbatim, and the grounding checks then reject the echo (ungrounded_entity) instead of
# letting it into the memory. Greedy decoding helped it most: sampled at 0.8 it wrote prose.
_EXAMPLE_TEXT = (
    "The Lake Varn ferry service, run by Varn Shipping, carried 182,000 passengers in 2023, "
    "its operator said in March 2024. A second boat will enter service in June 2025."
)
_EXAMPLE_REPLY = (
    '{"statements": [{"entity": "Lake Varn ferry", "statement": "The Lake Varn ferry service carried '
    '182,000 passengers in 2023, according to its operator Varn Shipping.", "time": "2023"}, '
    '{"entity": "Lake Varn ferry", "statement": "A second Lake Varn ferry boat will enter service in June 2025.", '
    '"time": "June 2025"}]}'
)


def memory_messages(chunk: MemoryChunk, max_statements: int) -> list[Message]:
    """Chat messages for one chunk: a one-shot example turn, then the chunk."""
    header = f'Text from "{chunk.title}"' if chunk.title else "Text"
    header += f" ({chunk.date})" if chunk.date else ""
    instructions = _INSTRUCTIONS.format(n=max_statements)
    return [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": instructions + f"Text:\n{_EXAMPLE_TEXT}"},
        {"role": "assistant", "content": _EXAMPLE_REPLY},
        {"role": "user", "content": instructions + f"{header}:\n{chunk.text}"},
    ]


class StatementDraft(BaseModel):
    """One statement as the model wrote it. Fields default to empty so that one bad entry is
    rejected on its own (with a reason) instead of failing the whole reply; the JSON schema
    still requires all three for endpoints that enforce it."""

    # Extra keys are ignored: weak models add "source", "id", ... and the rest is still usable.
    model_config = ConfigDict(extra="ignore", json_schema_extra={"required": ["entity", "statement", "time"]})
    entity: str = Field("", description="the subject the statement is about")
    statement: str = Field("", description="one self-contained sentence with its numbers, dates and source")
    time: str | None = Field(None, description="date or year the statement refers to, or null")

    @field_validator("entity", "statement", "time", mode="before")
    @classmethod
    def _scalar_to_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v


class StatementBatch(BaseModel):
    """The reply: a list of statements. A bare statement object or a bare list is accepted too;
    an object with neither ``statements`` nor ``statement`` is invalid (the client retries)."""

    model_config = ConfigDict(extra="ignore")
    statements: list[StatementDraft] = Field(description="the facts found in the text")

    @model_validator(mode="before")
    @classmethod
    def _accept_loose_shapes(cls, data: Any) -> Any:
        if isinstance(data, list):
            return {"statements": data}
        if isinstance(data, dict) and "statements" not in data:
            if "statement" in data:
                return {"statements": [data]}
            for key in ("facts", "items", "entries"):
                if isinstance(data.get(key), list):
                    return {"statements": data[key]}
        return data


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")
_WORD_RE = re.compile(r"\w+")
_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_TIME_RE = re.compile(
    rf"\b(?:\d{{1,2}}\s+(?:{_MONTHS})\s+\d{{4}}|(?:{_MONTHS})\s+\d{{4}}|Q[1-4]\s+\d{{4}}|(?:1[5-9]|20)\d{{2}})\b"
)
_NULLISH = frozenset({"", "null", "none", "n/a", "na", "unknown", "-", "not specified", "not given"})
MIN_STATEMENT_WORDS = 4
MAX_STATEMENT_CHARS = 500
MAX_ENTITY_WORDS = 10


def _contains_key(haystack_key: str, key: str) -> bool:
    """Whether a normalized key occurs in a normalized text on word boundaries."""
    return bool(key) and f" {key} " in f" {haystack_key} "


def _statement_time(
    draft_time: str | None, statement: str, source_text: str, doc_date: str | None
) -> str | None:
    """The time a statement refers to: the model's, if the text supports it; else the first date
    in the statement; else the document's date (the time the statement was observed)."""
    t = " ".join((draft_time or "").split())
    if t.casefold() not in _NULLISH and (numbers_in(t) <= numbers_in(source_text + " " + statement)):
        return t
    match = _TIME_RE.search(statement)
    if match:
        return match.group(0)
    return doc_date


class _ChunkContext:
    """What validating one chunk's statements needs, computed once per chunk."""

    def __init__(self, chunk: MemoryChunk, aliases: dict[str, str]) -> None:
        self.chunk = chunk
        source = f"{chunk.title or ''}\n{chunk.date or ''}\n{chunk.text}"
        self.source = source
        self.source_key = entity_key(source)
        self.numbers = numbers_in(source)
        # Config aliases win over acronyms the chunk defines.
        self.aliases = {
            **text_aliases(chunk.text),
            **{entity_key(a): entity_key(c) for a, c in aliases.items()},
        }


@dataclass(frozen=True)
class ValidStatement:
    entity: str
    statement: str
    time: str | None


def _names_entity(statement_key: str, key: str) -> bool:
    """Whether a statement names its entity: the whole name, or its first word plus at least
    half of its words ("Northwind reported ..." names "Northwind Robotics")."""
    if _contains_key(statement_key, key):
        return True
    words = key.split()
    present = [w for w in words if _contains_key(statement_key, w)]
    return len(words) > 1 and words[0] in present and len(present) * 2 >= len(words)


_SUBJECT_RE = re.compile(
    r"^(?:The\s+|A\s+|An\s+)?([A-Z][\w&'’.-]*(?:\s+(?:of|and|for|de|the|[A-Z][\w&'’.-]*|\d[\w.]*))*)"
)


def leading_subject(statement: str) -> str | None:
    """The capitalized name a statement opens with ("The Riverton Transit Authority carried ..." ->
    "Riverton Transit Authority"), or None."""
    match = _SUBJECT_RE.match(statement)
    if not match:
        return None
    words = match.group(1).split()
    while words and words[-1] in ("of", "and", "for", "de", "the"):
        words.pop()
    return " ".join(words) or None


def _entity_problem(key: str, name: str, ctx: _ChunkContext, statement_key: str) -> Rejection | None:
    """Why ``key`` can't anchor a statement (generic, not in the text, not named by it), or None."""
    if not key or len(key.split()) > MAX_ENTITY_WORDS or all(w in NOT_ENTITIES for w in key.split()):
        return Rejection(
            "invalid_entity", f"entity {name!r} is empty, generic or longer than {MAX_ENTITY_WORDS} words"
        )
    resolved = ctx.aliases.get(key, key)
    if not (_contains_key(ctx.source_key, key) or _contains_key(ctx.source_key, resolved)):
        return Rejection("ungrounded_entity", f"entity {name!r} does not occur in the document")
    if not (_names_entity(statement_key, key) or _names_entity(statement_key, resolved)):
        return Rejection("statement_not_self_contained", f"statement does not name its entity {name!r}")
    return None


def validate_statement(draft: StatementDraft, ctx: _ChunkContext) -> ValidStatement | Rejection:
    """A usable statement (entity normalized, time resolved), or why it was rejected.

    The entity is the model's when the text has it and the statement names it. Otherwise the
    statement's opening name is tried: small models often label a correct sentence with the
    page's headline ("Riverton trams and buses" for "The Riverton Transit Authority carried
    ..."), and the sentence's subject is then the better anchor.
    """
    name = " ".join(draft.entity.split())
    statement = " ".join(draft.statement.split())
    if len(_WORD_RE.findall(statement)) < MIN_STATEMENT_WORDS or len(statement) > MAX_STATEMENT_CHARS:
        return Rejection(
            "invalid_statement",
            f"statement must have {MIN_STATEMENT_WORDS}+ words and at most {MAX_STATEMENT_CHARS} chars",
        )
    missing = numbers_in(statement) - ctx.numbers
    if missing:
        return Rejection("ungrounded_number", f"numbers {sorted(missing)} are not in the document")
    statement_key = entity_key(statement)
    key = entity_key(name)
    problem = _entity_problem(key, name, ctx, statement_key)
    if problem is not None:
        subject = leading_subject(statement)
        if subject is None or _entity_problem(entity_key(subject), subject, ctx, statement_key) is not None:
            return problem
        key = entity_key(subject)
    resolved = ctx.aliases.get(key, key)
    return ValidStatement(
        display_name(resolved), statement, _statement_time(draft.time, statement, ctx.source, ctx.chunk.date)
    )


# ---------------------------------------------------------------------------
# Stage
# ---------------------------------------------------------------------------


def _near_dup_threshold(ctx: StageContext) -> float:
    # Imported here: synth.spec imports this module for MemoryConfig. The documents block may
    # be absent from a spec that resumes after ingest, hence the default.
    from synth.stages.documents import DocumentsConfig

    return (ctx.spec.stages.documents or DocumentsConfig()).near_dup_threshold


class MemoryStage(Stage[MemoryConfig, MemoryChunk]):
    """Deduplicated documents, chunked, to validated MemoryRecords."""

    config_type = MemoryConfig
    record_type = MemoryRecord
    summary_fields = ('entity', 'statement')
    name = "memory"
    upstream = ("documents",)
    barrier = True

    def prepare(self, ctx: StageContext) -> Prepared[MemoryChunk]:
        """Drop exact and near-duplicate documents (keeping the earliest published), then chunk."""
        cfg = self.config(ctx.spec)
        threshold = _near_dup_threshold(ctx)
        docs = cast(list[DocumentRecord], list(ctx.read_stage("documents")))
        # Earliest publication first, so a re-post is the one dropped; undated pages go last.
        docs.sort(key=lambda d: (d.date or "9999", d.url, d.id))
        by_id = {d.id: d for d in docs}
        matches = find_duplicate_matches([(d.id, d.text) for d in docs], threshold)
        dropped: list[Failure] = []
        items: list[MemoryChunk] = []
        for doc in docs:
            match = matches.get(doc.id)
            if match is not None:
                kept = by_id[match.kept_id]
                kind = "duplicate_document" if match.kind == "exact" else "near_duplicate_document"
                dropped.append(
                    Failure(
                        input_ids=[doc.id],
                        error_kind=kind,
                        message=f"{doc.url} duplicates {kept.url} (kept document {kept.id}, similarity {match.similarity:.2f})",
                    )
                )
                continue
            if cfg.max_documents is not None and len({c.doc_id for c in items}) >= cfg.max_documents:
                dropped.append(
                    Failure(
                        input_ids=[doc.id],
                        error_kind="over_max_documents",
                        message=f"{doc.url} not read: stages.memory.max_documents is {cfg.max_documents}",
                    )
                )
                continue
            chunks = chunk_text(doc.text, cfg.chunk_chars)
            items.extend(
                MemoryChunk(
                    doc_id=doc.id,
                    url=doc.url,
                    title=doc.title,
                    date=doc.date,
                    index=i,
                    n_chunks=len(chunks),
                    text=c,
                )
                for i, c in enumerate(chunks)
            )
        return Prepared(items=items, dropped=dropped)

    async def process(self, items: Sequence[MemoryChunk], ctx: StageContext) -> StageOutput:
        cfg = self.config(ctx.spec)
        chunks = list(items)
        results = await asyncio.gather(*(self._statements(chunk, cfg, ctx) for chunk in chunks))
        out = StageOutput()
        seen: set[str] = set()
        for records, failures in results:
            for record in records:
                if record.id not in seen:  # ids include the chunk, so repeats are within one chunk only
                    seen.add(record.id)
                    out.records.append(record)
            out.failures.extend(failures)
        return out

    async def _statements(
        self, chunk: MemoryChunk, cfg: MemoryConfig, ctx: StageContext
    ) -> tuple[list[MemoryRecord], list[Failure]]:
        """One chunk through the LLM; every rejected statement becomes a Failure with its reason."""
        cap = max(1, math.ceil(cfg.max_statements_per_doc / chunk.n_chunks))
        try:
            batch = await ctx.llm.complete(
                memory_messages(chunk, cap), schema=StatementBatch, stage="memory", max_tokens=cfg.max_tokens
            )
        except LLMError as err:
            return [], [
                Failure(
                    input_ids=[chunk.chunk_id],
                    error_kind=err.kind,
                    message=str(err),
                    raw_output=err.raw_output,
                )
            ]

        vctx = _ChunkContext(chunk, cfg.aliases)
        records: list[MemoryRecord] = []
        failures: list[Failure] = []
        seen: set[tuple[str, str]] = set()
        for draft in batch.statements:
            result = validate_statement(draft, vctx)
            raw = draft.model_dump_json()
            if isinstance(result, Rejection):
                failures.append(
                    Failure(
                        input_ids=[chunk.chunk_id],
                        error_kind=result.error_kind,
                        message=result.message,
                        raw_output=raw,
                    )
                )
                continue
            entity, statement, time = result.entity, result.statement, result.time
            dedup_key = (entity, statement.casefold())
            if dedup_key in seen:
                failures.append(
                    Failure(
                        input_ids=[chunk.chunk_id],
                        error_kind="duplicate_statement",
                        message=f"repeated statement about {entity!r}",
                        raw_output=raw,
                    )
                )
                continue
            if len(records) >= cap:
                failures.append(
                    Failure(
                        input_ids=[chunk.chunk_id],
                        error_kind="over_statement_cap",
                        message=f"more than {cap} statements for this chunk",
                        raw_output=raw,
                    )
                )
                continue
            seen.add(dedup_key)
            records.append(
                MemoryRecord(
                    id=record_id(
                        "memory",
                        [chunk.doc_id],
                        {"prompt": STAGE.prompt_fingerprint, "chunk": chunk.index},
                        {"entity": entity, "statement": statement, "time": time},
                    ),
                    run_id=ctx.run_id,
                    parent_ids=[chunk.doc_id],
                    model=ctx.llm.model_name,
                    entity=entity,
                    statement=statement,
                    doc_id=chunk.doc_id,
                    source_url=chunk.url,
                    time=time,
                )
            )
        if not batch.statements:
            failures.append(
                Failure(
                    input_ids=[chunk.chunk_id],
                    error_kind="no_statements",
                    message="the model returned no statements for this chunk",
                )
            )
        return records, failures


STAGE = MemoryStage()
