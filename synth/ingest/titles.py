"""A page's title from the page itself, never from its chrome.

Documentation sites built with static-site generators ship a hidden help dialog on every
page ("Keyboard shortcuts"), and trafilatura's title lookup (the only ``<h1>``, else any
heading whose class holds "title") took it: every page of such a site got the dialog's
title, which then became a memory anchor and leaked into questions.

Candidates, best first: the page's ``og:title``/meta title (set by its author for this
page), the first heading of its main content (the full headline, where ``<title>`` is often
cut short), and its ``<title>`` without the site-name part. Text inside chrome — hidden
elements (``hidden``, ``aria-hidden="true"``, ``display:none``), dialogs, navigation,
headers, footers, menus, templates — is never a candidate. Generic titles ("Home",
"Index", the site's name) are dropped.

Per site, a title that most pages share is boilerplate too ("Docs" on every page);
``choose_titles`` then takes each page's next candidate. That needs several pages at once:
the documents stage applies it within a unit, the memory stage across the whole run.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:  # lxml loads on first extraction, not with the spec (synth.ingest.extract)
    from lxml.html import HtmlElement

# Title strings that name a section or a template, not a page (seen on CMS templates).
GENERIC_TITLES = frozenset(
    {
        "home",
        "homepage",
        "home page",
        "index",
        "untitled",
        "untitled document",
        "welcome",
        "page",
        "article",
        "news",
        "blog",
        "post",
        "document",
        "default",
        "main page",
        "null",
        "none",
        "loading",
    }
)
# Elements whose text is page chrome, never content.
CHROME_TAGS = frozenset(
    {"nav", "header", "footer", "dialog", "aside", "menu", "template", "noscript", "script", "style", "form", "button"}
)
CHROME_ROLES = frozenset(
    {"dialog", "alertdialog", "navigation", "banner", "contentinfo", "menu", "menubar", "search", "tooltip", "complementary"}
)
_HIDDEN_STYLE_RE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
# Class/id words of overlays that generators show on demand (help, search, modals).
_OVERLAY_RE = re.compile(r"(?:^|[\s_-])(?:modal|dialog|popup|popover|overlay|sr-only|visually-hidden)(?:$|[\s_-])", re.I)
# "Page title | Site", "Page title - Site", "Page title :: Site"
_TITLE_SEPARATOR_RE = re.compile(r"\s+(?:\||-|–|—|::|·|»)\s+")
_WS_RE = re.compile(r"\s+")
# A title shared by more than this share of a site's pages (with at least MIN_SITE_PAGES
# pages seen) is the site's boilerplate.
SITE_BOILERPLATE_SHARE = 0.5
MIN_SITE_PAGES = 3


def squash(text: str | None) -> str:
    return _WS_RE.sub(" ", text or "").strip()


def is_boilerplate_title(title: str | None, sitename: str | None = None) -> bool:
    """True when a title says nothing about the page: empty, generic, or just the site's name."""
    t = squash(title).casefold()
    if len(t) < 3 or t in GENERIC_TITLES:
        return True
    return bool(sitename) and t == squash(sitename).casefold()


# A header or footer inside an article or main element is the article's (its <h1> is the
# page title); only the page-level ones are chrome.
_SECTION_TAGS = frozenset({"header", "footer"})


def _inside_content(node: HtmlElement) -> bool:
    parent = node.getparent()
    while parent is not None:
        if isinstance(parent.tag, str) and (
            parent.tag.lower() in ("article", "main") or parent.attrib.get("role", "").lower() == "main"
        ):
            return True
        parent = parent.getparent()
    return False


def is_chrome(element: HtmlElement) -> bool:
    """Whether an element or any ancestor is page chrome (hidden, a dialog, navigation, ...)."""
    node: HtmlElement | None = element
    while node is not None:
        tag = node.tag.lower() if isinstance(node.tag, str) else ""
        if tag in CHROME_TAGS and not (tag in _SECTION_TAGS and _inside_content(node)):
            return True
        attrs = node.attrib
        if "hidden" in attrs or attrs.get("aria-hidden", "").lower() == "true" or "aria-modal" in attrs:
            return True
        if attrs.get("role", "").lower() in CHROME_ROLES:
            return True
        if _HIDDEN_STYLE_RE.search(attrs.get("style", "")):
            return True
        if _OVERLAY_RE.search(f"{attrs.get('class', '')} {attrs.get('id', '')}"):
            return True
        node = node.getparent()
    return False


def _main_container(tree: HtmlElement) -> HtmlElement:
    for path in (".//main", ".//*[@role='main']", ".//article"):
        for el in tree.iterfind(path) if not path.startswith(".//*[") else tree.xpath(path):
            if not is_chrome(el):
                return el
    body = tree.find(".//body")
    return body if body is not None else tree


def main_heading(tree: HtmlElement) -> str | None:
    """The first ``<h1>`` (else ``<h2>``) of the main content that is not chrome."""
    container = _main_container(tree)
    for tag in ("h1", "h2"):
        for heading in container.iterfind(f".//{tag}"):
            text = squash(heading.text_content())
            if text and not is_chrome(heading):
                return text
    return None


def title_element_text(tree: HtmlElement, sitename: str | None) -> str | None:
    """``<title>`` without its site-name part: "Riverton | Visit Riverton" -> "Riverton"."""
    element = tree.find(".//head/title")
    if element is None:
        element = tree.find(".//title")
    raw = squash(element.text_content()) if element is not None else ""
    if not raw:
        return None
    parts = [p for p in _TITLE_SEPARATOR_RE.split(raw) if p.strip()]
    if len(parts) > 1 and sitename:
        parts = [p for p in parts if not is_boilerplate_title(p, sitename)]
        return max(parts, key=len) if parts else None
    # Without a known site name the first part is the page ("Installation - The Book").
    return parts[0] if parts else None


def title_candidates(tree: HtmlElement, meta_title: str | None, sitename: str | None) -> list[str]:
    """Title candidates of a page, best first, without repeats or generic ones."""
    found = [squash(meta_title), main_heading(tree), title_element_text(tree, sitename)]
    out: list[str] = []
    for title in found:
        if title and not is_boilerplate_title(title, sitename) and title.casefold() not in {o.casefold() for o in out}:
            out.append(title)
    return out


def site_of(url: str | None) -> str:
    """The site a URL belongs to (host without ``www.``; a local file's folder)."""
    if not url:
        return ""
    if url.startswith("file:"):
        return url.rsplit("/", 1)[0]
    host = urlsplit(url).netloc.lower()
    return host.removeprefix("www.")


def choose_titles(pages: Sequence[tuple[str | None, Sequence[str]]]) -> list[str | None]:
    """Each page's title: its first candidate that is not its site's boilerplate.

    ``pages`` are (url, candidates) pairs. A title is a site's boilerplate when more than
    ``SITE_BOILERPLATE_SHARE`` of the site's pages (at least ``MIN_SITE_PAGES``) have it
    among their candidates. A page whose candidates are all boilerplate gets None.
    """
    by_site: dict[str, list[int]] = defaultdict(list)
    for i, (url, _) in enumerate(pages):
        by_site[site_of(url)].append(i)
    boilerplate: dict[str, set[str]] = {}
    for site, members in by_site.items():
        if len(members) < MIN_SITE_PAGES:
            boilerplate[site] = set()
            continue
        counts = Counter(t for i in members for t in {c.casefold() for c in pages[i][1]})
        boilerplate[site] = {t for t, n in counts.items() if n > SITE_BOILERPLATE_SHARE * len(members)}
    chosen: list[str | None] = []
    for url, candidates in pages:
        shared = boilerplate[site_of(url)]
        chosen.append(next((c for c in candidates if c.casefold() not in shared), None))
    return chosen
