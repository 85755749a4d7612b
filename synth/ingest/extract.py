"""Main text, title, date and language of a page: trafilatura plus three small additions.

The title is not trafilatura's: its lookup takes a page's only ``<h1>`` or any heading
whose class says "title", hidden help dialogs included. ``synth.ingest.titles`` picks it
from the page's meta title, ``<title>`` and main heading, never from chrome.

Cost matters here (the documents stage is CPU-bound), so a page is parsed once: the lxml
tree from ``trafilatura.load_html`` feeds the metadata lookups, the title fallback and the
content extractor (which works on its own copy). Only the metadata the records keep is
computed (title, date, canonical URL, site name): trafilatura's full ``extract_metadata``
also looks for authors, categories, tags and licenses, which cost as much as the rest of
the metadata together on the quickstart pages (profiled: 0.9 of 1.6 ms per page).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import trafilatura
from htmldate import find_date  # a dependency of trafilatura
from lxml.etree import ParserError
from lxml.html import HtmlElement
from trafilatura.metadata import examine_meta, extract_meta_json, extract_url
from trafilatura.settings import Extractor, set_date_params

from synth.ingest.titles import title_candidates

LOGGER = logging.getLogger(__name__)

# py3langid walks its DFA over every byte in Python (~0.5 ms per KB here), so it sees three
# windows (start, middle, end) instead of the whole text: as reliable on prose, far cheaper,
# and a page that switches language halfway still shows both.
LANGID_WINDOW_CHARS = 160


@dataclass(frozen=True)
class ExtractedPage:
    """The parts of a page a DocumentRecord keeps. ``text`` is empty when there is no main text."""

    text: str
    title: str | None
    date: str | None
    url: str | None
    sitename: str | None
    title_candidates: tuple[str, ...] = ()


ExtractionFocus = Literal["precision", "balanced", "recall"]


@lru_cache(maxsize=8)
def _extractor(fast: bool, focus: ExtractionFocus) -> Extractor:
    # One Extractor per process: building one parses trafilatura's settings (~0.2 ms, once per
    # page if left to bare_extraction). trafilatura copies it where it changes a field.
    return Extractor(
        output_format="python",
        fast=fast,
        precision=focus == "precision",
        recall=focus == "recall",
        comments=False,
        tables=True,
        dedup=False,
    )


def _page_metadata(
    tree: HtmlElement, known_url: str | None
) -> tuple[str | None, str | None, str | None, str | None]:
    """(title, date, url, sitename) from meta tags, JSON-LD, the canonical link and htmldate."""
    meta = examine_meta(tree)
    try:
        meta = extract_meta_json(tree, meta)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
        # trafilatura guards this call the same way: JSON-LD in the wild is often malformed.
        LOGGER.debug("JSON-LD metadata skipped: %s", err)
    # Only the meta title here (og:title, twitter:title, ...): the rest of the candidates
    # are looked up by synth.ingest.titles, which skips chrome.
    title = meta.title
    # The URL a page was fetched from (WARC, JSONL) wins over what it declares about itself.
    url = known_url or meta.url or extract_url(tree)
    # extensive_search=False: meta tags, <time>, URL and structured data only; the
    # extensive text scan guesses dates from arbitrary numbers in the page.
    date = find_date(tree, **{**set_date_params(False), "url": url})
    sitename = (meta.sitename or "").lstrip("@") or None
    return title, date, url, sitename


def extract_html(
    html: bytes | str, url: str | None = None, *, fast: bool = False, focus: ExtractionFocus = "balanced"
) -> ExtractedPage | None:
    """Main text and metadata of an HTML page; None when it does not parse as HTML at all.

    ``fast`` skips trafilatura's second opinion (readability/jusText); ``focus`` is its
    precision/recall trade-off. See DocumentsConfig for the defaults the stage uses.
    """
    try:
        tree = trafilatura.load_html(html)
    except (ValueError, TypeError, ParserError) as err:
        LOGGER.debug("unparseable HTML: %s", err)
        return None
    if tree is None:
        return None
    meta_title, date, page_url, sitename = _page_metadata(tree, url)
    candidates = title_candidates(tree, meta_title, sitename)
    # bare_extraction works on a copy of the tree, so the metadata above saw the original.
    document = trafilatura.bare_extraction(tree, options=_extractor(fast, focus))
    text = (document.text or "").strip() if document is not None else ""
    return ExtractedPage(
        text=text,
        title=candidates[0] if candidates else None,
        date=date,
        url=page_url,
        sitename=sitename,
        title_candidates=tuple(candidates),
    )


@lru_cache(maxsize=1)
def _language_identifier():  # noqa: ANN202 - py3langid has no type hints
    # Loaded once per process, on first use (0.6-2 s): never at import time.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str) -> tuple[str | None, float]:
    """ISO 639-1 code and probability for a text (py3langid); (None, 0.0) for blank text."""
    w = LANGID_WINDOW_CHARS
    if len(text) <= 3 * w:
        sample = text
    else:
        mid = len(text) // 2 - w // 2
        sample = " ".join((text[:w], text[mid : mid + w], text[-w:]))
    if not sample.strip():
        return None, 0.0
    lang, prob = _language_identifier().classify(sample)
    return str(lang), float(prob)
