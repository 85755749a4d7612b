"""Reading what a run produced: manifest rows, statistics, and pages of records.

Everything goes through the manifest (``synth.shards.ShardStore``), so a shard that a
killed writer left behind without a commit is never shown.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from api.schemas import RunStatsPublic, SamplesPublic, ShardPublic, TokenTotals
from synth.catalog import run_stats
from synth.records import RECORD_TYPES, Record
from synth.runstate import RunDir
from synth.shards import ShardStore


def list_shards(run_dir: Path, stage: str | None = None) -> list[ShardPublic]:
    """Every committed file of the run (records and failed ledger), in (stage, unit, kind) order."""
    return [ShardPublic(**row.__dict__) for row in ShardStore(run_dir).manifest_rows(stage)]


def read_stats(run_dir: Path) -> RunStatsPublic:
    """``synth.catalog.run_stats`` plus the run's token totals from progress.json."""
    stats = run_stats(run_dir)
    progress = RunDir(run_dir).read_progress()
    prompt = sum(s.llm.prompt_tokens for s in progress.stages.values())
    completion = sum(s.llm.completion_tokens for s in progress.stages.values())
    return RunStatsPublic(
        **stats.model_dump(),
        tokens=TokenTotals(prompt=prompt, completion=completion, total=prompt + completion),
    )


def read_samples(run_dir: Path, stage: str, limit: int, offset: int) -> SamplesPublic:
    """Records ``offset .. offset+limit`` of ``stage`` in unit order.

    Uses the row counts in the manifest to skip whole files, so a page deep into a large
    stage reads only the one or two files it overlaps.
    """
    store = ShardStore(run_dir)
    files = [r for r in store.manifest_rows(stage) if r.kind == "records"]
    total = sum(r.rows for r in files)
    record_type = RECORD_TYPES[stage]
    schema = record_type.arrow_schema()
    out: list[Record] = []
    start = 0  # index of the first row of the current file
    for f in files:
        if len(out) >= limit:
            break
        end = start + f.rows
        if end > offset:
            # Verified against the manifest first: a corrupt file is a 409 naming it, not other rows.
            table = pq.read_table(store.verified_path(f), schema=schema)
            first = max(0, offset - start)
            take = min(limit - len(out), f.rows - first)
            out.extend(record_type.from_row(row) for row in table.slice(first, take).to_pylist())
        start = end
    return SamplesPublic(stage=stage, data=out, count=total, limit=limit, offset=offset)
