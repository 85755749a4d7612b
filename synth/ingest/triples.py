"""Knowledge-graph triples (JSONL ``subject, relation, object, time, source``) as an input kind.

The paper's open-world memory is fed by documents, crawled data *and knowledge graphs*. A
triple is already a verified fact with a subject, so it needs no extraction model: the
documents stage groups triples by ``source`` into one ``knowledge_graph`` document each
(searchable by the rollout agent like any page, with lineage), one triple per line written
as ``subject | relation | object | time``; the memory stage turns each line back into a
statement anchored on the subject (``verbalize``) without an LLM call.

Lines are bounded like every JSONL input (``synth.ingest.limits``); a line that is not a
triple is a ledger row naming the file and line, and the other lines still count.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from synth.ingest.inline import InlineDocument
from synth.ingest.limits import MAX_LINE_BYTES, InputLimitError, iter_lines, loads_bounded, too_large
from synth.records import Failure
from synth.statement_checks import is_verb_form

FIELD_SEPARATOR = " | "
KG_URL_PREFIX = "kg:"
_AUX = frozenset({"is", "are", "was", "were", "has", "have", "had"})
# Triples per document: a source with more (a whole KG dump under one source) is split, so
# that a document stays a readable page and memory's chunks stay whole lines.
MAX_TRIPLES_PER_DOCUMENT = 200


class Triple(BaseModel):
    """One knowledge-graph fact. Unknown keys are ignored (KG dumps carry ids, scores, ...)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    subject: str = Field(min_length=1)
    relation: str = Field(min_length=1)
    object: str = Field(min_length=1)
    time: str | None = None
    source: str | None = None

    @field_validator("subject", "relation", "object", "time", "source", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = str(v)
        if isinstance(v, str):
            # The field separator must not occur inside a field; underscores are snake_case relations.
            v = " ".join(v.replace("|", "/").split())
            return v or None
        return v


def triple_line(t: Triple) -> str:
    """A triple as one line of a knowledge_graph document."""
    relation = t.relation.replace("_", " ")
    return FIELD_SEPARATOR.join((t.subject, relation, t.object, t.time or ""))


def parse_triple_line(line: str) -> Triple | None:
    """The triple a document line holds (None for a line that is not one)."""
    # Fields hold no "|" (``Triple`` replaces it), and chunking strips the trailing space of
    # an empty time field, so split on the bar alone.
    parts = [p.strip() for p in line.split("|")]
    if len(parts) != 4:
        return None
    try:
        return Triple(subject=parts[0], relation=parts[1], object=parts[2], time=parts[3] or None)
    except ValidationError:
        return None


_PASSIVE_RE = re.compile(r"^[a-z]+(?:ed|en|wn|lt|nt)\s+(?:by|in|on|at|as|for|from|to|into|with)\b")


def verbalize(t: Triple) -> str:
    """A triple as a self-contained sentence:

    "Apple | founded by | Steve Jobs | 1976" -> "Apple was founded by Steve Jobs (1976)."
    "Apple | headquartered in | Cupertino" -> "Apple is headquartered in Cupertino." (passive)
    "Riverton | population | 38,200" -> "The population of Riverton is 38,200."
    "Riverton | hosts | Lanternfall" -> "Riverton hosts Lanternfall."
    """
    relation = t.relation.replace("_", " ").strip()
    low = relation.lower()
    if _PASSIVE_RE.match(low):
        # Dated facts happened then ("was founded by"); undated ones hold ("is headquartered in").
        sentence = f"{t.subject} {'was' if t.time else 'is'} {relation} {t.object}"
    elif low.split()[0] in _AUX or is_verb_form(low.split()[0]):
        sentence = f"{t.subject} {relation} {t.object}"
    else:
        sentence = f"The {relation} of {t.subject} is {t.object}"
    if t.time and t.time not in sentence:
        sentence += f" ({t.time})"
    return sentence.rstrip(".") + "."


def read_triples(path: Path, ref: str) -> Iterator[tuple[int, Triple] | Failure]:
    """(line number, triple) for each line of a triples file; a Failure for each bad line."""
    try:
        with path.open("rb") as fh:
            for line in iter_lines(fh, MAX_LINE_BYTES):
                if line.blank:
                    continue
                where = f"{ref}#{line.number - 1}"
                try:
                    if line.data is None:
                        raise InputLimitError("too_large", str(too_large("the line", line.length, MAX_LINE_BYTES)))
                    data = loads_bounded(line.data)
                    if not isinstance(data, dict):
                        raise InputLimitError("invalid_input", "a line must be a JSON object")
                    yield line.number, Triple.model_validate(data)
                except InputLimitError as err:
                    yield Failure(input_ids=[where], error_kind=err.kind, message=f"{path}:{line.number}: {err}")
                except ValidationError as err:
                    first = err.errors()[0]
                    field = ".".join(str(x) for x in first["loc"]) or "line"
                    yield Failure(
                        input_ids=[where],
                        error_kind="invalid_input",
                        message=f"{path}:{line.number}: {field}: {first['msg']} (a triple needs subject, relation, object)",
                    )
    except OSError as err:
        yield Failure(input_ids=[ref], error_kind="unreadable_input", message=f"{path}: {err.strerror or err}")


def triple_documents(files: Sequence[tuple[Path, str]]) -> tuple[list[InlineDocument], list[Failure]]:
    """Triples of ``(path, ref)`` files grouped by source, in order of first appearance.

    A triple without a source is grouped under its subject (``kg:<subject>``).
    """
    groups: dict[str, list[tuple[str, Triple]]] = {}
    failures: list[Failure] = []
    for path, ref in files:
        for entry in read_triples(path, ref):
            if isinstance(entry, Failure):
                failures.append(entry)
                continue
            number, triple = entry
            source = triple.source or f"{KG_URL_PREFIX}{triple.subject}"
            groups.setdefault(source, []).append((f"{ref}#{number - 1}", triple))
    documents: list[InlineDocument] = []
    for source, members in groups.items():
        for part, start in enumerate(range(0, len(members), MAX_TRIPLES_PER_DOCUMENT)):
            chunk = members[start : start + MAX_TRIPLES_PER_DOCUMENT]
            subjects = list(dict.fromkeys(t.subject for _, t in chunk))
            times = sorted({t.time for _, t in chunk if t.time})
            documents.append(
                InlineDocument(
                    ref=f"{chunk[0][0]}+{len(chunk)}" + (f"/p{part}" if part else ""),
                    url=source,
                    title=", ".join(subjects[:3]) + (" and others" if len(subjects) > 3 else ""),
                    date=times[-1] if times else None,
                    text="\n".join(triple_line(t) for _, t in chunk),
                    source_type="knowledge_graph",
                )
            )
    return documents, failures
