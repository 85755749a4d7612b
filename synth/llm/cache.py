"""A request cache on disk: a resumed run never pays twice for a request that was answered.

One small JSON file per answered request, at ``<directory>/<key[:2]>/<key>.json``, where the
key hashes everything that determines the reply (model, messages, sampling parameters,
response schema; see ``request_key``). Files are written to a unique temporary name in the
same directory and renamed into place (``os.replace``, atomic on POSIX filesystems and NFS),
so many processes on many machines can share the directory: a reader sees a whole entry or
none, and two writers of the same key both leave a whole entry (same request, either reply).
Only replies that were usable (valid against the schema, for structured calls) are stored.

Like curator's cache, the key covers the response schema, so changing a stage's output
model invalidates its entries; it does not cover anything the request does not carry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CACHE_FORMAT_VERSION = 1


class CachedReply(BaseModel):
    """One cached answer."""

    model_config = ConfigDict(extra="forbid")
    content: str = Field(description="the reply text as the endpoint returned it")
    prompt_tokens: int = Field(0, description="prompt tokens of the original request")
    completion_tokens: int = Field(0, description="completion tokens of the original request")
    model: str = Field(description="model that answered")


def request_key(
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    schema: dict[str, Any] | None,
) -> str:
    """A sha256 hex key over model, messages, parameters and response schema (canonical JSON)."""
    doc = {
        "v": CACHE_FORMAT_VERSION,
        "model": model,
        "messages": messages,
        "params": params,
        "schema": schema,
    }
    canonical = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class RequestCache:
    """A directory of cached replies, safe to share between processes and machines."""

    def __init__(self, directory: Path | str, *, fsync: bool = False) -> None:
        self.directory = Path(directory)
        # A killed process loses nothing already written to the page cache; fsync only
        # guards against a machine crash and costs milliseconds per entry, so it is opt-in.
        self.fsync = fsync

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> CachedReply | None:
        """The cached reply for ``key``, or None (missing or unreadable entries are misses)."""
        try:
            raw = self.path(key).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return CachedReply.model_validate_json(raw)
        except ValidationError:
            return None  # written by an incompatible version: treat as a miss, rewrite later

    def put(self, key: str, reply: CachedReply) -> None:
        """Store ``reply`` under ``key`` atomically (write a unique temp file, then rename)."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(reply.model_dump_json().encode())
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*/*.json"))
