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
  entity that is not in the text, a number that is not in the text (compared by value:
  "38.2 million" is "38,200,000"), a statement without a verb (a byline, a title), one
  that does not name its entity, one anchored on a common word ("Overnight", "Hotels") are
  each dropped with a counted reason. Entity names are normalized (``canonical_entity``) by
  a pure function of the name, so units running in parallel put "The Riverton Transit
  Authority" and "riverton transit authority" under one entity.
* **Verified memory**: every statement that passes is then checked against its chunk by
  the judge model, many statements per call (``synth.support``); only ``supported`` ones
  become records (``verified_by: judge``), the others go to the ledger as
  ``unsupported_statement``, ``incomplete_statement`` or ``unverified_statement`` with the
  judge's reason. ``agentcpt quality`` reports the support rate.
* ``knowledge_graph`` documents (``inputs.triples``) need no model: each line is a triple,
  turned into a statement anchored on its subject (``verified_by: triple``).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from synth.answers import ungrounded_numbers
from synth.dedup import find_duplicate_matches, stage_signatures
from synth.entities import (
    NOT_ENTITIES,
    Rejection,
    display_name,
    entity_key,
    numbers_in,
    text_aliases,
)
from synth.ids import record_id
from synth.ingest.titles import choose_titles
from synth.ingest.triples import parse_triple_line, verbalize
from synth.llm.base import LLMError, LLMTruncated, Message
from synth.llm.config import completion_cap
from synth.records import DocumentRecord, Failure, MemoryRecord
from synth.stage import ItemOrigin, Prepared, Stage, StageContext, StageOutput
from synth.statement_checks import has_predicate, is_generic_name
from synth.support import SupportVerdict, SupportVerdicts, support_messages


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
        description="cap on documents read by the model (earliest first, after dedup; knowledge_graph "
        "documents need no model and are not counted); the rest go to the failed ledger as "
        "over_max_documents. null = all",
    )
    support_check: bool = Field(
        True,
        description="check every statement against its chunk with the judge model (judge_llm); "
        "unsupported ones go to the ledger. false keeps them unchecked (verified_by null)",
    )
    support_batch_size: PositiveInt = Field(12, description="statements checked per judge call")
    judge_max_tokens: PositiveInt | None = Field(
        128,
        # ~4 tokens a verdict: 12 verdicts and the JSON around them fit in ~60.
        description="completion cap of the support-check call, at most judge_llm.max_tokens; null = judge_llm.max_tokens",
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
    source_type: str = Field("web", description="the document's source_type (knowledge_graph chunks need no LLM)")

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


class ChunkContext:
    """What validating one chunk's statements needs, computed once per chunk."""

    def __init__(self, chunk: MemoryChunk, aliases: dict[str, str]) -> None:
        self.chunk = chunk
        source = f"{chunk.title or ''}\n{chunk.date or ''}\n{chunk.text}"
        self.source = source
        # Where names are told from common words (synth.statement_checks.is_generic_name): the
        # text, after the title as a sentence of its own, so a name in the title counts.
        self.names_text = f"{chunk.text}\nAbout {chunk.title}." if chunk.title else chunk.text
        self.source_key = entity_key(source)
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


def _entity_problem(key: str, name: str, ctx: ChunkContext, statement_key: str) -> Rejection | None:
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


def validate_statement(draft: StatementDraft, ctx: ChunkContext) -> ValidStatement | Rejection:
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
    if not has_predicate(statement):
        return Rejection(
            "no_predicate", "the statement has no verb: a name, a title or a byline, not a claim"
        )
    missing = ungrounded_numbers(statement, ctx.source)
    if missing:
        return Rejection("ungrounded_number", f"numbers {missing} are not in the document")
    statement_key = entity_key(statement)
    key = entity_key(name)
    problem = _entity_problem(key, name, ctx, statement_key)
    if problem is None and is_generic_name(name, ctx.names_text):
        problem = Rejection("generic_subject", f"entity {name!r} is a common word in this text, not a name")
    if problem is not None:
        subject = leading_subject(statement)
        if subject is None or _entity_problem(entity_key(subject), subject, ctx, statement_key) is not None:
            return problem
        if is_generic_name(subject, ctx.names_text):
            # The fallback anchor is only the sentence's first capitalized words: "Overnight
            # stays rose ..." or "Hotels reported ..." would anchor memory on a common word.
            return Rejection(
                "generic_subject",
                f"{problem.message}; the statement's opening words {subject!r} are a common word, not a name",
            )
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
    summary_fields = ("entity", "statement")
    shared_prompt_modules = ("synth.support",)
    name = "memory"
    upstream = ("documents",)
    barrier = True
    input_cap_field = "max_documents"

    def item_origin(self, item: MemoryChunk) -> ItemOrigin:
        # For --preview's estimate: chunks count by document, and knowledge_graph documents
        # (no model call) are not held to max_documents.
        kg = item.source_type == "knowledge_graph"
        source = "documents (knowledge_graph)" if kg else "documents"
        return ItemOrigin(source, follows="documents", input_id=item.doc_id, capped=not kg, calls_llm=not kg)

    def prepare(self, ctx: StageContext) -> Prepared[MemoryChunk]:
        """Drop exact and near-duplicate documents (keeping the earliest published), then chunk."""
        cfg = self.config(ctx.spec)
        threshold = _near_dup_threshold(ctx)
        docs = cast(list[DocumentRecord], list(ctx.read_stage("documents")))
        # Earliest publication first, so a re-post is the one dropped; undated pages go last.
        docs.sort(key=lambda d: (d.date or "9999", d.url, d.id))
        by_id = {d.id: d for d in docs}
        # Titles most pages of a site share (a generator's chrome, "Docs") fall back to each
        # page's next candidate: only here is every page of a site seen at once.
        titles = dict(
            zip(
                (d.id for d in docs),
                choose_titles([(d.url, d.title_candidates or ([d.title] if d.title else [])) for d in docs]),
                strict=True,
            )
        )
        # MinHash signatures were made by the documents units (in parallel): only banding here.
        signatures = stage_signatures(ctx.run_dir, self.upstream)
        matches = find_duplicate_matches([(d.id, d.text) for d in docs], threshold, signatures=signatures)
        dropped: list[Failure] = []
        items: list[MemoryChunk] = []
        read_by_model = 0  # documents whose chunks go to the model (the cap counts these)
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
            # The cap bounds model calls: knowledge_graph documents need none and always count in.
            if (
                cfg.max_documents is not None
                and doc.source_type != "knowledge_graph"
                and read_by_model >= cfg.max_documents
            ):
                dropped.append(
                    Failure(
                        input_ids=[doc.id],
                        error_kind="over_max_documents",
                        message=f"{doc.url} not read: stages.memory.max_documents is {cfg.max_documents}",
                    )
                )
                continue
            chunks = chunk_text(doc.text, cfg.chunk_chars)
            if chunks and doc.source_type != "knowledge_graph":
                read_by_model += 1
            items.extend(
                MemoryChunk(
                    doc_id=doc.id,
                    url=doc.url,
                    title=titles[doc.id],
                    date=doc.date,
                    index=i,
                    n_chunks=len(chunks),
                    text=c,
                    source_type=doc.source_type,
                )
                for i, c in enumerate(chunks)
            )
        return Prepared(items=items, dropped=dropped)

    async def process(self, items: Sequence[MemoryChunk], ctx: StageContext) -> StageOutput:
        cfg = self.config(ctx.spec)
        cfg = cfg.model_copy(
            update={"judge_max_tokens": completion_cap(cfg.judge_max_tokens, ctx.spec.effective_judge_llm.max_tokens)}
        )
        # A runner may ship items between processes as plain dicts.
        chunks = [MemoryChunk.model_validate(c) if isinstance(c, dict) else c for c in items]
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
        """One chunk through the LLM and the checks; every rejected statement becomes a Failure
        with its reason."""
        if chunk.source_type == "knowledge_graph":
            return self._triple_statements(chunk, cfg, ctx)
        cap = max(1, math.ceil(cfg.max_statements_per_doc / chunk.n_chunks))
        try:
            batch = await ctx.llm.complete(
                memory_messages(chunk, cap), schema=StatementBatch, stage="memory", max_tokens=cfg.max_tokens
            )
        except LLMError as err:
            return [], [_chunk_failure(chunk, err.kind, str(err), err.raw_output)]
        if not batch.statements:
            return [], [_chunk_failure(chunk, "no_statements", "the model returned no statements for this chunk")]

        candidates, failures = _checked_drafts(batch.statements, ChunkContext(chunk, cfg.aliases))
        # The cap applies before the support check: the judge reads only what could be kept.
        for draft, _ in candidates[cap:]:
            failures.append(
                _chunk_failure(
                    chunk, "over_statement_cap", f"more than {cap} statements for this chunk", draft.model_dump_json()
                )
            )
        candidates = candidates[:cap]
        verified_by: str | None = None
        if cfg.support_check and candidates:
            verdicts = await check_support(chunk, [v.statement for _, v in candidates], cfg, ctx)
            kept: list[tuple[StatementDraft, ValidStatement]] = []
            for (draft, valid), verdict in zip(candidates, verdicts, strict=True):
                rejection = _support_rejection(verdict)
                if rejection is None:
                    kept.append((draft, valid))
                else:
                    failures.append(
                        _chunk_failure(chunk, rejection.error_kind, rejection.message, draft.model_dump_json())
                    )
            candidates, verified_by = kept, "judge"

        return [_record(chunk, valid, ctx, verified_by) for _, valid in candidates], failures

    def _triple_statements(
        self, chunk: MemoryChunk, cfg: MemoryConfig, ctx: StageContext
    ) -> tuple[list[MemoryRecord], list[Failure]]:
        """A knowledge_graph chunk: one statement per triple line, no model (``synth.ingest.triples``)."""
        drafts: list[StatementDraft] = []
        failures: list[Failure] = []
        for line in chunk.text.splitlines():
            triple = parse_triple_line(line)
            if triple is None:
                failures.append(_chunk_failure(chunk, "invalid_triple", f"not a triple line: {line[:200]!r}"))
                continue
            drafts.append(StatementDraft(entity=triple.subject, statement=verbalize(triple), time=triple.time))
        candidates, rejected = _checked_drafts(drafts, ChunkContext(chunk, cfg.aliases))
        return [_record(chunk, valid, ctx, "triple") for _, valid in candidates], failures + rejected


def _chunk_failure(chunk: MemoryChunk, kind: str, message: str, raw: str | None = None) -> Failure:
    return Failure(input_ids=[chunk.chunk_id], error_kind=kind, message=message, raw_output=raw)


def _checked_drafts(
    drafts: Sequence[StatementDraft], vctx: ChunkContext
) -> tuple[list[tuple[StatementDraft, ValidStatement]], list[Failure]]:
    """The drafts that pass the checks needing no model (once each), and a Failure for every other."""
    kept: list[tuple[StatementDraft, ValidStatement]] = []
    failures: list[Failure] = []
    seen: set[tuple[str, str]] = set()
    for draft in drafts:
        result = validate_statement(draft, vctx)
        raw = draft.model_dump_json()
        if isinstance(result, Rejection):
            failures.append(_chunk_failure(vctx.chunk, result.error_kind, result.message, raw))
            continue
        dedup_key = (result.entity, result.statement.casefold())
        if dedup_key in seen:
            failures.append(
                _chunk_failure(vctx.chunk, "duplicate_statement", f"repeated statement about {result.entity!r}", raw)
            )
            continue
        seen.add(dedup_key)
        kept.append((draft, result))
    return kept, failures


def _record(chunk: MemoryChunk, valid: ValidStatement, ctx: StageContext, verified_by: str | None) -> MemoryRecord:
    return MemoryRecord(
        id=record_id(
            "memory",
            [chunk.doc_id],
            {"prompt": STAGE.prompt_fingerprint, "chunk": chunk.index},
            {"entity": valid.entity, "statement": valid.statement, "time": valid.time},
        ),
        run_id=ctx.run_id,
        parent_ids=[chunk.doc_id],
        model=ctx.llm.model_name if verified_by != "triple" else None,
        entity=valid.entity,
        statement=valid.statement,
        doc_id=chunk.doc_id,
        source_url=chunk.url,
        time=valid.time,
        verified_by=verified_by,
    )


# ---------------------------------------------------------------------------
# The support check (verified memory)
# ---------------------------------------------------------------------------


def support_source(chunk: MemoryChunk) -> str:
    """What the judge checks statements against: the chunk with its title and date."""
    header = "\n".join(x for x in (chunk.title, chunk.date) if x)
    return f"{header}\n{chunk.text}" if header else chunk.text


async def check_support(
    chunk: MemoryChunk, statements: Sequence[str], cfg: MemoryConfig, ctx: StageContext
) -> list[SupportVerdict | LLMError | None]:
    """The judge's verdict for each statement (None: it gave none; an LLMError: the call failed)."""
    size = cfg.support_batch_size
    batches = [list(statements[i : i + size]) for i in range(0, len(statements), size)]

    async def one(batch: list[str]) -> list[SupportVerdict | LLMError | None]:
        try:
            reply = await ctx.judge_llm.complete(
                support_messages(support_source(chunk), batch),
                schema=SupportVerdicts,
                stage="memory",
                max_tokens=cfg.judge_max_tokens,
            )
        except LLMTruncated as err:
            # Cut by the token cap: the verdicts written before the cut still count; the
            # statements after it stay unverified.
            reply = SupportVerdicts.salvage(err.raw_output)
            if not reply.verdicts:
                return [err] * len(batch)
        except LLMError as err:
            return [err] * len(batch)
        by_number = reply.by_number(len(batch))
        return [by_number.get(i) for i in range(1, len(batch) + 1)]

    results = await asyncio.gather(*(one(b) for b in batches))
    return [v for batch in results for v in batch]


def _support_rejection(verdict: SupportVerdict | LLMError | None) -> Rejection | None:
    """Why a statement fails the support check, or None when the judge found it supported."""
    if isinstance(verdict, LLMError):
        return Rejection("unverified_statement", f"the support check failed ({verdict.kind}): {verdict}")
    if verdict is None:
        return Rejection("unverified_statement", "the judge gave no verdict for this statement")
    why = f": {verdict.reason}" if verdict.reason else ""
    if verdict.verdict == "unsupported":
        return Rejection("unsupported_statement", f"the judge found it not supported by its source chunk{why}")
    if verdict.verdict == "incomplete":
        return Rejection("incomplete_statement", f"the judge found it not a self-contained claim{why}")
    return None


STAGE = MemoryStage()
