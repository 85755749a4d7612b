"""Records are Hugging Face native: every stage's Arrow schema has a ``datasets`` feature type,
and ``datasets`` loads the shards of every stage of a real run (rollouts included)."""

from __future__ import annotations

from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth.records import FAILURE_SCHEMA, RolloutRecord, TrajectoryStep, records_to_table, table_to_records
from synth.shards import ShardStore
from synth.stages import all_stages, stage_names

datasets.disable_progress_bars()


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Local files only: no Hub request, and a cache that is this test's own."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.mark.parametrize("stage", stage_names())
def test_every_record_schema_converts_to_datasets_features(stage: str) -> None:
    record_type = next(s.record_type for s in all_stages() if s.name == stage)
    features = datasets.Features.from_arrow_schema(record_type.arrow_schema())
    assert list(features) == record_type.arrow_schema().names


def test_the_failed_ledger_schema_converts_to_datasets_features() -> None:
    assert list(datasets.Features.from_arrow_schema(FAILURE_SCHEMA)) == FAILURE_SCHEMA.names


def _rollout(malformed: dict[str, int]) -> RolloutRecord:
    return RolloutRecord(
        id="r1",
        run_id="run",
        question="What is 2+2?",
        steps=[TrajectoryStep(thought="easy")],
        final_answer="4",
        outcome="correct",
        source="rollout",
        malformed=malformed,
    )


def test_malformed_counts_are_kind_count_structs_in_arrow_and_a_dict_in_python() -> None:
    record = _rollout({"unknown_tool": 2, "bad_json": 1})
    table = records_to_table([record], RolloutRecord)
    assert table.schema.field("malformed").type == pa.list_(
        pa.struct([("kind", pa.string()), ("count", pa.int64())])
    )
    assert table.column("malformed").to_pylist() == [[{"kind": "bad_json", "count": 1}, {"kind": "unknown_tool", "count": 2}]]
    assert table_to_records(table, RolloutRecord) == [record]
    ds = datasets.Dataset(table)
    assert ds[0]["malformed"] == [{"kind": "bad_json", "count": 1}, {"kind": "unknown_tool", "count": 2}]


def test_rollouts_written_with_the_old_map_column_still_read_back() -> None:
    old = pa.schema([f if f.name != "malformed" else pa.field("malformed", pa.map_(pa.string(), pa.int64()))
                     for f in RolloutRecord.arrow_schema()])  # fmt: skip
    row = _rollout({}).to_row()
    row["malformed"] = [("no_action", 3)]
    table = pa.Table.from_pylist([row], schema=old)
    assert table_to_records(table, RolloutRecord)[0].malformed == {"no_action": 3}  # type: ignore[attr-defined]


def test_an_empty_shard_has_no_row_group_so_datasets_reads_its_stage(tmp_path: Path) -> None:
    """``datasets`` takes the first row group's size as its batch size: a 0-row group fails a config."""
    store = ShardStore(tmp_path)
    store.write_unit("rollouts", "00000", [_rollout({"bad_json": 1})], [])
    store.write_unit("rollouts", "00001", [], [])
    empty = store.shard_path("rollouts", "00001")
    assert pq.ParquetFile(empty).metadata.num_row_groups == 0
    assert pq.read_table(empty).schema == RolloutRecord.arrow_schema()
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "shards" / "rollouts" / "*.parquet"), split="train")
    assert ds.num_rows == 1


@pytest.mark.slow
def test_datasets_loads_the_shards_of_every_stage_of_a_real_run(full_run: Path) -> None:
    store = ShardStore(full_run)
    for stage in stage_names():
        rows = sum(r.rows for r in store.manifest_rows(stage) if r.kind == "records")
        assert rows > 0, f"the run committed no {stage} record"
        ds = datasets.load_dataset(
            "parquet", data_files=str(full_run / "shards" / stage / "*.parquet"), split="train"
        )
        assert ds.num_rows == rows, stage
        assert set(ds.column_names) == set(next(s for s in all_stages() if s.name == stage).record_type.model_fields)
    rollouts = datasets.load_dataset(
        "parquet", data_files=str(full_run / "shards" / "rollouts" / "*.parquet"), split="train"
    )
    assert rollouts.features["malformed"] == datasets.List(
        {"kind": datasets.Value("string"), "count": datasets.Value("int64")}
    )
