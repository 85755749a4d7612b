"""A request cache on disk: a resumed run never pays twice for a request that was answered.

Answered requests are appended to segment files, one per work unit attempt, published
when the unit commits (``RequestCache``): the number of files grows with units, not
requests. The key hashes everything that determines the reply: the whole request body as
sent (model, messages, sampling fields, the completion cap under its dialect's name,
response schema, ``reasoning_effort``, ``extra_body``) and the extra headers; see
``request_key``.
Only replies that were usable (valid against the schema, for structured calls) are stored.

Like curator's cache, the key covers the response schema, so changing a stage's output
model invalidates its entries; it does not cover anything the request does not carry (the
endpoint's URL, for one: the same model behind another address answers the same).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Version of what request_key hashes (2: the whole body as sent, plus extra headers; 3: the
# same, canonicalised by orjson, whose floats below 1e-4 are written out in full).
KEY_VERSION = 3
_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


class CachedReply(BaseModel):
    """One cached answer."""

    model_config = ConfigDict(extra="forbid")
    content: str = Field(description="the reply text as the endpoint returned it")
    prompt_tokens: int = Field(0, description="prompt tokens of the original request")
    completion_tokens: int = Field(0, description="completion tokens of the original request")
    model: str = Field(description="model that answered")


def request_key(
    request: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
    *,
    draw: int = 0,
) -> str:
    """A sha256 hex key over a request body as sent and its extra headers (canonical JSON).

    ``draw`` tells apart repeated identical requests that sample (the k-th ask of the same
    request is a different answer); 0, the first, adds nothing to the key.
    """
    doc: dict[str, Any] = {"v": KEY_VERSION, "request": request, "headers": dict(headers or {})}
    if draw:
        doc["draw"] = draw
    # orjson, not json: this runs once per LLM request, and the stdlib encoder was ~5 % of a
    # worker's CPU at 300 requests/s (issue 19).
    return hashlib.sha256(orjson.dumps(doc, default=str, option=_CANONICAL)).hexdigest()


# Where an answered request is stored: a (stage, unit) scope, set by the worker around a
# unit (``cache_scope``); requests made outside any unit (tests, benches, a prepare that
# sets none) share the unscoped journal set.
UNSCOPED: tuple[str, str] = ("_", "_")
_SCOPE: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("llm_cache_scope", default=UNSCOPED)
_OPEN_SUFFIX = ".jsonl.open"
_DONE_SUFFIX = ".jsonl"
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")


@contextlib.contextmanager
def cache_scope(stage: str, unit: str) -> Iterator[None]:
    """Record and look up requests made inside this block under ``(stage, unit)``.

    The worker wraps each unit in one; ``asyncio`` tasks and ``to_thread`` calls started
    inside inherit it (context variables are copied into both).
    """
    for part in (stage, unit):
        if not _NAME_RE.match(part) or part in {".", ".."}:
            raise ValueError(f"cache scope parts must be plain names, got {stage!r}/{unit!r}")
    token = _SCOPE.set((stage, unit))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def current_scope() -> tuple[str, str]:
    return _SCOPE.get()


@dataclass
class _Scope:
    """One scope's index (key -> where the reply is) and this process's open journal in it."""

    folder: Path
    index: dict[str, tuple[Path, int, int]] = field(default_factory=dict)
    journal: Path | None = None
    fd: int | None = None
    size: int = 0


class RequestCache:
    """Answered requests in append-only segment files, indexed per work unit on first use.

    Layout: ``<directory>/<stage>/<unit>/<writer>.jsonl`` — one segment per unit attempt
    (``<writer>`` = host, pid and a random suffix of the process that answered), one line
    per answered request (``<key>\\t<CachedReply JSON>\\n``). A segment is appended to as
    replies arrive (``<writer>.jsonl.open``, one ``write`` per line) and published —
    renamed to ``.jsonl`` — when its unit commits (``publish``). So the number of files
    grows with units (plus one unscoped journal per process), not with requests: ~10^5
    files for a 10^8-request run instead of 10^8.

    Exactly once: a reply is in the journal before ``complete`` returns it, and the page
    cache survives a killed process, so a unit killed between its requests and its commit
    finds every answered request when it runs again (its scope's index reads published
    and unpublished segments alike; a torn last line is ignored). What is in flight at a
    kill was never answered, so it is asked again — that is not paying twice.

    Sharing: a unit's index is read when the unit first looks something up, so a retry on
    any worker sees its earlier attempts' replies; units never read each other's segments
    (a worker's memory holds the index of its in-flight units only).

    Safe for threads (the client calls it through ``asyncio.to_thread``) and for many
    processes and machines sharing the directory: each process appends to its own files.
    """

    def __init__(self, directory: Path | str, *, fsync: bool = False) -> None:
        self.directory = Path(directory)
        # A killed process loses nothing already written to the page cache; fsync only
        # guards against a machine crash and costs milliseconds per entry, so it is opt-in.
        self.fsync = fsync
        self.writer = f"{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._scopes: dict[tuple[str, str], _Scope] = {}
        self._lock = threading.Lock()

    # -- the key API ------------------------------------------------------------------
    def get(self, key: str) -> CachedReply | None:
        """The cached reply for ``key`` in the current scope, or None (unreadable entries are misses)."""
        with self._lock:
            where = self._scope().index.get(key)
        if where is None:
            return None
        path, offset, length = where
        try:
            raw = _read_at(path, offset, length)
            return CachedReply.model_validate_json(raw)
        except (OSError, ValidationError):
            return None  # removed, or written by an incompatible version: a miss, rewritten later

    def put(self, key: str, reply: CachedReply) -> None:
        """Append ``reply`` under ``key`` to this process's segment of the current scope."""
        body = reply.model_dump_json().encode()
        line = b"%s\t%s\n" % (key.encode(), body)
        with self._lock:
            scope = self._scope()
            if scope.fd is None:
                scope.folder.mkdir(parents=True, exist_ok=True)
                scope.journal = scope.folder / f"{self.writer}{_OPEN_SUFFIX}"
                scope.fd = os.open(scope.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                scope.size = os.fstat(scope.fd).st_size
            # One write per line: a killed process leaves whole lines (and at worst one torn last line).
            os.write(scope.fd, line)
            if self.fsync:
                os.fsync(scope.fd)
            assert scope.journal is not None
            scope.index[key] = (scope.journal, scope.size + len(key) + 1, len(body))
            scope.size += len(line)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._scope().index

    # -- segments ---------------------------------------------------------------------
    def publish(self, stage: str, unit: str) -> list[Path]:
        """Seal the segments of ``(stage, unit)`` once the unit committed; forget its index.

        Seals this process's segment and those that killed attempts of the unit left open:
        the unit is committed, so nothing will append to them that anyone reads again (a
        stray writer keeps its file descriptor across the rename). Returns the sealed files.
        """
        with self._lock:
            scope = self._scopes.pop((stage, unit), None)
            sealed = [_seal(scope)] if scope is not None and scope.fd is not None else []
        folder = self.directory / stage / unit
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.name.endswith(_OPEN_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):  # sealed by a concurrent commit
                        os.replace(path, _published_name(path))
                        sealed.append(_published_name(path))
        return sealed

    def close(self) -> None:
        """Seal every open segment (the unscoped one included) and drop the indexes."""
        with self._lock:
            scopes, self._scopes = list(self._scopes.values()), {}
        for scope in scopes:
            if scope.fd is not None and scope.journal is not None:
                _seal(scope)

    def files(self) -> list[Path]:
        """Every segment file under the directory (published or not)."""
        if not self.directory.exists():
            return []
        return sorted(p for p in self.directory.rglob("*") if p.is_file() and _is_segment(p))

    def __len__(self) -> int:
        """Distinct keys stored, across every scope (reads every segment: for tests and diagnostics)."""
        keys: set[str] = set()
        for path in self.files():
            keys.update(k for k, _, _ in _read_segment(path))
        return len(keys)

    # -- internals ----------------------------------------------------------------------
    def _scope(self) -> _Scope:
        name = current_scope()
        scope = self._scopes.get(name)
        if scope is None:
            scope = self._scopes[name] = _Scope(folder=self.directory / name[0] / name[1])
            if scope.folder.is_dir():
                for path in sorted(scope.folder.iterdir()):
                    if _is_segment(path):
                        for key, offset, length in _read_segment(path):
                            scope.index[key] = (path, offset, length)
        return scope


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"


def _is_segment(path: Path) -> bool:
    return path.name.endswith(_OPEN_SUFFIX) or path.name.endswith(_DONE_SUFFIX)


def _seal(scope: _Scope) -> Path:
    assert scope.fd is not None and scope.journal is not None
    os.close(scope.fd)
    scope.fd = None
    done = _published_name(scope.journal)
    os.replace(scope.journal, done)  # atomic: readers see the segment under one name or the other
    return done


def _published_name(path: Path) -> Path:
    return path.with_name(path.name[: -len(_OPEN_SUFFIX)] + _DONE_SUFFIX)


def _read_at(path: Path, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` of a segment, following it if it was published (renamed) since."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        if not path.name.endswith(_OPEN_SUFFIX):
            raise
        fh = open(_published_name(path), "rb")  # noqa: SIM115
    with fh:
        fh.seek(offset)
        return fh.read(length)


def _read_segment(path: Path) -> Iterator[tuple[str, int, int]]:
    """``(key, offset, length)`` of every whole line of a segment; a torn last line is skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # published (renamed) between the listing and the read
        if not path.name.endswith(_OPEN_SUFFIX):
            return
        try:
            data = _published_name(path).read_bytes()
        except FileNotFoundError:
            return
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            return  # no newline: a line torn by a kill mid-write (or nothing left)
        tab = data.find(b"\t", start, end)
        if tab > start and _valid_reply(data[tab + 1 : end]):
            key = data[start:tab].decode("ascii", "replace")
            yield key, tab + 1, end - tab - 1
        start = end + 1


def _valid_reply(raw: bytes) -> bool:
    # Checked when a unit's index is built (a few hundred lines), so that an entry a crash
    # or an older version left unreadable never shadows a good copy of the same key.
    try:
        CachedReply.model_validate_json(raw)
    except ValidationError:
        return False
    return True
