"""Shard store throughput vs raw `pyarrow.parquet.write_table`, and catalog query latency.

Writes 1,000,000 small memory records across 100 work units twice, in one process:
(1) raw `pq.write_table` of each unit's table to its file (same zstd codec), and
(2) `ShardStore.write_unit` (temp file, sha256, fsync, rename, manifest entry).
Prints (a) store throughput / raw throughput (goal >= 0.8) and (b) the time of a
per-stage count plus a GROUP BY through the DuckDB catalog (goal < 1 s).
Record construction (pydantic -> Arrow) is timed separately: the pipeline does it in
workers before a commit, and it is not part of the store.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from synth.catalog import write_catalog
from synth.records import MemoryRecord, records_to_table, utc_now
from synth.shards import ShardStore, unit_name

N_RECORDS = 1_000_000
N_UNITS = 100


def unit_tables() -> list[pa.Table]:
    per = N_RECORDS // N_UNITS
    schema = MemoryRecord.arrow_schema()
    now = utc_now()
    tables = []
    for u in range(N_UNITS):
        ids = [f"{u:03d}-{i:06d}" for i in range(per)]
        tables.append(pa.table({
            "id": ids,
            "run_id": ["bench"] * per,
            "stage": ["memory"] * per,
            "parent_ids": [[f"doc{u}"]] * per,
            "model": ["m"] * per,
            "created_at": pa.array([now] * per, type=schema.field("created_at").type),
            "entity": [f"entity {i % 997}" for i in range(per)],
            "statement": [f"Entity {i % 997} reported {i} units in {2000 + i % 25}." for i in range(per)],
            "doc_id": [f"doc{u}"] * per,
            "source_url": [f"https://example.org/{u}"] * per,
            "time": [str(2000 + i % 25) for i in range(per)],
        }, schema=schema))
    return tables


def main() -> None:
    tables = unit_tables()
    with tempfile.TemporaryDirectory() as tmp:
        raw_dir = Path(tmp) / "raw"
        raw_dir.mkdir()
        run = Path(tmp) / "runs" / "bench"
        store = ShardStore(run)
        # Interleave raw and store writes unit by unit, so that load from other processes
        # on this shared 2-core machine hits both sides alike.
        raw_s = store_s = 0.0
        for u, t in enumerate(tables):
            t0 = time.perf_counter()
            pq.write_table(t, raw_dir / f"part-{unit_name(u)}.parquet", compression="zstd")
            t1 = time.perf_counter()
            store.write_unit("memory", unit_name(u), t)
            t2 = time.perf_counter()
            raw_s += t1 - t0
            store_s += t2 - t1
        store.compact_manifest()
        (run / "spec.yaml").write_text("name: bench\n")

        catalog = write_catalog(run)
        con = duckdb.connect(str(catalog), read_only=True, config={"file_search_path": str(run.parent.parent)})
        t0 = time.perf_counter()
        count = con.execute("select count(*) from memory").fetchone()[0]
        groups = con.execute("select entity, count(*) from memory group by 1").fetchall()
        query_s = time.perf_counter() - t0
        assert count == N_RECORDS and len(groups) == 997

        sample = [MemoryRecord(id=str(i), run_id="b", entity="e", statement="s", doc_id="d") for i in range(10_000)]
        t0 = time.perf_counter()
        records_to_table(sample, MemoryRecord)
        conv_per_s = len(sample) / (time.perf_counter() - t0)

    result = {
        "records": N_RECORDS,
        "units": N_UNITS,
        "raw_write_table_records_per_s": round(N_RECORDS / raw_s),
        "shard_store_records_per_s": round(N_RECORDS / store_s),
        "ratio_store_vs_raw": round(raw_s / store_s, 3),
        "goal_ratio": 0.8,
        "catalog_count_plus_group_by_s": round(query_s, 3),
        "goal_query_s": 1.0,
        "pydantic_to_arrow_records_per_s": round(conv_per_s),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
