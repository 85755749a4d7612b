"""Input readers: which items an input file holds, and the raw page behind one item.

``SourceReader.enumerate`` is cheap (the barrier stage's ``prepare`` calls it over every
input): it yields one ``SourceItem`` per HTML file, per WARC response record (with its
byte offset) or per JSONL line (with its byte offset), plus a ``Failure`` for each input
it can already tell is unusable (an unreadable file, a corrupt WARC, a bad JSONL line).
``SourceReader.load`` re-opens the file at the item's offset in the worker, so items stay
a few hundred bytes whatever the page size.

Every reader applies ``synth.ingest.limits``: a page over ``MAX_PAGE_BYTES`` (an HTML file, a
WARC record, a JSONL ``html``/``text``) or a JSONL line over ``MAX_LINE_BYTES`` is a
``too_large`` ledger row, never a silently truncated document; JSON nested too deep or with
a huge number is an ``invalid_input`` row naming the file and line.
"""

from __future__ import annotations

import gzip
import os
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from synth.ingest.limits import (
    MAX_LINE_BYTES,
    MAX_PAGE_BYTES,
    InputLimitError,
    iter_lines,
    loads_bounded,
    too_large,
)
from synth.inputs import is_remote, open_input
from synth.records import Failure

SourceFormat = Literal["html", "warc", "jsonl"]
SourceType = Literal["web", "warc", "jsonl", "tool_response", "trajectory_observation"]

HTML_CONTENT_TYPES = ("text/html", "application/xhtml+xml")


class InputError(Exception):
    """An input item that could not be read; ``kind`` goes into the failed ledger."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class SourceItem(BaseModel):
    """One document-to-be: where it lives, not what it says."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str = Field(description="file to open (as resolved from the spec's globs)")
    ref: str = Field(
        description="stable name for ids and the failed ledger: relative path, '#n' for record n"
    )
    format: SourceFormat
    index: int = Field(0, ge=0, description="record or line number within the file (0-based)")
    offset: int = Field(0, ge=0, description="byte offset of the WARC record or JSONL line")
    url: str | None = Field(None, description="URL known before extraction (WARC target, JSONL url)")


@dataclass(frozen=True)
class RawPage:
    """What ``load`` returns: HTML to extract, or text given directly (JSONL ``text``)."""

    url: str | None
    source_type: SourceType
    html: bytes | str | None = None
    text: str | None = None
    title: str | None = None
    date: str | None = None


class JsonlPage(BaseModel):
    """One JSONL input line. Unknown keys are ignored: crawl dumps carry many we don't use."""

    model_config = ConfigDict(extra="ignore")
    url: str = Field(min_length=1, description="page URL (or a tool/trajectory locator)")
    html: str | None = Field(None, description="raw HTML, extracted with trafilatura")
    text: str | None = Field(None, description="plain text, used as is (tool responses, observations)")
    title: str | None = None
    date: str | None = None
    source_type: SourceType = "jsonl"

    @model_validator(mode="after")
    def _html_or_text(self) -> JsonlPage:
        if not (self.html or "").strip() and not (self.text or "").strip():
            raise ValueError("a line needs a non-empty 'html' or 'text'")
        return self


class SourceReader(ABC):
    """One input format: enumerate its items cheaply, load one item's raw page."""

    format: ClassVar[SourceFormat]
    suffixes: ClassVar[tuple[str, ...]]

    def handles(self, path: Path) -> bool:
        return path.name.lower().endswith(self.suffixes)

    @abstractmethod
    def enumerate(self, path: Path, ref: str) -> Iterator[SourceItem | Failure]:
        """Items of one file, in file order, and Failures for parts that can't be used."""

    @abstractmethod
    def load(self, item: SourceItem) -> RawPage:
        """The raw page of one item; raises InputError when it can't be read."""


def _unreadable(path: Path, ref: str, err: Exception | str) -> Failure:
    return Failure(input_ids=[ref], error_kind="unreadable_input", message=f"{path}: {err}")


def _check_readable(path: Path) -> str | None:
    """Why a file can't be used, checked without reading it; None when it looks fine."""
    try:
        size = path.stat().st_size
    except OSError as err:  # fsspec raises OSError subclasses too (FileNotFoundError, PermissionError)
        return f"cannot stat: {err.strerror or err}"
    if size == 0:
        return "empty file"
    if not is_remote(path) and not os.access(path, os.R_OK):
        return "permission denied"
    return None


class HtmlFileReader(SourceReader):
    """A single HTML page per file; its URL comes from the page's canonical link."""

    format = "html"
    suffixes = (".html", ".htm", ".xhtml")

    def enumerate(self, path: Path, ref: str) -> Iterator[SourceItem | Failure]:
        problem = _check_readable(path)
        if problem:
            yield _unreadable(path, ref, problem)
            return
        size = path.stat().st_size
        if size > MAX_PAGE_BYTES:
            err = too_large("the page", size, MAX_PAGE_BYTES)
            yield Failure(input_ids=[ref], error_kind=err.kind, message=f"{path}: {err}")
            return
        yield SourceItem(path=str(path), ref=ref, format="html")

    def load(self, item: SourceItem) -> RawPage:
        try:
            with open_input(item.path) as fh:
                data = fh.read(MAX_PAGE_BYTES + 1)
        except OSError as err:
            raise InputError("unreadable_input", f"{item.path}: {err.strerror or err}") from None
        if len(data) > MAX_PAGE_BYTES:  # grew since enumerate
            raise InputError("too_large", f"{item.path}: {too_large('the page', len(data), MAX_PAGE_BYTES)}")
        return RawPage(url=None, source_type="web", html=data)


class CorruptWarcError(Exception):
    """A WARC file that stops being valid at some record."""


def _starts_like_warc(path: Path) -> bool:
    """Whether a file (gzipped or not) begins with a WARC version line. warcio itself reads
    garbage as ARC records without complaint, so this is checked first."""
    with open_input(path) as fh:
        head = fh.read(2)
        fh.seek(0)
        if head == b"\x1f\x8b":
            with gzip.open(fh) as gz:
                return gz.read(5) == b"WARC/"
        return fh.read(5) == b"WARC/"


def _consume_checked(record) -> None:  # noqa: ANN001 - warcio ArcWarcRecord
    """Read a record's block to its end; a block shorter than its Content-Length is truncation
    (warcio returns what there is without complaint)."""
    stream = record.raw_stream
    while stream.read(1 << 16):
        pass
    if getattr(stream, "limit", 0) > 0:
        raise CorruptWarcError(f"record truncated ({stream.limit} of {record.length} bytes missing)")


class WarcReader(SourceReader):
    """WARC and WARC.gz: one item per HTML ``response`` record, addressed by byte offset."""

    format = "warc"
    suffixes = (".warc", ".warc.gz")

    def enumerate(self, path: Path, ref: str) -> Iterator[SourceItem | Failure]:
        from warcio.archiveiterator import ArchiveIterator  # warcio imports fsspec: load it on use
        from warcio.exceptions import ArchiveLoadFailed

        problem = _check_readable(path)
        if problem:
            yield _unreadable(path, ref, problem)
            return
        index = 0
        try:
            if not _starts_like_warc(path):
                raise CorruptWarcError("does not start with a WARC record")
            with open_input(path) as fh:
                records = ArchiveIterator(fh)
                for record in records:
                    if record.format != "warc" or record.rec_type is None:
                        raise CorruptWarcError("unparseable record header")
                    offset = records.get_record_offset()
                    is_response = record.rec_type == "response"
                    # Request/warcinfo/metadata records describe a crawl, not a page: checked, not listed.
                    url = record.rec_headers.get_header("WARC-Target-URI")
                    skip = _skip_reason(record) if is_response else None
                    if is_response and skip is None and (record.length or 0) > MAX_PAGE_BYTES:
                        skip = "too_large", str(too_large("the record", record.length, MAX_PAGE_BYTES))
                    _consume_checked(record)
                    if not is_response:
                        continue
                    rec_ref = f"{ref}#{index}"
                    index += 1
                    if skip:
                        kind, why = skip
                        yield Failure(
                            input_ids=[rec_ref],
                            error_kind=kind,
                            message=f"{path} record at byte {offset} ({url}): {why}",
                        )
                        continue
                    yield SourceItem(
                        path=str(path), ref=rec_ref, format="warc", index=index - 1, offset=offset, url=url
                    )
        except (CorruptWarcError, ArchiveLoadFailed, OSError, EOFError, zlib.error, ValueError) as err:
            # A corrupt or truncated file: the records before the damage still run.
            where = f"after {index} response records" if index else "before any response record"
            yield _unreadable(path, f"{ref}#{index}", f"corrupt WARC {where}: {err}")

    def load(self, item: SourceItem) -> RawPage:
        from warcio.archiveiterator import ArchiveIterator
        from warcio.exceptions import ArchiveLoadFailed

        try:
            with open_input(item.path) as fh:
                fh.seek(item.offset)
                record = next(iter(ArchiveIterator(fh)), None)
                if record is None or record.rec_type != "response":
                    raise InputError(
                        "unreadable_input", f"{item.ref}: no response record at byte {item.offset}"
                    )
                if (record.length or 0) > MAX_PAGE_BYTES:
                    raise InputError(
                        "too_large", f"{item.ref}: {too_large('the record', record.length, MAX_PAGE_BYTES)}"
                    )
                payload = record.content_stream().read()
                _consume_checked(record)
        except (CorruptWarcError, ArchiveLoadFailed, OSError, EOFError, zlib.error, ValueError) as err:
            raise InputError("unreadable_input", f"{item.ref}: {err}") from None
        return RawPage(url=item.url, source_type="warc", html=payload)


def _skip_reason(record) -> tuple[str, str] | None:  # noqa: ANN001 - warcio ArcWarcRecord
    """Why a response record is not an HTML page we can use, or None."""
    headers = record.http_headers
    if headers is None:
        return "dropped_not_html", "response without HTTP headers"
    status = headers.get_statuscode()
    if status and not status.startswith("2"):
        return "dropped_http_status", f"HTTP status {status}"
    content_type = (headers.get_header("Content-Type") or "").lower()
    if content_type and not content_type.startswith(HTML_CONTENT_TYPES):
        return "dropped_not_html", f"content type {content_type}"
    return None


class JsonlReader(SourceReader):
    """JSONL with one page per line: ``url`` plus ``html`` or ``text`` (and optional metadata)."""

    format = "jsonl"
    suffixes = (".jsonl", ".ndjson")

    def enumerate(self, path: Path, ref: str) -> Iterator[SourceItem | Failure]:
        problem = _check_readable(path)
        if problem:
            yield _unreadable(path, ref, problem)
            return
        try:
            with open_input(path) as fh:
                for line in iter_lines(fh, MAX_LINE_BYTES):
                    if line.blank:
                        continue
                    lineno = line.number - 1
                    line_ref = f"{ref}#{lineno}"
                    try:
                        if line.data is None:
                            raise InputError(
                                "too_large", str(too_large("the line", line.length, MAX_LINE_BYTES))
                            )
                        page = _parse_jsonl_line(line.data)
                    except InputError as err:
                        yield Failure(
                            input_ids=[line_ref], error_kind=err.kind, message=f"{path}:{line.number}: {err}"
                        )
                        continue
                    yield SourceItem(
                        path=str(path),
                        ref=line_ref,
                        format="jsonl",
                        index=lineno,
                        offset=line.offset,
                        url=page.url,
                    )
        except OSError as err:
            yield _unreadable(path, ref, err.strerror or err)

    def load(self, item: SourceItem) -> RawPage:
        try:
            with open_input(item.path) as fh:
                fh.seek(item.offset)
                raw = fh.readline(MAX_LINE_BYTES + 1)
        except OSError as err:
            raise InputError("unreadable_input", f"{item.ref}: {err.strerror or err}") from None
        try:
            if len(raw) > MAX_LINE_BYTES:  # the file changed since enumerate
                raise InputError("too_large", str(too_large("the line", len(raw), MAX_LINE_BYTES)))
            page = _parse_jsonl_line(raw)
        except InputError as err:
            raise InputError(err.kind, f"{item.path}:{item.index + 1}: {err}") from None
        return RawPage(
            url=page.url,
            source_type=page.source_type,
            html=page.html if page.html and page.html.strip() else None,
            text=page.text,
            title=page.title,
            date=page.date,
        )


def _parse_jsonl_line(raw: bytes) -> JsonlPage:
    try:
        data = loads_bounded(raw)
    except InputLimitError as err:
        raise InputError(err.kind, str(err)) from None
    if not isinstance(data, dict):
        raise InputError("invalid_input", "a line must be a JSON object")
    try:
        page = JsonlPage.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "line"
        raise InputError("invalid_input", f"{field}: {first['msg']}") from None
    for name in ("html", "text"):
        size = len((getattr(page, name) or "").encode("utf-8", errors="replace"))
        if size > MAX_PAGE_BYTES:
            raise InputError("too_large", f"{name}: {too_large('the page', size, MAX_PAGE_BYTES)}")
    return page


READERS: tuple[SourceReader, ...] = (HtmlFileReader(), WarcReader(), JsonlReader())


def reader_for(path: Path | str) -> SourceReader | None:
    """The reader for a file name, by suffix; None for a format we don't read."""
    p = Path(str(path).rsplit("/", 1)[-1]) if is_remote(path) else Path(path)  # only the name matters
    return next((r for r in READERS if r.handles(p)), None)


def reader_for_format(fmt: SourceFormat) -> SourceReader:
    return next(r for r in READERS if r.format == fmt)


def source_ref(path: Path, base_dir: Path | None) -> str:
    """A file's name for ids and the ledger: relative to base_dir when under it, so ids don't
    depend on where the repository is checked out. A remote file is named by its URL."""
    if is_remote(path):
        return str(path)
    if base_dir is not None:
        try:
            return path.resolve().relative_to(base_dir.resolve()).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def enumerate_sources(paths: list[Path], base_dir: Path | None) -> tuple[list[SourceItem], list[Failure]]:
    """Items of all input files, in the given file order, and the Failures found on the way."""
    items: list[SourceItem] = []
    failures: list[Failure] = []
    for path in paths:
        ref = source_ref(path, base_dir)
        reader = reader_for(path)
        if reader is None:
            failures.append(
                Failure(
                    input_ids=[ref],
                    error_kind="unsupported_input",
                    message=f"{path}: not .html/.htm/.warc/.warc.gz/.jsonl",
                )
            )
            continue
        for entry in reader.enumerate(path, ref):
            (failures if isinstance(entry, Failure) else items).append(entry)
    return items, failures
