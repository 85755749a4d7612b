"""Layout preflight: every stage's TP x PP x CP x EP x DP checked against the job before stage 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pretrain.config import CPTConfig, load_cpt_config
from pretrain.layout import GIB, LayoutError, check_layouts, estimate_memory, main
from pretrain.model import Architecture, architecture_from_hf

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "cpt"
H100 = 80 * GIB


def _arch(name: str) -> Architecture:
    return architecture_from_hf(json.loads((CONFIGS / "hf_configs" / f"{name}.json").read_text()))


def _config(name: str, **stage_changes: dict) -> CPTConfig:
    raw = yaml.safe_load((CONFIGS / name).read_text())
    for stage in raw["stages"]:
        stage.update(stage_changes.get(stage["name"], {}))
    return CPTConfig.model_validate(raw)


def test_old_16_gpu_stage2_layout_is_refused_on_8_gpus_naming_the_stage_and_a_layout_that_fits() -> None:
    old = _config(
        "qwen3_1p7b.yaml",
        stage2={"parallel": {"tensor": 2, "context": 8}, "recompute": "none"},
    )
    with pytest.raises(LayoutError) as err:
        check_layouts(old, _arch("qwen3-1.7b"), world_size=8, device_memory=H100)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("stages.stage2.parallel: tensor x pipeline x context = 2x1x8 = 16")
    assert "the job has 8" in message and "use parallel: {tensor:" in message


def test_shipped_configs_fit_the_nodes_they_are_written_for() -> None:
    one_node = check_layouts(load_cpt_config(CONFIGS / "qwen3_1p7b.yaml"), _arch("qwen3-1.7b"), 8, H100)
    assert [(p.stage, p.data_parallel, p.parallel.context) for p in one_node] == [
        ("stage1", 2, 2),
        ("stage2", 1, 4),
    ]
    assert all(p.memory.total < 0.75 * H100 for p in one_node)
    four_nodes = check_layouts(
        load_cpt_config(CONFIGS / "qwen3_1p7b_multinode.yaml"), _arch("qwen3-1.7b"), 32, H100
    )
    assert [p.data_parallel for p in four_nodes] == [8, 2]
    moe = check_layouts(load_cpt_config(CONFIGS / "qwen3_30b_a3b.yaml"), _arch("qwen3-30b-a3b"), 64, H100)
    assert [p.parallel.expert for p in moe] == [16, 16] and all(p.memory.total < 0.7 * H100 for p in moe)


def test_a_stage_that_does_not_fit_in_memory_is_refused_with_a_layout_that_does() -> None:
    cfg = _config("qwen3_1p7b.yaml", stage2={"parallel": {"tensor": 1, "context": 1}, "recompute": "none"})
    with pytest.raises(
        LayoutError, match=r"stages\.stage2: needs ~\d+\.\d GiB per GPU .* use parallel"
    ) as err:
        check_layouts(cfg, _arch("qwen3-1.7b"), 8, H100)
    # The suggestion itself passes the preflight.
    fix = str(err.value).split("use parallel: {")[1]
    tensor, context = (int(part.split(":")[1]) for part in fix.split("}")[0].split(","))
    fixed = _config("qwen3_1p7b.yaml", stage2={"parallel": {"tensor": tensor, "context": context}})
    check_layouts(fixed, _arch("qwen3-1.7b"), 8, H100)


@pytest.mark.parametrize(
    ("stage1", "gpus", "problem"),
    [
        (
            {"parallel": {"tensor": 3, "sequence_parallel": False}, "global_batch_size": 96},
            12,
            "tensor=3 must divide the 16 attention heads",
        ),
        ({"parallel": {"pipeline": 3}, "global_batch_size": 96}, 12, "pipeline=3 must divide the 28 layers"),
        ({"global_batch_size": 6, "parallel": {"tensor": 2}}, 8, "global_batch_size=6 must be a multiple"),
        ({"parallel": {"expert": 2}}, 8, "expert / expert_tensor > 1 on a dense model"),
    ],
)
def test_impossible_layouts_are_named_with_one_that_fits(stage1: dict, gpus: int, problem: str) -> None:
    cfg = _config("qwen3_1p7b.yaml", stage1=stage1)
    with pytest.raises(LayoutError, match=rf"^stages\.stage1\.parallel: {problem}.*; use parallel: "):
        check_layouts(cfg, _arch("qwen3-1.7b"), gpus, H100)


def test_memory_estimate_falls_with_context_parallelism_and_recompute() -> None:
    arch = _arch("qwen3-1.7b")
    stage = load_cpt_config(CONFIGS / "qwen3_1p7b.yaml").stage("stage2")

    def total(**changes: object) -> float:
        parallel = stage.parallel.model_copy(update={k: v for k, v in changes.items() if k != "recompute"})
        candidate = stage.model_copy(
            update={"parallel": parallel, "recompute": changes.get("recompute", "none")}
        )
        return estimate_memory(arch, candidate, 8).total

    assert total(context=4) < total(context=2) < total(context=1)
    assert total(context=4, recompute="full") < total(context=4, recompute="selective") < total(context=4)
    moe = _arch("qwen3-30b-a3b")
    moe_stage = load_cpt_config(CONFIGS / "qwen3_30b_a3b.yaml").stage("stage1")
    wider = moe_stage.model_copy(update={"parallel": moe_stage.parallel.model_copy(update={"expert": 32})})
    assert estimate_memory(moe, wider, 64).weights < estimate_memory(moe, moe_stage, 64).weights


def test_preflight_command_prints_each_stage_or_the_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hf_config = str(CONFIGS / "hf_configs" / "qwen3-1.7b.json")
    assert main([str(CONFIGS / "qwen3_1p7b.yaml"), "--gpus", "8", "--hf-config", hf_config]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["stage1", "stage2"]
    assert "TP 2 x PP 1 x CP 4 x DP 1" in out[1] and "GiB per GPU" in out[1]
    assert main([str(CONFIGS / "qwen3_1p7b_multinode.yaml"), "--gpus", "8", "--hf-config", hf_config]) == 2
    assert "stages.stage2.parallel" in capsys.readouterr().err
