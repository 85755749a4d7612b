"""Entity names and small text facts shared by the stages that anchor knowledge on entities
(memory builds the anchors; questions checks that questions and answers use them).

Keys fold case, width, punctuation, leading articles and legal suffixes, so "The Northwind
Robotics, Inc." and "Northwind Robotics" anchor the same memory.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# ---------------------------------------------------------------------------

_LEGAL_SUFFIXES = frozenset(
    {
        "inc",
        "incorporated",
        "ltd",
        "limited",
        "llc",
        "plc",
        "corp",
        "corporation",
        "co",
        "gmbh",
        "ag",
        "sa",
        "nv",
        "bv",
        "ab",
        "oy",
        "spa",
        "srl",
        "pty",
        "lp",
        "llp",
    }
)
_LEADING_ARTICLES = frozenset({"the", "a", "an"})
_SMALL_WORDS = frozenset(
    {
        "of",
        "and",
        "the",
        "for",
        "in",
        "on",
        "at",
        "to",
        "de",
        "la",
        "le",
        "du",
        "da",
        "del",
        "van",
        "von",
        "y",
        "a",
        "an",
    }
)
# Words that are never an entity on their own (weak models often return "It" or "The").
NOT_ENTITIES = frozenset(
    """a an the this that these those it its it's he him his she her hers they them their theirs we us our
    you your i me my there here who which what when where why how about after before during in on at by for
    from with without of to and or but not no yes also other others another some many most more less few all
    each every both either neither one two three first second last new old company city year years people
    group team report statement article page text document source data number total""".split()
)
_PARENTHETICAL_RE = re.compile(r"\s*[(\[][^)\]]*[)\]]")
_POSSESSIVE_RE = re.compile(r"['’]s\b")
_PUNCT_RE = re.compile(r"[^\w&+\-.\s]|_")
_NON_DECIMAL_DOT_RE = re.compile(r"(?<!\d)\.|\.(?!\d)")


def entity_key(name: str) -> str:
    """Comparison key of an entity name: case, width, whitespace, punctuation, articles and
    legal suffixes folded away. ``"The Northwind Robotics, Inc."`` -> ``"northwind robotics"``."""
    s = unicodedata.normalize("NFKC", name)
    s = _PARENTHETICAL_RE.sub(" ", s)
    s = _POSSESSIVE_RE.sub("", s.casefold())
    s = _NON_DECIMAL_DOT_RE.sub(" ", _PUNCT_RE.sub(" ", s))  # keep "4.0", drop "St." and "Inc."
    words = [w.strip("-") for w in s.split()]
    words = [w for w in words if w]
    if len(words) > 1 and words[0] in _LEADING_ARTICLES:
        words = words[1:]
    while len(words) > 1 and words[-1] in _LEGAL_SUFFIXES:
        words = words[:-1]
    return " ".join(words)


def display_name(key: str) -> str:
    """The stored form of a key: title case, small words lower. A pure function of the key, so
    every unit writes the same name; acronyms come out capitalized ("Nasa"), a known cost."""
    words = key.split()
    return " ".join(
        w if (i and w in _SMALL_WORDS) or not w[:1].isalpha() else w[:1].upper() + w[1:]
        for i, w in enumerate(words)
    )


def canonical_entity(name: str, aliases: dict[str, str] | None = None) -> str:
    """Normalized display name of an entity, after alias resolution ("" when nothing is left)."""
    key = entity_key(name)
    if aliases and key in aliases:
        key = aliases[key]
    return display_name(key)


_ACRONYM_DEF_RE = re.compile(
    r"((?:[A-Z][\w&'-]*\s+)(?:(?:of|and|for|the|de|[A-Z][\w&'-]*)\s+)*[A-Z][\w&'-]*)\s*\(([A-Z][A-Z0-9&]{1,7})\)"
)


def text_aliases(text: str) -> dict[str, str]:
    """Acronyms a text defines, as alias keys: "Riverton Transit Authority (RTA)" -> {"rta": "riverton transit authority"}."""
    return {entity_key(acr): entity_key(full) for full, acr in _ACRONYM_DEF_RE.findall(text)}


_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")


def numbers_in(text: str) -> set[str]:
    """Numbers in a text, thousands separators removed: "2,41" and "2.41" are kept apart only by
    their digits' grouping, so both spellings of a number match each other."""
    return {re.sub(r"[.,]", "", m) for m in _NUMBER_RE.findall(text)}


@dataclass(frozen=True)
class Rejection:
    error_kind: str
    message: str
