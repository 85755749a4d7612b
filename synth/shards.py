"""The shard store: atomic Parquet shards per work unit, and the manifest that commits them.

Layout under a run directory (DESIGN §6)::

    shards/<stage>/part-<unit>.parquet     records of one work unit
    failed/<stage>/part-<unit>.parquet     inputs of that unit that yielded no record
    manifest.d/<stage>/part-<unit>.json    the commit record of that unit (one file per unit)
    manifest.parquet                       compaction of manifest.d, rewritten atomically

Commit protocol, so that a kill at any instant leaves either nothing or everything:
each file is written to a temp name in its final directory, fsynced, and renamed; the
unit becomes visible only when its manifest entry is renamed into ``manifest.d``. One
entry file per unit (rather than appending to one file) lets many Ray workers on many
nodes commit concurrently without a lock. Readers consult only the manifest, so a shard
without an entry is invisible, and ``cleanup_orphans`` deletes it on resume.

Verification on read: every path by which a committed file's bytes are read (``files``,
``read_table``, ``read_unit_records``, ``verified_path``) first checks the file against the
sha256 its manifest row records, and raises ``CorruptShardError`` naming the file on a
mismatch. A single flipped byte can decode cleanly into a different record (measured: 23 of
200 random flips changed records silently), so the decoder is no check. The hash is computed
once per file per process (``_VerifiedFiles``) and again only when the file's stat changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from synth.errors import IntegrityError
from synth.layout import RunLayout
from synth.records import (
    FAILURE_SCHEMA,
    RECORD_TYPES,
    Failure,
    Record,
    failures_to_table,
    records_to_table,
    table_to_records,
)

FileKind = Literal["records", "failed"]

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("stage", pa.string()),
        pa.field("unit", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("path", pa.string()),
        pa.field("rows", pa.int64()),
        pa.field("bytes", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("worker", pa.string()),
    ]
)

# DuckDB parallelises scans per row group; 128k rows keeps groups large enough to be
# worth a thread while a unit (a few thousand rows) stays one group.
ROW_GROUP_ROWS = 128 * 1024


class CorruptShardError(IntegrityError):
    """A committed file whose bytes no longer match the sha256 in the manifest (or that is gone)."""

    def __init__(self, path: Path, expected: str, actual: str | None, detail: str | None = None) -> None:
        if detail is not None:
            what = detail
        elif actual is None:
            what = "is missing"
        else:
            what = f"has sha256 {actual[:12]}…, manifest says {expected[:12]}…"
        super().__init__(f"corrupt shard {path}: {what}")
        self.path = path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _VerifiedFiles:
    """Which files this process has hashed and found matching, keyed by (path, expected sha256).

    The value is the file's stat signature when it was hashed: a later write (even in place)
    changes mtime/ctime, so the file is hashed again. Bounded, oldest forgotten first.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        self._seen: OrderedDict[tuple[str, str], tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries

    @staticmethod
    def _signature(st: os.stat_result) -> tuple[int, ...]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def check(self, path: Path, sha256: str, size: int | None = None) -> None:
        """Raise ``CorruptShardError`` unless ``path`` hashes to ``sha256`` (cached while unchanged)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise CorruptShardError(path, sha256, None) from None
        key = (str(path), sha256)
        sig = self._signature(st)
        with self._lock:
            if self._seen.get(key) == sig:
                self._seen.move_to_end(key)
                return
        if size is not None and st.st_size != size:
            raise CorruptShardError(path, sha256, None, detail=f"is {st.st_size} bytes, manifest says {size}")
        actual = sha256_file(path)
        if actual != sha256:
            raise CorruptShardError(path, sha256, actual)
        with self._lock:
            self._seen[key] = sig
            while len(self._seen) > self._max:
                self._seen.popitem(last=False)

    def hashed(self) -> int:
        """How many files are remembered as verified (for tests of the cache)."""
        with self._lock:
            return len(self._seen)


# One per process, on purpose: verification should cost one hash per file per process,
# whichever ShardStore instance (worker, API request, CLI command) reads the file.
_VERIFIED = _VerifiedFiles()


@dataclass(frozen=True)
class ManifestRow:
    stage: str
    unit: str
    kind: FileKind
    path: str  # relative to the run directory
    rows: int
    bytes: int
    sha256: str
    worker: str


def default_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(
    path: Path, data: bytes | memoryview, sync_dir: bool = True, sync_file: bool = True
) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory, fsync, rename.

    ``sync_dir`` also fsyncs the directory so the rename itself survives a power loss.
    Shard files skip it: they are invisible until their manifest entry commits, and the
    entry's rename is journaled after theirs (ext4/xfs commit metadata in order), so one
    directory fsync at the commit point covers both. (fsync costs ~3.5 ms here, several
    times the encoding of a 10k-row unit; see bench/shards.py.)
    Manifest entries skip ``sync_file``: the directory fsync commits the journal, which in
    ext4's ordered mode writes the entry's data first; a torn entry reads as uncommitted.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        if sync_file:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync_dir:
        _fsync_dir(path.parent)


def table_to_parquet_bytes(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    if table.num_rows == 0:
        # No row group at all, not one of 0 rows: `datasets` (and the Hub viewer) take the
        # first row group's size as their batch size, and 0 fails the whole config.
        pq.ParquetWriter(sink, table.schema, compression="zstd").close()
        return sink.getvalue()
    pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return sink.getvalue()


def _read_entry(path: Path) -> list[dict]:
    """Rows of a manifest entry; an unreadable entry (torn by a power loss) commits nothing."""
    try:
        rows = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return []
    return rows if isinstance(rows, list) else []


def unit_name(index: int) -> str:
    """Zero-padded so that lexical order is numeric order."""
    return f"{index:05d}"


class ShardStore:
    """Reads and writes the shards and manifest of one run directory."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.layout = RunLayout(self.run_dir)

    # -- paths -------------------------------------------------------------
    def shard_path(self, stage: str, unit: str, kind: FileKind = "records") -> Path:
        return self.layout.shard(stage, unit, kind)

    def _entry_path(self, stage: str, unit: str) -> Path:
        return self.layout.manifest_entry(stage, unit)

    # -- writing -----------------------------------------------------------
    def write_unit(
        self,
        stage: str,
        unit: str,
        records: pa.Table | list[Record],
        failures: list[Failure] | pa.Table | None = None,
        worker: str | None = None,
        run_id: str = "",
    ) -> list[ManifestRow]:
        """Commit one work unit: its records file, its failed file (if any), then its manifest entry.

        Returns the manifest rows. Re-committing a committed unit is refused: a unit is
        computed once, and a resumed run skips it.
        """
        if "/" in unit or "/" in stage or unit.startswith("."):
            raise ValueError(f"unit and stage names must be plain names, got {stage!r}/{unit!r}")
        entry = self._entry_path(stage, unit)
        if _read_entry(entry):
            raise FileExistsError(f"unit {stage}/{unit} is already committed")
        worker = worker or default_worker()
        if isinstance(records, list):
            record_type = RECORD_TYPES[stage]
            table = records_to_table(records, record_type)
        else:
            table = records
        rows = [self._write_file(stage, unit, "records", table, worker)]
        if failures is not None and (len(failures) if isinstance(failures, list) else failures.num_rows):
            ftable = failures if isinstance(failures, pa.Table) else failures_to_table(failures, run_id, stage, unit)
            rows.append(self._write_file(stage, unit, "failed", ftable, worker))
        payload = json.dumps([r.__dict__ for r in rows]).encode()
        atomic_write_bytes(entry, payload, sync_file=False)  # the commit point
        return rows

    def _write_file(self, stage: str, unit: str, kind: FileKind, table: pa.Table, worker: str) -> ManifestRow:
        buf = table_to_parquet_bytes(table)
        digest = hashlib.sha256(memoryview(buf)).hexdigest()
        path = self.shard_path(stage, unit, kind)
        atomic_write_bytes(path, memoryview(buf), sync_dir=False)
        return ManifestRow(
            stage=stage,
            unit=unit,
            kind=kind,
            path=str(path.relative_to(self.run_dir)),
            rows=table.num_rows,
            bytes=buf.size,
            sha256=digest,
            worker=worker,
        )

    # -- reading the manifest ---------------------------------------------
    def manifest_rows(self, stage: str | None = None) -> list[ManifestRow]:
        """Every committed file, in (stage, unit, kind) order: manifest.parquet plus newer entries."""
        by_key: dict[tuple[str, str, str], ManifestRow] = {}
        compacted = self.layout.manifest
        if compacted.exists():
            try:
                compacted_rows = pq.read_table(compacted, schema=MANIFEST_SCHEMA).to_pylist()
            except (pa.ArrowException, OSError) as err:
                # Named like a shard, so every reader (API 409, CLI one line) reports it the same way.
                raise CorruptShardError(compacted, "", None, detail=f"is unreadable ({err})") from None
            for row in compacted_rows:
                by_key[(row["stage"], row["unit"], row["kind"])] = ManifestRow(**row)
        entries = self.layout.manifest_entries
        stage_dirs = [entries / stage] if stage else (sorted(entries.iterdir()) if entries.exists() else [])
        for d in stage_dirs:
            if not d.is_dir():
                continue
            for f in d.glob("part-*.json"):
                for row in _read_entry(f):
                    by_key[(row["stage"], row["unit"], row["kind"])] = ManifestRow(**row)
        rows = [r for r in by_key.values() if stage is None or r.stage == stage]
        return sorted(rows, key=lambda r: (r.stage, r.unit, r.kind))

    def committed_units(self, stage: str) -> set[str]:
        return {r.unit for r in self.manifest_rows(stage)}

    def is_committed(self, stage: str, unit: str) -> bool:
        return bool(_read_entry(self._entry_path(stage, unit))) or unit in self.committed_units(stage)

    def unit_entry_rows(self, stage: str, unit: str) -> list[ManifestRow]:
        """The files one unit's manifest entry commits ([] = not committed), reading only that entry.

        For the runner's per-unit checks, which must not cost a scan of the whole stage's
        manifest per unit (quadratic in units). A run's entries are never deleted, so during
        a run the entry alone decides whether the unit is committed.
        """
        return [ManifestRow(**row) for row in _read_entry(self._entry_path(stage, unit))]

    def manifest_table(self) -> pa.Table:
        return pa.Table.from_pylist([r.__dict__ for r in self.manifest_rows()], schema=MANIFEST_SCHEMA)

    def compact_manifest(self) -> Path:
        """Rewrite manifest.parquet from all entries (atomically). Safe to call at any time."""
        path = self.layout.manifest
        atomic_write_bytes(path, memoryview(table_to_parquet_bytes(self.manifest_table())))
        return path

    # -- resume ------------------------------------------------------------
    def cleanup_orphans(self) -> list[Path]:
        """Delete files that no manifest row names (a unit killed before its commit), and temp files."""
        committed = {self.run_dir / r.path for r in self.manifest_rows()}
        removed: list[Path] = []
        entries = self.layout.manifest_entries
        for root in (*self.layout.data_dirs, entries):
            if not root.exists():
                continue
            for f in root.rglob("*"):
                if not f.is_file():
                    continue
                is_tmp = ".tmp-" in f.name
                torn_entry = root == entries and not is_tmp and not _read_entry(f)
                if is_tmp or torn_entry or (root != entries and f not in committed):
                    f.unlink()
                    removed.append(f)
        for f in self.layout.root.glob(f".{self.layout.manifest.name}.tmp-*"):
            f.unlink()
            removed.append(f)
        return removed

    # -- reading data (every method below verifies the files it reads) ------
    def verified_path(self, row: ManifestRow) -> Path:
        """The file of a manifest row, after checking it against the row's sha256 (cached per process).

        Raises ``CorruptShardError`` naming the file when it is missing or its bytes changed.
        Anything that reads a committed file's bytes gets its path from here.
        """
        path = self.run_dir / row.path
        _VERIFIED.check(path, row.sha256, row.bytes)
        return path

    def files(self, stage: str, kind: FileKind = "records") -> list[Path]:
        """Committed files of a stage, in unit order, each verified against the manifest."""
        return [self.verified_path(r) for r in self.manifest_rows(stage) if r.kind == kind]

    def read_table(self, stage: str, kind: FileKind = "records", verify: bool = True) -> pa.Table:
        """All committed rows of a stage (or its failed ledger), in unit order.

        Files are always verified; ``verify`` is accepted for older callers and ignored.
        """
        del verify
        rows = [r for r in self.manifest_rows(stage) if r.kind == kind]
        schema = RECORD_TYPES[stage].arrow_schema() if kind == "records" else FAILURE_SCHEMA
        tables = [pq.read_table(self.verified_path(r), schema=schema) for r in rows]
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def read_records(self, stage: str) -> list[Record]:
        return table_to_records(self.read_table(stage), RECORD_TYPES[stage])

    def read_unit_records(self, stage: str, unit: str) -> list[Record]:
        """The committed records of one unit ([] when not committed), reading only its entry."""
        rows = [r for r in self.unit_entry_rows(stage, unit) if r.kind == "records"]
        if not rows:
            return []
        record_type = RECORD_TYPES[stage]
        table = pq.read_table(self.verified_path(rows[0]), schema=record_type.arrow_schema())
        return table_to_records(table, record_type)

    def verify_row(self, row: ManifestRow) -> None:
        """Hash the file of ``row`` now (no cache) and compare it with the manifest."""
        path = self.run_dir / row.path
        if not path.exists():
            raise CorruptShardError(path, row.sha256, None)
        actual = sha256_file(path)
        if actual != row.sha256:
            raise CorruptShardError(path, row.sha256, actual)

    def verify(self, stages: Iterable[str] | None = None) -> list[CorruptShardError]:
        """Every committed file checked against its sha256; returns the problems found."""
        wanted = set(stages) if stages is not None else None
        problems: list[CorruptShardError] = []
        for r in self.manifest_rows():
            if wanted is not None and r.stage not in wanted:
                continue
            try:
                self.verify_row(r)
            except CorruptShardError as err:
                problems.append(err)
        return problems
