"""Held-out data split by source lineage: no held-out text shares a trajectory, question or document with a trained one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from pretrain import data
from pretrain.blend import load_blend
from pretrain.lineage import HELDOUT_FILE, CorpusText, HeldOut, Lineage, split_by_lineage
from pretrain.tokenize import tokenize_command
from synth.shards import ShardStore

SOURCE_STAGES = {"documents", "questions", "rollouts"}


def _all_records(run_dir: Path) -> dict[str, dict]:
    """Every record of the run by id, with its stage (read independently of pretrain.lineage)."""
    store = ShardStore(run_dir)
    out = {}
    for stage in (
        "documents",
        "memory",
        "questions",
        "planning",
        "reasoning",
        "rollouts",
        "decisions",
        "corpus",
    ):
        for f in store.files(stage):
            for row in pq.read_table(f).to_pylist():
                out[row["id"]] = {**row, "stage": stage}
    return out


def _ancestor_sources(record_id: str, records: dict[str, dict]) -> set[str]:
    found, todo = set(), [record_id]
    while todo:
        rid = todo.pop()
        row = records.get(rid)
        if row is None:
            continue
        if row["stage"] in SOURCE_STAGES:
            found.add(rid)
        todo += row["parent_ids"] or []
    return found


def test_no_held_out_text_shares_a_source_id_with_a_trained_one(
    lineage_workspace: Callable[[], tuple[Path, Path]],
) -> None:
    run_dir, _ = lineage_workspace()
    assert tokenize_command(run_id=run_dir.name, output_dir=str(run_dir.parent), heldout_fraction=0.2) == 0
    heldout = HeldOut.model_validate_json((run_dir / "megatron" / HELDOUT_FILE).read_text())
    records = _all_records(run_dir)
    corpus = {rid: r for rid, r in records.items() if r["stage"] == "corpus"}
    held_sources = set().union(*(_ancestor_sources(rid, records) for rid in heldout.ids))
    trained_sources = set().union(
        *(_ancestor_sources(rid, records) for rid in corpus if rid not in heldout.ids)
    )
    assert held_sources and trained_sources
    assert held_sources.isdisjoint(trained_sources)
    # Every kind keeps training texts, and every kind with several source groups lends some.
    held_kinds = {corpus[rid]["kind"] for rid in heldout.ids}
    trained_kinds = {r["kind"] for rid, r in corpus.items() if rid not in heldout.ids}
    assert held_kinds == trained_kinds == {"planning", "reasoning", "rollout", "decision", "knowledge"}
    # The audit file names each held-out text's sources as the lineage says.
    for rid, sources in heldout.texts.items():
        assert set(sources) == _ancestor_sources(rid, records)


def test_held_out_texts_go_to_heldout_datasets_that_the_trainer_evaluates_by_group(
    lineage_workspace: Callable[[], tuple[Path, Path]],
) -> None:
    run_dir, _ = lineage_workspace()
    tokenize_command(run_id=run_dir.name, output_dir=str(run_dir.parent), heldout_fraction=0.2)
    heldout = HeldOut.model_validate_json((run_dir / "megatron" / HELDOUT_FILE).read_text())
    corpus = {r["id"]: r for r in ShardStore(run_dir).read_table("corpus").to_pylist()}
    blend = load_blend(run_dir / "megatron" / "blend_cpt1.json")
    for d in blend.datasets:
        in_split = [
            r
            for rid, r in corpus.items()
            if r["kind"] == d.kind and (rid in heldout.ids) == (d.split == "heldout")
        ]
        assert d.documents == len(in_split), (d.kind, d.split)
        assert (d.weight == 0.0) == (d.split == "heldout")
    assert all(d.split == "train" for d in blend.datasets if d.prefix in " ".join(blend.data_path))

    blends = data.stage_blends(run_dir / "megatron" / "blend_cpt1.json", ["decision", "rollout"], None, 0.0)
    assert all(not p.endswith("_heldout") for p in blends.train.prefixes)
    assert [e.name for e in blends.evals] == [
        "other_kind_unseen_source/decision",
        "other_kind_unseen_source/rollout",
        "same_kind_unseen_source/knowledge",
        "same_kind_unseen_source/planning",
        "same_kind_unseen_source/reasoning",
    ]
    assert all(p.endswith("_heldout") for e in blends.evals if e.blend for p in e.blend.prefixes)


def test_texts_sharing_any_source_are_held_out_together() -> None:
    # q1 and q2 share document d1; q3 stands alone; t9 is an imported trajectory.
    lineage = Lineage(
        parents={
            "q1": ["m1"],
            "q2": ["m1", "m2"],
            "q3": ["m3"],
            "m1": ["d1"],
            "m2": ["d2"],
            "m3": ["d3"],
            "p1": ["q1"],
            "p2": ["q2"],
            "p3": ["q3"],
            "r1": ["q1"],
            "dec9": ["t9"],
            "t9": [],
        },
        stage_of={
            "q1": "questions",
            "q2": "questions",
            "q3": "questions",
            "m1": "memory",
            "m2": "memory",
            "m3": "memory",
            "d1": "documents",
            "d2": "documents",
            "d3": "documents",
            "p1": "planning",
            "p2": "planning",
            "p3": "planning",
            "r1": "rollouts",
            "dec9": "decisions",
            "t9": "rollouts",
        },
    )
    texts = [
        CorpusText("c-p1", "planning", ("p1",)),
        CorpusText("c-p2", "planning", ("p2",)),
        CorpusText("c-p3", "planning", ("p3",)),
        CorpusText("c-r1", "rollout", ("r1",)),
        CorpusText("c-t9", "rollout", ("t9",)),
        CorpusText("c-dec9", "decision", ("dec9",)),
    ]
    assert lineage.text_sources(texts[3]) == {"r1", "q1", "d1"}
    for seed in range(20):
        held = split_by_lineage(texts, lineage, fraction=0.5, seed=seed).ids
        # c-p1, c-p2 and c-r1 share d1 (and q1): all or none of them.
        assert len(held & {"c-p1", "c-p2", "c-r1"}) in (0, 3)
        assert ("c-t9" in held) == ("c-dec9" in held)
        assert {"c-p1", "c-p2", "c-p3"} - held, "planning kept something to train on"
    assert split_by_lineage(texts, lineage, fraction=0.0).ids == frozenset()


def test_the_split_is_stable_across_tokenizations(lineage_workspace: Callable[[], tuple[Path, Path]]) -> None:
    from pretrain.lineage import read_run

    run_dir, _ = lineage_workspace()
    texts, lineage = read_run(run_dir)
    first = split_by_lineage(texts, lineage, 0.2)
    again = split_by_lineage(list(reversed(texts)), lineage, 0.2)
    assert first.ids == again.ids and first.ids
