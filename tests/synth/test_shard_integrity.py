"""Shards are verified on read: one flipped byte in a committed file is refused, naming the file,
by every reader (store, next stage, stats, catalog, tokenize) and found by ``agentcpt verify``.
``stats --sql`` runs with DuckDB's file system access off unless ``--allow-external``."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

import synth.shards as shards_module
from agentcpt.cli import main as cli_main
from synth.catalog import run_stats, write_catalog
from synth.ids import record_id
from synth.records import CorpusRecord, DocumentRecord
from synth.shards import CorruptShardError, ShardStore
from synth.verify import verify_command

RUN_ID = "integrity-20250101-000000-0001"


def flip_byte(path: Path, offset: int | None = None) -> None:
    """XOR one byte in place, as a bad disk or a stray write would."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    with open(path, "r+b") as f:
        f.write(data)


def make_run(runs: Path, units: int = 3) -> Path:
    run_dir = runs / RUN_ID
    store = ShardStore(run_dir)
    for u in range(units):
        docs = [
            DocumentRecord(
                id=record_id("documents", [], {}, f"{u}-{i}"), run_id=RUN_ID, url=f"u{u}{i}", text=f"text {u} {i}" * 20, n_chars=9
            )
            for i in range(5)
        ]
        store.write_unit("documents", f"{u:05d}", docs, run_id=RUN_ID)
        corpus = [
            CorpusRecord(
                id=record_id("corpus", [d.id], {}, d.text), run_id=RUN_ID, kind="knowledge", text=d.text,
                n_tokens=10, cpt_stage=1, source_ids=[d.id],
            )
            for d in docs
        ]
        store.write_unit("corpus", f"{u:05d}", corpus, run_id=RUN_ID)
    (run_dir / "spec.yaml").write_text("name: integrity\nstages: {documents: {}}\n")
    return run_dir


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "runs")


def test_every_store_reader_refuses_a_flipped_byte_naming_the_file(run_dir: Path) -> None:
    store = ShardStore(run_dir)
    assert len(store.read_records("documents")) == 15
    victim = run_dir / "shards" / "documents" / "part-00001.parquet"
    flip_byte(victim)
    for read in (
        lambda: store.read_table("documents"),
        lambda: store.read_records("documents"),
        lambda: store.read_unit_records("documents", "00001"),
        lambda: store.files("documents"),
    ):
        with pytest.raises(CorruptShardError, match=str(victim)):
            read()
    assert len(store.read_unit_records("documents", "00000")) == 5  # the intact units still read


def test_a_missing_or_truncated_shard_is_refused_too(run_dir: Path) -> None:
    store = ShardStore(run_dir)
    victim = run_dir / "shards" / "documents" / "part-00002.parquet"
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(CorruptShardError, match="manifest says"):
        store.read_unit_records("documents", "00002")
    victim.unlink()
    with pytest.raises(CorruptShardError, match="is missing"):
        store.read_unit_records("documents", "00002")


def test_a_file_is_hashed_once_per_process_until_it_changes(run_dir: Path, monkeypatch: Any) -> None:
    calls: list[Path] = []
    real = shards_module.sha256_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(shards_module, "sha256_file", counting)
    for _ in range(3):
        ShardStore(run_dir).read_records("documents")  # a new store each time, as requests do
    assert len(calls) == 3  # 3 files, each hashed once
    victim = run_dir / "shards" / "documents" / "part-00000.parquet"
    stat = victim.stat()
    flip_byte(victim)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with its mtime put back
    with pytest.raises(CorruptShardError, match="part-00000"):
        ShardStore(run_dir).read_records("documents")


def test_stats_and_the_catalog_refuse_a_corrupt_shard(run_dir: Path) -> None:
    assert next(s for s in run_stats(run_dir).stages if s.stage == "documents").rows == 15
    victim = run_dir / "shards" / "corpus" / "part-00002.parquet"
    flip_byte(victim)
    with pytest.raises(CorruptShardError, match=str(victim)):
        run_stats(run_dir)
    with pytest.raises(CorruptShardError, match=str(victim)):
        write_catalog(run_dir)


def test_the_cli_refuses_with_one_line_naming_the_file_exit_1(run_dir: Path, capsys: Any) -> None:
    runs = str(run_dir.parent)
    victim = run_dir / "shards" / "corpus" / "part-00000.parquet"
    flip_byte(victim)
    for argv in (
        ["stats", RUN_ID, "--output-dir", runs],
        ["stats", RUN_ID, "--output-dir", runs, "--sql", "select count(*) from documents"],
        ["catalog", RUN_ID, "--output-dir", runs],
        ["tokenize", RUN_ID, "--output-dir", runs, "--tokenizer", str(run_dir / "no-tokenizer-needed")],
    ):
        assert cli_main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(victim) in err, (argv, err)


def test_verify_checks_a_whole_run(run_dir: Path, capsys: Any) -> None:
    out = io.StringIO()
    assert verify_command(RUN_ID, str(run_dir.parent), out=out) == 0
    assert "verified 6 files" in out.getvalue() and out.getvalue().strip().endswith(": ok")
    flipped = run_dir / "shards" / "documents" / "part-00002.parquet"
    flip_byte(flipped, offset=4)
    missing = run_dir / "shards" / "corpus" / "part-00001.parquet"
    missing.unlink()
    assert cli_main(["verify", RUN_ID, "--output-dir", str(run_dir.parent)]) == 1
    printed = capsys.readouterr().out
    assert str(flipped) in printed and f"{missing}: is missing" in printed
    assert "2 corrupt" in printed
    assert cli_main(["verify", "no-such-run", "--output-dir", str(run_dir.parent)]) == 2


def test_a_corrupt_compacted_manifest_is_named(run_dir: Path, capsys: Any) -> None:
    store = ShardStore(run_dir)
    manifest = store.compact_manifest()
    flip_byte(manifest, offset=manifest.stat().st_size - 2)  # the trailing PAR1 magic
    with pytest.raises(CorruptShardError, match="manifest.parquet"):
        store.manifest_rows()
    assert cli_main(["verify", RUN_ID, "--output-dir", str(run_dir.parent)]) == 1
    assert "manifest.parquet" in capsys.readouterr().out


# -- stats --sql and DuckDB's file system access --------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "select * from read_csv('/etc/passwd')",
        "select * from read_text('/etc/hostname')",
        "select * from glob('/etc/*')",
        "copy (select 1) to '{out}'",
        "attach '{out}.db' as x",
        "set enable_external_access = true",
        "install httpfs",
    ],
)
def test_stats_sql_cannot_reach_outside_the_run(run_dir: Path, tmp_path: Path, capsys: Any, sql: str) -> None:
    out = tmp_path / "written.csv"
    code = cli_main(["stats", RUN_ID, "--output-dir", str(run_dir.parent), "--sql", sql.format(out=out)])
    assert code == 2
    assert "root:" not in capsys.readouterr().out
    assert not out.exists() and not Path(f"{out}.db").exists()


def test_stats_sql_reads_the_run_and_allow_external_lifts_the_restriction(
    run_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    runs = str(run_dir.parent)
    assert cli_main(["stats", RUN_ID, "--output-dir", runs, "--sql", "select count(*) as n from documents"]) == 0
    assert "15" in capsys.readouterr().out
    out = tmp_path / "exported.csv"
    sql = f"copy (select id from documents) to '{out}'"
    assert cli_main(["stats", RUN_ID, "--output-dir", runs, "--sql", sql, "--allow-external"]) == 0
    assert out.read_text().count("\n") == 16


# -- the next stage -------------------------------------------------------------------------


@pytest.mark.slow
def test_the_next_stage_refuses_a_corrupt_upstream_shard(tmp_path: Path, ray_cluster: Any) -> None:
    from pipelines.progress import LogDisplay
    from pipelines.runner import run_session
    from synth.runstate import RunDir
    from synth.spec import parse_spec
    from testing.toy_stages import Behaviour, toy_pipeline

    spec = parse_spec(
        {
            "name": "toy",
            "stages": {"questions": {}, "planning": {}},
            "execution": {"unit_size": 5, "max_units_in_flight": 1},
            "output_dir": "runs",
        }
    )
    buf = io.StringIO()

    def run(stages: Any, run_id: str | None = None) -> Any:
        return run_session(
            spec, run_id=run_id, base_dir=tmp_path, stages=stages, display=LogDisplay(buf), out=buf,
            print_summary=False,
        )

    # Session 1: planning fails in its third unit, so later planning units stay to be done.
    first = run(toy_pipeline(30, planning=Behaviour(fail_unit="10")))
    assert first.outcome.state == "failed"
    store = ShardStore(first.run_dir)
    pending = sorted(store.committed_units("questions") - store.committed_units("planning"))
    victim = store.shard_path("questions", pending[-1])
    flip_byte(victim)
    # Session 2, with the stage fixed: the planning unit reading that shard refuses it.
    try:
        run(toy_pipeline(30), run_id=first.run_id)
    except CorruptShardError:
        pass  # raised after the session by the dataset card's statistics, which read every shard too
    status = RunDir(first.run_dir).read_status()
    assert status is not None and status.state == "failed"
    assert str(victim) in (status.error or ""), status.error
