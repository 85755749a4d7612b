"""The `documents` stage: web pages (HTML, WARC, JSONL) to clean documents with trafilatura.

A barrier stage with no upstream. ``prepare`` lists the inputs cheaply (one item per HTML
file, WARC response record or JSONL line; see ``synth.ingest.sources``); ``process``
extracts each item's main text and metadata, detects its language and applies the
per-document filters, each drop counted under its reason (``dropped_too_short``, ...).

Deduplication is not done here: units run in parallel and a duplicate may sit in another
unit, so the ``memory`` stage, which sees every document, drops duplicates before
chunking (``synth.stages.memory.MemoryStage.prepare``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from synth.dedup import normalize_text
from synth.ids import record_id
from synth.ingest.sources import InputError, SourceItem, enumerate_sources, reader_for_format
from synth.inputs import resolve_globs
from synth.records import DocumentRecord, Failure
from synth.stage import Prepared, Stage, StageContext, StageOutput


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


def _drop(item: SourceItem, kind: str, message: str) -> Failure:
    return Failure(input_ids=[item.ref], error_kind=kind, message=f"{item.ref}: {message}")


@dataclass(frozen=True)
class PageDraft:
    """An item's extracted page that passed the size filters, before language id."""

    item: SourceItem
    text: str
    title: str | None
    date: str | None
    url: str | None
    source_type: str


def extract_item(item: SourceItem, cfg: DocumentsConfig) -> PageDraft | Failure:
    """Load and extract one item and apply the text filters (everything but language)."""
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
        if not has_prose(text):
            return _drop(
                item, "dropped_no_main_text", "no main text found (only navigation, boilerplate or markup)"
            )
    else:
        text, title, date, url = clean_plain_text(raw.text or ""), raw.title, raw.date, raw.url

    if not text:
        return _drop(
            item, "dropped_no_main_text", "no main text found (only navigation, boilerplate or markup)"
        )
    n_chars = len(text)
    if n_chars < cfg.min_chars:
        return _drop(item, "dropped_too_short", f"{n_chars} chars of main text < min_chars {cfg.min_chars}")
    if n_chars > cfg.max_chars:
        return _drop(item, "dropped_too_long", f"{n_chars} chars of main text > max_chars {cfg.max_chars}")
    return PageDraft(item=item, text=text, title=title, date=date, url=url, source_type=raw.source_type)


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
    )


def ingest_items(
    items: Sequence[SourceItem], cfg: DocumentsConfig, run_id: str
) -> list[DocumentRecord | Failure]:
    """Items to records or Failures, in item order.

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
    return [r for r in results if not isinstance(r, PageDraft)]


def ingest_item(item: SourceItem, cfg: DocumentsConfig, run_id: str) -> DocumentRecord | Failure:
    """One input item to a DocumentRecord, or a Failure naming the item and the reason."""
    return ingest_items([item], cfg, run_id)[0]


class DocumentsStage(Stage[DocumentsConfig, SourceItem]):
    """Input files to DocumentRecords; every input ends as a record or a counted Failure."""

    config_type = DocumentsConfig
    record_type = DocumentRecord
    summary_fields = ('url', 'title', 'source_type', 'n_chars')
    name = "documents"
    upstream = ()
    barrier = True

    def prepare(self, ctx: StageContext) -> Prepared[SourceItem]:
        """One cheap item per page, in glob order; unreadable files and bad lines as Failures."""
        paths = resolve_globs(ctx.spec.inputs.web, "inputs.web", base_dir=ctx.base_dir)
        items, dropped = enumerate_sources(paths, ctx.base_dir)
        return Prepared(items=items, dropped=dropped)

    async def process(self, items: Sequence[SourceItem], ctx: StageContext) -> StageOutput:
        cfg = self.config(ctx.spec)
        # Items may arrive as plain dicts when a runner serializes them between processes.
        source_items = list(items)
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
