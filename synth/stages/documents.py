"""The `documents` stage: web pages (HTML, WARC, JSONL), knowledge-graph triples and agents'
tool responses to clean documents.

A barrier stage with no upstream. ``prepare`` lists the inputs cheaply (one item per HTML
file, WARC response record or JSONL line; see ``synth.ingest.sources``), plus, already read,
one item per group of triples (``inputs.triples``, ``synth.ingest.triples``) and, with
``tool_responses`` set, one per tool response of imported trajectories and earlier runs'
rollouts (the data flywheel, ``synth.ingest.tool_responses``). ``process`` extracts each
page's main text and metadata (titles from the page, never its chrome:
``synth.ingest.titles``), detects its language and applies the per-document filters, each
drop counted under its reason (``dropped_too_short``, ...).

Deduplication is not done here: units run in parallel and a duplicate may sit in another
unit, so the ``memory`` stage, which sees every document, drops duplicates before
chunking (``synth.stages.memory.MemoryStage.prepare``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from synth.dedup import normalize_text
from synth.ids import record_id
from synth.ingest.inline import InlineDocument
from synth.ingest.sources import InputError, SourceItem, enumerate_sources, reader_for_format, source_ref
from synth.ingest.titles import choose_titles
from synth.ingest.tool_responses import ToolResponsesConfig, from_runs, from_trajectory_files
from synth.ingest.triples import triple_documents
from synth.inputs import resolve_globs
from synth.records import DocumentRecord, Failure
from synth.stage import INPUT_FILES, ItemOrigin, Prepared, Stage, StageContext, StageOutput


class DocumentsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_chars: PositiveInt = Field(200, description="documents with fewer extracted characters are dropped")
    max_chars: PositiveInt = Field(
        500_000, description="documents with more extracted characters are dropped"
    )
    languages: list[str] | None = Field(None, description="ISO 639-1 codes to keep; null keeps all")
    near_dup_threshold: float = Field(
        0.8, gt=0, le=1, description="MinHash Jaccard at or above which a document is a near duplicate"
    )
    fast_extraction: bool = Field(
        True,
        description="skip trafilatura's readability/jusText second opinion (about 25% less CPU per page; "
        "identical text on the quickstart pages); false for odd layouts where recall matters more",
    )
    extraction_focus: Literal["precision", "balanced", "recall"] = Field(
        "precision",
        description="trafilatura's trade-off; precision (as in FineWeb/datatrove) keeps less boilerplate, "
        "returns nothing for menu-only pages and costs ~14% less CPU than balanced",
    )
    tool_responses: ToolResponsesConfig | None = Field(
        None,
        description="the data flywheel: also ingest tool responses of inputs.trajectories and of earlier "
        "runs' rollouts as source_type tool_response documents; null = off",
    )


# A page whose extracted text has no line of this many words is a menu, not an article:
# trafilatura's baseline rescue returns the link texts of a page without main content.
MIN_PROSE_WORDS = 8

_BLANK_LINES_RE = re.compile(r"\n{3,}")
_TRAILING_WS_RE = re.compile(r"[ \t]+\n")


def clean_plain_text(text: str) -> str:
    """Plain-text input (tool responses, observations) with whitespace tidied, nothing removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _BLANK_LINES_RE.sub("\n\n", _TRAILING_WS_RE.sub("\n", text)).strip()


def has_prose(text: str) -> bool:
    """Whether a text has at least one sentence-like line (MIN_PROSE_WORDS words or more)."""
    return any(len(line.split()) >= MIN_PROSE_WORDS for line in text.splitlines())


DocumentItem = SourceItem | InlineDocument


def _drop(item: DocumentItem, kind: str, message: str) -> Failure:
    return Failure(input_ids=[item.ref], error_kind=kind, message=f"{item.ref}: {message}")


@dataclass(frozen=True)
class PageDraft:
    """An item's extracted page that passed the size filters, before language id."""

    item: DocumentItem
    text: str
    title: str | None
    date: str | None
    url: str | None
    source_type: str
    title_candidates: tuple[str, ...] = ()


def _size_filters(item: DocumentItem, text: str, cfg: DocumentsConfig, min_chars: int) -> Failure | None:
    if not text:
        return _drop(item, "dropped_no_main_text", "no main text found (only navigation, boilerplate or markup)")
    n_chars = len(text)
    if n_chars < min_chars:
        return _drop(item, "dropped_too_short", f"{n_chars} chars of main text < min_chars {min_chars}")
    if n_chars > cfg.max_chars:
        return _drop(item, "dropped_too_long", f"{n_chars} chars of main text > max_chars {cfg.max_chars}")
    return None


def inline_draft(item: InlineDocument, cfg: DocumentsConfig) -> PageDraft | Failure:
    """A tool response or a group of triples: text given, filtered like a page.

    Triples skip the size floor and the prose test: each line is a fact, however short.
    """
    if item.source_type == "knowledge_graph":
        text, min_chars = item.text.strip(), 1
    else:
        text, min_chars = clean_plain_text(item.text), cfg.min_chars
        if text and not has_prose(text):
            return _drop(item, "dropped_no_main_text", "no sentence-like line in the tool response")
    problem = _size_filters(item, text, cfg, min_chars)
    if problem is not None:
        return problem
    return PageDraft(
        item=item, text=text, title=item.title, date=item.date, url=item.url, source_type=item.source_type
    )


def extract_item(item: DocumentItem, cfg: DocumentsConfig) -> PageDraft | Failure:
    """Load and extract one item and apply the text filters (everything but language)."""
    if isinstance(item, InlineDocument):
        return inline_draft(item, cfg)
    # trafilatura and lxml take ~0.5 s to import: loaded on first use, not with synth.spec.
    from synth.ingest.extract import extract_html

    try:
        raw = reader_for_format(item.format).load(item)
    except InputError as err:
        return _drop(item, err.kind, str(err))

    if raw.html is not None:
        page = extract_html(raw.html, raw.url, fast=cfg.fast_extraction, focus=cfg.extraction_focus)
        if page is None:
            return _drop(item, "dropped_unparseable_html", "does not parse as HTML")
        text, title = page.text, raw.title or page.title
        date, url = raw.date or page.date, raw.url or page.url
        candidates = page.title_candidates
        if not has_prose(text):
            return _drop(
                item, "dropped_no_main_text", "no main text found (only navigation, boilerplate or markup)"
            )
    else:
        text, title, date, url = clean_plain_text(raw.text or ""), raw.title, raw.date, raw.url
        candidates = (title,) if title else ()

    problem = _size_filters(item, text, cfg, cfg.min_chars)
    if problem is not None:
        return problem
    return PageDraft(
        item=item,
        text=text,
        title=title,
        date=date,
        url=url,
        source_type=raw.source_type,
        title_candidates=tuple(candidates),
    )


def finish_document(
    draft: PageDraft, language: str | None, cfg: DocumentsConfig, run_id: str
) -> DocumentRecord | Failure:
    """The language filter, then the record with its deterministic id."""
    item = draft.item
    if cfg.languages is not None and language not in cfg.languages:
        return _drop(item, "dropped_language", f"language {language!r} not in {cfg.languages}")
    # A local HTML file without a canonical link gets a file: locator relative to the spec.
    url = draft.url or f"file:{item.ref.split('#', 1)[0]}"
    # The source ref is part of the id: the same page ingested twice (an HTML file and a
    # WARC record) must not give two records one id; the memory stage's dedup drops one.
    doc_id = record_id(
        "documents", [], {"source": item.ref}, {"url": url, "text": normalize_text(draft.text)}
    )
    return DocumentRecord(
        id=doc_id,
        run_id=run_id,
        url=url,
        title=draft.title,
        date=draft.date,
        text=draft.text,
        source_type=draft.source_type,
        n_chars=len(draft.text),
        language=language,
        title_candidates=list(draft.title_candidates),
    )


def apply_site_titles(records: list[DocumentRecord]) -> None:
    """Replace titles that most pages of a site share by each page's next candidate (in place)."""
    pages = [r for r in records if r.title_candidates]
    for record, title in zip(pages, choose_titles([(r.url, r.title_candidates) for r in pages]), strict=True):
        record.title = title


def ingest_items(
    items: Sequence[DocumentItem], cfg: DocumentsConfig, run_id: str
) -> list[DocumentRecord | Failure]:
    """Items to records or Failures, in item order; titles shared by most pages of a site
    within these items fall back to each page's next candidate.

    Language id runs as a second pass over the unit's texts rather than after each page:
    py3langid walks a 39 MB DFA table, which trafilatura's work evicts from the CPU cache;
    interleaved it cost 1.4 ms a page here, batched 0.35 ms.
    """
    from synth.ingest.extract import detect_language

    results: list[DocumentRecord | Failure | PageDraft] = [extract_item(item, cfg) for item in items]
    drafts = [(i, r) for i, r in enumerate(results) if isinstance(r, PageDraft)]
    languages = [detect_language(draft.text)[0] for _, draft in drafts]
    for (i, draft), language in zip(drafts, languages, strict=True):
        results[i] = finish_document(draft, language, cfg, run_id)
    out = [r for r in results if not isinstance(r, PageDraft)]
    apply_site_titles([r for r in out if isinstance(r, DocumentRecord)])
    return out


def ingest_item(item: DocumentItem, cfg: DocumentsConfig, run_id: str) -> DocumentRecord | Failure:
    """One input item to a DocumentRecord, or a Failure naming the item and the reason."""
    return ingest_items([item], cfg, run_id)[0]


def _as_item(item: DocumentItem | dict) -> DocumentItem:
    """An item as the stage made it (a runner may ship items between processes as dicts)."""
    if isinstance(item, dict):
        return InlineDocument.model_validate(item) if item.get("kind") == "inline" else SourceItem.model_validate(item)
    return item


class DocumentsStage(Stage[DocumentsConfig, DocumentItem]):
    """Input files to DocumentRecords; every input ends as a record or a counted Failure."""

    config_type = DocumentsConfig
    record_type = DocumentRecord
    summary_fields = ("url", "title", "source_type", "n_chars")
    name = "documents"
    upstream = ()
    barrier = True
    uses_llm = False  # a documents-only run starts and preflights no endpoint

    def item_origin(self, item: DocumentItem) -> ItemOrigin:
        # Web pages, triple groups and tool responses are sources of their own: --preview
        # samples each (the first pages alone would show nothing of the triples), and the
        # estimate counts each in full (inputs are listed whole in a preview too).
        kind = item.source_type if isinstance(item, InlineDocument) else "web"
        return ItemOrigin(f"{INPUT_FILES} ({kind})", follows=None)

    def prepare(self, ctx: StageContext) -> Prepared[DocumentItem]:
        """Items in a fixed order: web pages (glob order), triple groups, tool responses;
        unreadable files, bad lines and empty tool responses as Failures."""
        cfg = self.config(ctx.spec)
        inputs = ctx.spec.inputs
        paths = resolve_globs(inputs.web, "inputs.web", base_dir=ctx.base_dir)
        web, dropped = enumerate_sources(paths, ctx.base_dir)
        items: list[DocumentItem] = list(web)
        if inputs.triples:
            files = resolve_globs(inputs.triples, "inputs.triples", base_dir=ctx.base_dir)
            triples, bad = triple_documents([(p, source_ref(p, ctx.base_dir)) for p in files])
            items += triples
            dropped += bad
        flywheel = cfg.tool_responses
        if flywheel is not None:
            if flywheel.trajectories and inputs.trajectories:
                files = resolve_globs(inputs.trajectories, "inputs.trajectories", base_dir=ctx.base_dir)
                responses, bad = from_trajectory_files(files, ctx.base_dir, flywheel.tools)
                items += responses
                dropped += bad
            if flywheel.runs:
                output_dir = Path(ctx.spec.output_dir)
                if not output_dir.is_absolute() and ctx.base_dir is not None and not output_dir.exists():
                    output_dir = ctx.base_dir / output_dir
                responses, bad = from_runs(flywheel.runs, output_dir, flywheel.tools)
                items += responses
                dropped += bad
        return Prepared(items=items, dropped=dropped)

    async def process(self, items: Sequence[DocumentItem], ctx: StageContext) -> StageOutput:
        cfg = self.config(ctx.spec)
        source_items = [_as_item(item) for item in items]
        # CPU-bound (~2.5 ms a page): off the event loop, so a worker running LLM-bound units
        # of other stages concurrently keeps serving them.
        results = await asyncio.to_thread(ingest_items, source_items, cfg, ctx.run_id)
        out = StageOutput()
        for result in results:
            if isinstance(result, Failure):
                out.failures.append(result)
            else:
                out.records.append(result)
        return out


STAGE = DocumentsStage()
