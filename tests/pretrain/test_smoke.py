"""`make cpt-smoke` end to end with a tiny budget: lineage-split held-out losses and TensorBoard events."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from pretrain import smoke

warnings.filterwarnings("ignore", message=".*Transformer Engine.*")


@pytest.fixture
def tiny_template(tmp_path: Path, lineage_workspace: Callable[[], tuple[Path, Path]]) -> tuple[Path, Path]:
    """A lineage run, and the smoke template pointed at a tiny Llama with the run's tokenizer."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    run_dir, tokenizer = lineage_workspace()
    hf_dir = tmp_path / "tiny"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=128,
    )
    config.architectures = ["LlamaForCausalLM"]
    LlamaForCausalLM(config).save_pretrained(hf_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / name, hf_dir / name)
    raw = yaml.safe_load(smoke.DEFAULT_CONFIG.read_text())
    raw["model"]["hf_dir"] = str(hf_dir)
    stage = raw["stages"][0]
    stage.update(seq_length=64, global_batch_size=4, micro_batch_size=2, log_interval=1)
    stage["optim"].update(lr=1e-2, min_lr=1e-3, warmup_steps=0)
    stage["eval"]["batches"] = 1
    template = tmp_path / "smoke.yaml"
    template.write_text(yaml.safe_dump(raw))
    return run_dir, template


def test_smoke_prints_lineage_split_held_out_losses_and_writes_tensorboard_events(
    tiny_template: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, template = tiny_template
    code = smoke.main(["--runs-dir", str(run_dir.parent), "--config", str(template), "--steps", "6"])
    out = capsys.readouterr().out
    lines = {line.split(" (")[0]: line for line in out.splitlines() if "held-out loss" in line}
    same = lines["cpt-smoke: held-out loss, same kind, unseen source"]
    other = lines["cpt-smoke: held-out loss, other kind, unseen source"]
    assert "(knowledge+planning+reasoning)" in same and "(decision+rollout)" in other
    assert "before" in same and "-> after" in other
    assert "texts of held-out sources" in out
    assert code == smoke.EXIT_OK, out  # the same-kind unseen-source loss dropped

    acc = EventAccumulator(str(run_dir / "cpt-smoke" / "tensorboard" / "smoke"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/mfu"} <= tags
    assert {
        "heldout/same_kind_unseen_source",
        "heldout/other_kind_unseen_source",
        "heldout/same_kind_unseen_source/planning",
        "heldout/other_kind_unseen_source/decision",
        "heldout/other_kind_unseen_source/rollout",
    } <= tags
    assert [e.step for e in acc.Scalars("heldout/other_kind_unseen_source")] == [0, 6]


def test_the_smoke_trains_on_the_newest_real_run_never_on_a_preview(tmp_path: Path) -> None:
    import os

    import pyarrow as pa

    from synth.layout import preview_run_id
    from synth.shards import ShardStore

    def corpus_run(run_id: str) -> Path:
        run_dir = tmp_path / run_id
        run_dir.mkdir()
        (run_dir / "spec.yaml").write_text("name: quickstart\n")
        ShardStore(run_dir).write_unit("corpus", "00000", pa.table({"id": ["c1"], "text": ["a text"]}))
        return run_dir

    real = corpus_run("quickstart-20261203-000000-aaaaaa")
    preview = corpus_run(preview_run_id("quickstart"))
    os.utime(preview, (real.stat().st_mtime + 60,) * 2)  # the preview is the newer one
    assert smoke.find_corpus_run(tmp_path) == real
