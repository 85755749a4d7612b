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
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

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


class CorruptShardError(RuntimeError):
    """A committed file whose bytes no longer match the sha256 in the manifest."""

    def __init__(self, path: Path, expected: str, actual: str | None) -> None:
        what = "is missing" if actual is None else f"has sha256 {actual[:12]}…, manifest says {expected[:12]}…"
        super().__init__(f"corrupt shard {path}: {what}")
        self.path = path


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

    # -- paths -------------------------------------------------------------
    def shard_path(self, stage: str, unit: str, kind: FileKind = "records") -> Path:
        top = "shards" if kind == "records" else "failed"
        return self.run_dir / top / stage / f"part-{unit}.parquet"

    def _entry_path(self, stage: str, unit: str) -> Path:
        return self.run_dir / "manifest.d" / stage / f"part-{unit}.json"

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
        compacted = self.run_dir / "manifest.parquet"
        if compacted.exists():
            for row in pq.read_table(compacted).to_pylist():
                by_key[(row["stage"], row["unit"], row["kind"])] = ManifestRow(**row)
        entries = self.run_dir / "manifest.d"
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
        path = self.run_dir / "manifest.parquet"
        atomic_write_bytes(path, memoryview(table_to_parquet_bytes(self.manifest_table())))
        return path

    # -- resume ------------------------------------------------------------
    def cleanup_orphans(self) -> list[Path]:
        """Delete files that no manifest row names (a unit killed before its commit), and temp files."""
        committed = {self.run_dir / r.path for r in self.manifest_rows()}
        removed: list[Path] = []
        for top in ("shards", "failed", "manifest.d"):
            root = self.run_dir / top
            if not root.exists():
                continue
            for f in root.rglob("*"):
                if not f.is_file():
                    continue
                is_tmp = ".tmp-" in f.name
                torn_entry = top == "manifest.d" and not is_tmp and not _read_entry(f)
                if is_tmp or torn_entry or (top != "manifest.d" and f not in committed):
                    f.unlink()
                    removed.append(f)
        for f in self.run_dir.glob(".manifest.parquet.tmp-*"):
            f.unlink()
            removed.append(f)
        return removed

    # -- reading data ------------------------------------------------------
    def files(self, stage: str, kind: FileKind = "records") -> list[Path]:
        return [self.run_dir / r.path for r in self.manifest_rows(stage) if r.kind == kind]

    def read_table(self, stage: str, kind: FileKind = "records", verify: bool = False) -> pa.Table:
        """All committed rows of a stage (or its failed ledger), in unit order."""
        rows = [r for r in self.manifest_rows(stage) if r.kind == kind]
        if verify:
            for r in rows:
                self.verify_row(r)
        schema = RECORD_TYPES[stage].arrow_schema() if kind == "records" else FAILURE_SCHEMA
        tables = [pq.read_table(self.run_dir / r.path, schema=schema) for r in rows]
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def read_records(self, stage: str) -> list[Record]:
        return table_to_records(self.read_table(stage), RECORD_TYPES[stage])

    def read_unit_records(self, stage: str, unit: str) -> list[Record]:
        """The committed records of one unit ([] when not committed), reading only its entry."""
        rows = [r for r in self.unit_entry_rows(stage, unit) if r.kind == "records"]
        if not rows:
            return []
        record_type = RECORD_TYPES[stage]
        table = pq.read_table(self.run_dir / rows[0].path, schema=record_type.arrow_schema())
        return table_to_records(table, record_type)

    def verify_row(self, row: ManifestRow) -> None:
        path = self.run_dir / row.path
        if not path.exists():
            raise CorruptShardError(path, row.sha256, None)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != row.sha256:
            raise CorruptShardError(path, row.sha256, h.hexdigest())

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
