"""Shape checks of a memory statement that need no model: does it say something, about someone?

Two failure shapes seen in the quickstart memory that fluent-text checks let through:

* **no predicate** — "Amara Okafor (2024-09-15)" (a byline) or "The Kestrel Bay Bridge" (a
  title): names and dates but no claim. ``has_predicate`` looks for a finite verb: an
  auxiliary, a common verb form, a past-tense ``-ed`` word, or a lower-case ``-s`` word right
  after a name ("Riverton hosts ..."). It errs towards accepting: the support judge sees
  every statement that passes and flags fragments as ``incomplete``.
* **generic anchor** — when the model's entity is unusable, memory anchors a statement on
  its opening capitalized words, which for "Overnight stays rose ..." or "Hotels reported
  ..." is a common word capitalized only because it starts the sentence. ``is_generic_name``
  asks the source text: a name is a proper name when it appears capitalized in mid-sentence
  (or carries a digit or an inner capital, "A320", "iPhone") and is never written in lower
  case there.
"""

from __future__ import annotations

import re

from synth.entities import NOT_ENTITIES

_AUXILIARIES = frozenset(
    "is are was were be been being am has have had do does did will would can could may might must shall should "
    "isn't aren't wasn't weren't hasn't haven't hadn't won't can't".split()
)
# Base forms of verbs common in encyclopedic and news statements; their -s, -es, -ed and
# irregular past forms count too (see _VERB_FORMS).
_BASE_VERBS = frozenset(
    """accept add affect allow announce appear apply approve arrive attract become begin believe belong border
    bring build buy call carry cause change charge claim close come compete complete connect contain continue
    control cost count cover create cross cut decide decline decrease describe design develop die double draw
    drive drop earn employ end enter equal estimate expand expect explain face fall feature finish flow fly
    follow form found fund gain get give go grow handle happen have hold host house include increase introduce
    invest join keep know launch lead leave let lie link live locate lose make manage mark mean measure meet
    move name need note occur offer open operate order organise organize own pass pay perform plan play
    point predict prepare present produce promise provide publish raise rank reach read receive record reduce
    remain replace report represent require reach return rise run say see seek sell send serve set show
    shrink sign sit span spend stand start state stay stop stretch study supply support surpass take tell
    total train travel triple turn use vote warn welcome win work write""".split()
)
_IRREGULAR_FORMS = frozenset(
    """arose became began bore brought built bought came chose cost cut did drew drove fell flew forbade forgot
    found gave got went grew had held hid hit kept knew laid led left lent let lay lost made meant met paid put
    quit ran rang rose said saw sought sold sent set shook shone shot showed shrank shut sang sank sat slept slid
    spoke spent spun split spread stood stole struck swept swore swam swung taught took tore told thought threw
    understood woke wore won wrote born borne chosen done drawn driven fallen flown forgotten given gone grown
    hidden known laid lain ridden risen seen shaken shown shrunk spoken stolen sworn taken thrown worn written""".split()
)


def _forms(base: str) -> set[str]:
    stem = base[:-1] if base.endswith("e") else base
    forms = {base, base + "s", base + "es", stem + "ed"}
    if base.endswith("y") and len(base) > 2 and base[-2] not in "aeiou":
        forms |= {base[:-1] + "ies", base[:-1] + "ied"}
    return forms


_VERB_FORMS = frozenset(f for b in _BASE_VERBS for f in _forms(b)) | _IRREGULAR_FORMS | _AUXILIARIES
_TOKEN_RE = re.compile(r"[A-Za-z][A-Za-z'’-]*|\d[\d,.]*")
# A past tense or participle not in the lists ("relocated", "digitised"): -ed, not -eed.
_ED_RE = re.compile(r"^[a-z]{2,}[^e]ed$")


def is_verb_form(word: str) -> bool:
    """Whether a lower-case word is a verb form this module knows (or a regular past tense)."""
    return word in _VERB_FORMS or bool(_ED_RE.match(word))


def has_predicate(statement: str) -> bool:
    """Whether a statement has a finite verb (so it claims something), by the rules above."""
    tokens = _TOKEN_RE.findall(statement)
    for i, tok in enumerate(tokens):
        low = tok.lower().replace("’", "'")
        if low in _VERB_FORMS and (tok.islower() or i == 0 or low in _AUXILIARIES):
            return True
        if not tok.islower():
            continue
        if _ED_RE.match(low):
            return True
        # "Riverton hosts ...": a lower-case -s word right after a capitalized name.
        if low.endswith("s") and not low.endswith(("ss", "us", "is")) and i > 0 and tokens[i - 1][:1].isupper():
            return True
    return False


_SENTENCE_START_RE = re.compile(r"(?:^|[.!?:;\n\"“(•\-–—]\s*|\n\s*)$")


def _occurrences(word: str, text: str) -> list[int]:
    return [m.start() for m in re.finditer(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text)]


def _capitalized_mid_sentence(word: str, text: str) -> bool:
    return any(not _SENTENCE_START_RE.search(text[max(0, i - 3) : i]) for i in _occurrences(word, text))


def _looks_like_name(word: str) -> bool:
    """A word that is a name by its form alone: letters mixed with digits ("A320", "Helio-3"),
    or a capital after the first letter ("iPhone", "McAllister"). A bare number is not."""
    has_digit = any(c.isdigit() for c in word)
    has_alpha = any(c.isalpha() for c in word)
    return (has_digit and has_alpha) or any(c.isupper() for c in word[1:])


def is_generic_name(name: str, text: str) -> bool:
    """Whether ``name`` is a common word rather than a proper name, judged by how ``text``
    writes it: all of its words generic (``NOT_ENTITIES``) or bare numbers, or every one of its
    words written in lower case somewhere in the text, or none capitalized except at a
    sentence start ("Construction began ...", "Kenyan runner ...", "About 62 percent ...")."""
    words = [w for w in re.findall(r"[\w&'’.-]+", name) if w.strip(".-")]
    content = [w for w in words if w.lower().strip(".") not in _NOT_NAMES and not _is_number(w)]
    if not content:
        return True
    if any(_looks_like_name(w) for w in content):
        return False
    if any(_capitalized_mid_sentence(w[:1].upper() + w[1:], text) for w in content if w[:1].isalpha()):
        # Capitalized mid-sentence somewhere: a name, unless the same words are also plain text.
        return all(_occurrences(w.lower(), text) for w in content)
    return True


# Capitalized everywhere, yet no anchor: months and weekdays ("During the June 2013 ...").
_CALENDAR = frozenset(
    "january february march april may june july august september october november december "
    "monday tuesday wednesday thursday friday saturday sunday".split()
)
_NOT_NAMES = NOT_ENTITIES | _CALENDAR


def _is_number(word: str) -> bool:
    return bool(re.fullmatch(r"[\d.,]+", word))
