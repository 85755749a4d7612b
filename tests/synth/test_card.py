"""The dataset card: a run folder that ``datasets.load_dataset(folder, "<stage>")`` reads offline,
with the spec's license and sources, the run's provenance and its figures."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import yaml

from pipelines.rundirs import output_changing_difference
from synth.card import card_configs, render_card, write_dataset_card
from synth.catalog import run_stats
from synth.layout import RunLayout
from synth.records import DocumentRecord, Failure
from synth.shards import ShardStore
from synth.spec import parse_spec
from synth.stages import stage_names

datasets.disable_progress_bars()


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def header(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def _doc(i: int) -> DocumentRecord:
    return DocumentRecord(id=f"d{i}", run_id="r", url=f"https://x.example/{i}", text="text " * 50, n_chars=250)


def test_configs_name_only_stages_with_rows_and_failed_ledgers_with_rows(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    store.write_unit("documents", "00000", [_doc(1), _doc(2)], [Failure(input_ids=["x"], error_kind="too_short", message="m")])
    store.write_unit("memory", "00000", [], [])  # a stage that committed nothing to read
    names = [(c.config_name, c.path) for c in card_configs(RunLayout(tmp_path))]
    assert names == [("documents", "shards/documents/*.parquet"), ("documents_failed", "failed/documents/*.parquet")]


def test_the_license_and_sources_come_from_the_spec_and_do_not_block_a_resume(tmp_path: Path) -> None:
    spec = parse_spec(
        {"name": "lic", "stages": {"documents": {}}, "card": {"license": "cc-by-4.0", "source_datasets": ["org/pages"]}}
    )
    ShardStore(tmp_path).write_unit("documents", "00000", [_doc(1)], [])
    meta = header(render_card(RunLayout(tmp_path), spec))
    assert meta["license"] == "cc-by-4.0" and meta["source_datasets"] == ["org/pages"]
    assert meta["pretty_name"] == "lic"
    other = parse_spec({"name": "lic", "stages": {"documents": {}}, "card": {"license": "mit"}})
    assert output_changing_difference(spec, other) is None  # card metadata is not an output


@pytest.mark.slow
def test_a_finished_run_has_a_card_and_datasets_loads_every_config_from_it(full_run: Path) -> None:
    card = (full_run / "README.md").read_text(encoding="utf-8")  # written by the run itself
    meta = header(card)
    assert meta["license"] == "apache-2.0"
    assert meta["source_datasets"] == ["Alibaba-NLP/WebDancer sample trajectories"]
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert [n for n in configs if not n.endswith("_failed")] == list(stage_names())
    assert configs["corpus"].get("default") is True
    store = ShardStore(full_run)
    for name, config in configs.items():
        stage, kind = (name[: -len("_failed")], "failed") if name.endswith("_failed") else (name, "records")
        assert config["data_files"] == [{"split": "train", "path": f"{'failed' if kind == 'failed' else 'shards'}/{stage}/*.parquet"}]
        ds = datasets.load_dataset(str(full_run), name, split="train")
        assert ds.num_rows == sum(r.rows for r in store.manifest_rows(stage) if r.kind == kind) > 0, name
    # The card's figures are the run's.
    stats = run_stats(full_run)
    for s in stats.stages:
        assert f"| {s.stage} | {s.rows} | {s.failed} |" in card
    assert "generator model: `fake-model`" in card and "`inputs/traj.jsonl`" in card
    assert write_dataset_card(full_run).read_text(encoding="utf-8").split("## Provenance")[0] == card.split("## Provenance")[0]
