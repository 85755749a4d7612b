"""The shard store: atomic commits, manifest-only reads, orphan cleanup, corruption detection."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synth.records import Failure, MemoryRecord, PlanningRecord, ToolAction
from synth.shards import CorruptShardError, ShardStore

REPO = Path(__file__).resolve().parents[2]


def memory_records(n: int, prefix: str = "m") -> list[MemoryRecord]:
    return [
        MemoryRecord(id=f"{prefix}{i}", run_id="r", entity=f"e{i % 7}", statement=f"fact {i}", doc_id="d", source_url="u")
        for i in range(n)
    ]


def test_committed_unit_round_trips_records_and_failures(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    rec = PlanningRecord(
        id="p1", run_id="r", question_id="q1", analysis="a",
        action=ToolAction(tool="search", arguments={"query": ["x", "y"]}), accepted=False, reason="invalid_tool",
    )
    rows = store.write_unit(
        "planning", "00000", [rec], [Failure(input_ids=["q2"], error_kind="invalid_output", message="m")], run_id="r"
    )
    assert [r.kind for r in rows] == ["records", "failed"]
    back = store.read_records("planning")
    assert back[0].action == rec.action and back[0].reason == "invalid_tool"
    failed = store.read_table("planning", "failed").to_pylist()
    assert failed[0]["input_ids"] == ["q2"] and failed[0]["unit"] == "00000"


def test_a_unit_is_never_committed_twice(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    store.write_unit("memory", "00001", memory_records(3))
    with pytest.raises(FileExistsError):
        store.write_unit("memory", "00001", memory_records(3))
    assert store.read_table("memory").num_rows == 3


def test_empty_stage_reads_as_empty_table_with_schema(tmp_path: Path) -> None:
    table = ShardStore(tmp_path).read_table("questions")
    assert table.num_rows == 0 and "knowledge_ids" in table.schema.names


def test_parquet_files_have_explicit_schema_and_zstd(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    store.write_unit("memory", "00000", [])  # an empty unit still has every column with its type
    meta = pq.ParquetFile(store.shard_path("memory", "00000")).metadata
    assert meta.num_rows == 0
    assert pq.read_schema(store.shard_path("memory", "00000")).equals(MemoryRecord.arrow_schema())
    store.write_unit("memory", "00001", memory_records(5))
    md = pq.ParquetFile(store.shard_path("memory", "00001")).metadata
    assert md.row_group(0).column(0).compression == "ZSTD"


KILL_BEFORE_COMMIT = textwrap.dedent(
    """
    import os, signal, sys
    import synth.shards as shards
    from synth.records import MemoryRecord
    real = shards.atomic_write_bytes
    def write(path, data, **kw):
        if "manifest.d" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)  # killed after the shard, before the manifest entry
        real(path, data, **kw)
    shards.atomic_write_bytes = write
    store = shards.ShardStore(sys.argv[1])
    recs = [MemoryRecord(id=f"k{i}", run_id="r", entity="e", statement="s", doc_id="d") for i in range(10)]
    store.write_unit("memory", "00007", recs)
    """
)


def test_writer_killed_between_file_and_manifest_leaves_nothing_visible(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    store.write_unit("memory", "00000", memory_records(4))
    proc = subprocess.run([sys.executable, "-c", KILL_BEFORE_COMMIT, str(tmp_path)], cwd=REPO)
    assert proc.returncode == -signal.SIGKILL
    orphan = store.shard_path("memory", "00007")
    assert orphan.exists(), "the shard itself was written before the kill"
    assert store.read_table("memory").num_rows == 4, "readers see committed units only"
    assert store.committed_units("memory") == {"00000"}
    removed = store.cleanup_orphans()
    assert orphan in removed and not orphan.exists()
    store.write_unit("memory", "00007", memory_records(10, "k"))  # the resumed unit commits normally
    assert store.read_table("memory").num_rows == 14


WRITE_FOREVER = textwrap.dedent(
    """
    import sys
    from synth.shards import ShardStore, unit_name
    from synth.records import MemoryRecord
    store = ShardStore(sys.argv[1])
    i = 0
    while True:
        recs = [MemoryRecord(id=f"u{i}-{j}", run_id="r", entity="e", statement="s" * 200, doc_id="d") for j in range(2000)]
        store.write_unit("memory", unit_name(i), recs)
        print(i, flush=True)
        i += 1
    """
)


def test_sigkill_at_a_random_moment_keeps_the_store_consistent(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITE_FOREVER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for _ in range(3):  # let a few units commit, then kill mid-flight
        proc.stdout.readline()
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = ShardStore(tmp_path)
    units = store.committed_units("memory")
    assert len(units) >= 3
    assert store.verify() == []
    assert store.read_table("memory").num_rows == 2000 * len(units)
    store.cleanup_orphans()
    on_disk = {p.name for p in (tmp_path / "shards" / "memory").iterdir()}
    assert on_disk == {f"part-{u}.parquet" for u in units}


def test_corrupted_shard_is_detected_by_sha256(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    store.write_unit("memory", "00000", memory_records(50))
    store.write_unit("memory", "00001", memory_records(50, "n"))
    path = store.shard_path("memory", "00001")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = store.verify()
    assert [p.path for p in problems] == [path]
    with pytest.raises(CorruptShardError, match="part-00001"):
        store.read_table("memory", verify=True)


def test_missing_committed_file_is_reported(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    store.write_unit("memory", "00000", memory_records(2))
    store.shard_path("memory", "00000").unlink()
    assert "missing" in str(store.verify()[0])


def test_compacted_manifest_matches_entries(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    for u in range(3):
        store.write_unit("memory", f"0000{u}", memory_records(u + 1, f"x{u}-"), worker="node-a")
    path = store.compact_manifest()
    table = pq.read_table(path)
    assert table.num_rows == 3
    assert table.column_names == ["stage", "unit", "kind", "path", "rows", "bytes", "sha256", "worker"]
    assert set(table.column("worker").to_pylist()) == {"node-a"}
    assert ShardStore(tmp_path).manifest_rows() == store.manifest_rows()


def test_one_unit_is_read_from_its_own_entry(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    store.write_unit("memory", "00000", memory_records(3, "a"))
    store.write_unit("memory", "00001", memory_records(2, "b"))
    assert [r.id for r in store.read_unit_records("memory", "00001")] == ["b0", "b1"]
    assert store.read_unit_records("memory", "00002") == []
