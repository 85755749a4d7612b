"""The CPT config: the shipped configs validate, and bad ones are refused naming the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from pretrain.config import CPTConfig, load_cpt_config
from synth.errors import SpecError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "cpt"


def _minimal() -> dict[str, Any]:
    return {
        "name": "t",
        "model": {"hf_dir": "embedded"},
        "checkpoint": {"dir": "ckpt"},
        "stages": [
            {
                "name": "stage1",
                "seq_length": 1024,
                "train_steps": 10,
                "global_batch_size": 8,
                "data": {"blend": "blend_cpt1.json"},
                "optim": {"lr": 1e-4, "warmup_steps": 2},
            }
        ],
    }


def _write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "cpt.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("name", ["qwen3_1p7b.yaml", "smoke.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_cpt_config(CONFIGS / name)
    assert cfg.stages


def test_gpu_recipe_is_32k_then_128k_with_context_parallelism_and_a_larger_rope_base() -> None:
    cfg = load_cpt_config(CONFIGS / "qwen3_1p7b.yaml")
    stage1, stage2 = cfg.stages
    assert (stage1.seq_length, stage2.seq_length) == (32768, 131072)
    assert stage2.parallel.context > 1 and stage2.rope.base and stage2.rope.base > 1e6
    assert stage1.data.replay_weight > 0 and cfg.precision == "bf16"
    assert stage1.optim.schedule == "wsd" and cfg.peak_flops_per_device == pytest.approx(989e12)


def test_sbatch_runs_the_trainer_under_torchrun_on_every_node() -> None:
    text = (CONFIGS / "slurm.sbatch").read_text()
    assert "#SBATCH --nodes" in text and "--node-rank=\\${SLURM_NODEID}" in text
    assert "-m pretrain.train" in text


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.update(extra_key=1), "extra_key"),
        (lambda r: r["stages"][0].update(surprise=True), "stages.0.surprise"),
        (lambda r: r["stages"][0]["optim"].update(schedule="wsd"), "wsd_decay_steps"),
        (lambda r: r["stages"][0]["optim"].update(warmup_steps=10), "warmup_steps"),
        (lambda r: r["stages"][0].update(micro_batch_size=3), "micro_batch_size"),
        (lambda r: r["stages"][0].update(parallel={"context": 4}, seq_length=1020), "parallel.context"),
        (lambda r: r["stages"][0]["data"].update(replay_weight=0.1), "replay_blend"),
        (lambda r: r["stages"][0]["data"].update(replay_weight=1.0), "replay_weight"),
        (lambda r: r["stages"].append(copy.deepcopy(r["stages"][0])), "unique"),
        (lambda r: r.update(stages=[]), "stages"),
    ],
)
def test_bad_config_is_refused_naming_the_field(tmp_path: Path, mutate: Any, field: str) -> None:
    raw = _minimal()
    mutate(raw)
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        load_cpt_config(_write(tmp_path, raw))


def test_minimal_config_gets_documented_defaults() -> None:
    cfg = CPTConfig.model_validate(_minimal())
    stage = cfg.stages[0]
    assert (stage.micro_batch_size, stage.parallel.tensor, stage.parallel.context) == (1, 1, 1)
    assert stage.optim.schedule == "cosine" and stage.data.holdout_kinds == []
    assert cfg.precision == "bf16" and cfg.checkpoint.export_hf


def test_missing_file_and_bad_yaml_are_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not found"):
        load_cpt_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="YAML"):
        load_cpt_config(bad)


def test_model_dir_without_config_json_is_named(tmp_path: Path) -> None:
    raw = _minimal()
    raw["model"]["hf_dir"] = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.hf_dir"):
        CPTConfig.model_validate(raw).model.resolve()
