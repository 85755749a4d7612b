"""The offline `search` tool: BM25 (bm25s) over the passages of the run's own documents.

Passages rather than whole documents are indexed so that a hit comes with the paragraph
that matched as its snippet, the way a web search engine shows one; results are then
collapsed to one per url. The index is built once per run directory and process
(``get_search_index``): building it reads every document, and a rollout unit would
otherwise pay that for each of its questions.
"""

from __future__ import annotations

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
    """A document as the tools see it."""

    url: str
    title: str
    date: str | None
    text: str


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
    def from_documents(cls, documents: Sequence[Record]) -> SearchIndex:
        pages = [
            Page(url=d.url, title=d.title or d.url, date=d.date, text=d.text)
            for d in documents
            if isinstance(d, DocumentRecord)
        ]
        return cls(pages)

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


def get_search_index(run_dir: Path, load_documents: Callable[[], Sequence[Record]]) -> SearchIndex:
    """The cached index of ``run_dir``, built from ``load_documents()`` on first use."""
    key = str(Path(run_dir).resolve())
    with _INDEX_LOCK:
        if key in _INDEX_CACHE:
            _INDEX_CACHE.move_to_end(key)
            return _INDEX_CACHE[key]
        index = SearchIndex.from_documents(load_documents())
        _INDEX_CACHE[key] = index
        while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
            _INDEX_CACHE.popitem(last=False)
        return index
