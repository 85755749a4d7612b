"""The offline `search` tool: BM25 (bm25s) over the passages of the run's own documents.

Passages rather than whole documents are indexed so that a hit comes with the paragraph
that matched as its snippet, the way a web search engine shows one; results are then
collapsed to one per url. The index is built once per run directory and process
(``get_search_index``): building it reads every document, and a rollout unit would
otherwise pay that for each of its questions.

For long-horizon research (``rollouts.profile: long``) the index also holds *distractors*,
made deterministically from the documents, so that finding and checking a fact takes real
work, as on the open web:

* a **near duplicate** of every document: a stale mirror on an archive host, with a few
  paragraphs missing and its numbers (years, counts) shifted — it matches the same queries
  and states the wrong figures, so an agent has to compare sources;
* a **same-entity page** for a document whose title names an entity that other documents
  mention: a tag page on the same site gathering those other documents' paragraphs about
  it — on topic, but without the document's own facts.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np

from synth.records import DocumentRecord, Record

_PASSAGE_CHARS = 800
_INDEX_CACHE_SIZE = 4


@dataclass(frozen=True)
class Page:
    """A document as the tools see it (``distractor``: None, near_duplicate or same_entity)."""

    url: str
    title: str
    date: str | None
    text: str
    distractor: str | None = None


@dataclass(frozen=True)
class SearchHit:
    url: str
    title: str
    date: str | None
    snippet: str
    score: float


def normalize_url(url: str) -> str:
    """Key for url lookups: no fragment, no trailing slash, case-insensitive scheme and host."""
    url = url.strip().split("#", 1)[0]
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/]+)(.*)$", url)
    if m:
        url = m.group(1).lower() + m.group(2)
    return url.rstrip("/")


def split_passages(text: str, max_chars: int = _PASSAGE_CHARS) -> list[str]:
    """Paragraph-aligned chunks of at most ``max_chars`` (a longer paragraph is cut at word boundaries)."""
    passages: list[str] = []
    current = ""
    for para in (p.strip() for p in re.split(r"\n\s*\n|\n", text)):
        if not para:
            continue
        pieces = [para]
        if len(para) > max_chars:
            pieces, piece = [], ""
            for word in para.split():
                if piece and len(piece) + 1 + len(word) > max_chars:
                    pieces.append(piece)
                    piece = ""
                piece = f"{piece} {word}" if piece else word
            if piece:
                pieces.append(piece)
        for piece in pieces:
            if current and len(current) + 1 + len(piece) > max_chars:
                passages.append(current)
                current = ""
            current = f"{current}\n{piece}" if current else piece
    if current:
        passages.append(current)
    return passages


def _tokenize(texts: list[str]) -> list[list[str]]:
    # Token strings, not ids: queries must be looked up in the index's vocabulary.
    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


class SearchIndex:
    """BM25 over passages of a set of pages, plus url → page lookup for `visit`."""

    def __init__(self, pages: Sequence[Page]) -> None:
        self.pages: dict[str, Page] = {}
        for page in pages:
            # First document wins for a url seen twice (documents are deduplicated upstream).
            self.pages.setdefault(normalize_url(page.url), page)
        self._passages: list[tuple[Page, str]] = [
            (page, passage) for page in self.pages.values() for passage in split_passages(page.text)
        ]
        self._retriever: bm25s.BM25 | None = None
        if self._passages:
            self._retriever = bm25s.BM25()
            self._retriever.index(_tokenize([p for _, p in self._passages]), show_progress=False)

    @classmethod
    def from_documents(cls, documents: Sequence[Record], distractors: bool = False) -> SearchIndex:
        pages = [
            Page(url=d.url, title=d.title or d.url, date=d.date, text=d.text)
            for d in documents
            if isinstance(d, DocumentRecord)
        ]
        return cls([*pages, *make_distractors(pages)] if distractors else pages)

    def page(self, url: str) -> Page | None:
        return self.pages.get(normalize_url(url))

    def search(self, query: str, top_k: int) -> list[SearchHit]:
        """The best passage of each of the ``top_k`` best-matching pages (only pages with a positive score)."""
        if self._retriever is None or not query.strip():
            return []
        tokens = _tokenize([query])
        if not tokens[0]:
            return []
        k = min(len(self._passages), top_k * 4)
        ids, scores = self._retriever.retrieve(tokens, k=k, show_progress=False)
        hits: list[SearchHit] = []
        seen: set[str] = set()
        for idx, score in zip(np.asarray(ids)[0], np.asarray(scores)[0], strict=True):
            if score <= 0:
                break  # sorted by score: the rest share no term with the query
            page, passage = self._passages[int(idx)]
            if page.url in seen:
                continue
            seen.add(page.url)
            hits.append(
                SearchHit(url=page.url, title=page.title, date=page.date, snippet=passage, score=float(score))
            )
            if len(hits) == top_k:
                break
        return hits


def format_search_results(query: str, hits: Sequence[SearchHit], snippet_chars: int = 300) -> str:
    """One query's results as the Tongyi/WebDancer search tool prints them (markdown list with urls)."""
    if not hits:
        return f"No results found for '{query}'. Try a shorter or more general query."
    lines = [f"A search for '{query}' found {len(hits)} results:", "", "## Web Results"]
    for i, hit in enumerate(hits, 1):
        snippet = " ".join(hit.snippet.split())
        if len(snippet) > snippet_chars:
            snippet = snippet[:snippet_chars].rsplit(" ", 1)[0] + " …"
        lines.append(f"{i}. [{hit.title}]({hit.url})")
        if hit.date:
            lines.append(f"Date published: {hit.date}")
        lines.extend([snippet, ""])
    return "\n".join(lines).rstrip()


def search_tool(index: SearchIndex, queries: Sequence[str], top_k: int) -> str:
    """The `search` tool: every query's results, separated the way the Tongyi agent separates them."""
    return "\n=======\n".join(format_search_results(q, index.search(q, top_k)) for q in queries)


# One index per run directory per process. The documents of a run are final before rollouts
# start (documents is a barrier upstream of rollouts), so the run directory is a sound key.
_INDEX_CACHE: OrderedDict[str, SearchIndex] = OrderedDict()
_INDEX_LOCK = threading.Lock()


def get_search_index(
    run_dir: Path, load_documents: Callable[[], Sequence[Record]], distractors: bool = False
) -> SearchIndex:
    """The cached index of ``run_dir`` (with or without distractors), built from ``load_documents()`` on first use."""
    key = f"{Path(run_dir).resolve()}#{'distractors' if distractors else 'documents'}"
    with _INDEX_LOCK:
        if key in _INDEX_CACHE:
            _INDEX_CACHE.move_to_end(key)
            return _INDEX_CACHE[key]
        index = SearchIndex.from_documents(load_documents(), distractors=distractors)
        _INDEX_CACHE[key] = index
        while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
            _INDEX_CACHE.popitem(last=False)
        return index


# ---------------------------------------------------------------------------
# Distractors (long-horizon profile)
# ---------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w])")
_TITLE_SITE_RE = re.compile(r"\s+[-|–—:]\s+[^-|–—:]+$")
_HOST_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/]+)")
# A mirror drops one paragraph in this many.
_MIRROR_DROP_EVERY = 5
_SAME_ENTITY_MAX_PARAGRAPHS = 6


def _digest(*parts: str) -> int:
    return int(hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:8], 16)


def _shift_number(match: re.Match[str], salt: str) -> str:
    whole, fraction = match.group(1), match.group(2) or ""
    value = int(whole.replace(",", ""))
    sign = 1 if _digest(salt, match.group(0), str(match.start())) % 2 else -1
    if 1500 <= value <= 2100 and "," not in whole and not fraction:
        shifted = value + sign * (1 + _digest(salt, whole) % 3)  # a year: off by one to three
    else:
        shifted = max(0, value + sign * max(1, round(value * 0.12)))
    text = f"{shifted:,}" if "," in whole else str(shifted)
    return text + fraction


def near_duplicate(page: Page) -> Page:
    """A stale mirror of ``page``: an archive url, a few paragraphs dropped, every number shifted."""
    paragraphs = [p for p in re.split(r"\n\s*\n|\n", page.text) if p.strip()]
    kept = [p for i, p in enumerate(paragraphs) if len(paragraphs) < 3 or (i + 1) % _MIRROR_DROP_EVERY]
    text = _NUMBER_RE.sub(lambda m: _shift_number(m, page.url), "\n\n".join(kept))
    url = "https://web.archive.org/web/2019/" + re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", page.url)
    return Page(url=url, title=page.title, date=page.date, text=text, distractor="near_duplicate")


def entity_of(title: str) -> str:
    """The entity a page title names: the title without a trailing site name ("X - Wikipedia")."""
    return _TITLE_SITE_RE.sub("", title).strip()


def same_entity_page(page: Page, others: Sequence[Page]) -> Page | None:
    """A tag page about ``page``'s entity made of other documents' paragraphs that mention it; None
    when no other document does."""
    entity = entity_of(page.title)
    if len(entity) < 4:
        return None
    needle = entity.casefold()
    found: list[str] = []
    for other in others:
        if other.url == page.url:
            continue
        found += [p.strip() for p in re.split(r"\n\s*\n|\n", other.text) if needle in p.casefold()]
        if len(found) >= _SAME_ENTITY_MAX_PARAGRAPHS:
            break
    if not found:
        return None
    host = _HOST_RE.match(page.url)
    slug = re.sub(r"[^a-z0-9]+", "-", needle).strip("-")
    url = f"{host.group(1) if host else 'https://example.org'}/tag/{slug}"
    return Page(
        url=url,
        title=f"{entity} - tagged articles",
        date=None,
        text="\n\n".join(found[:_SAME_ENTITY_MAX_PARAGRAPHS]),
        distractor="same_entity",
    )


def make_distractors(pages: Sequence[Page]) -> list[Page]:
    """A near duplicate of every page and a same-entity page where one can be made (deterministic)."""
    out = [near_duplicate(p) for p in pages]
    taken = {normalize_url(p.url) for p in pages} | {normalize_url(p.url) for p in out}
    for page in pages:
        tag = same_entity_page(page, pages)
        if tag is not None and normalize_url(tag.url) not in taken:
            taken.add(normalize_url(tag.url))
            out.append(tag)
    return out
