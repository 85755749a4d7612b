"""The CPT trainer on CPU: exact resume, held-out loss, two stages, schedules, data mixing, MFU."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pretrain import checkpoint, data, flops, model, schedule, train
from pretrain.config import CPTConfig

warnings.filterwarnings("ignore", message=".*Transformer Engine.*")

TRAJECTORIES = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "data"
    / "trajectories"
    / "webdancer_sample_traj.jsonl"
)
KINDS = ("planning", "reasoning", "rollout", "decision")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny matmuls: one intra-op thread is faster, and far faster when other suites share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _texts(n: int) -> list[str]:
    if not TRAJECTORIES.is_file():
        pytest.skip(f"real trajectories not found at {TRAJECTORIES} (the shared data directory is absent)")
    texts = []
    with open(TRAJECTORIES, encoding="utf-8") as f:
        for line in f:
            messages = json.loads(line)["messages"][1:]  # the system prompt is the same everywhere
            texts.append("\n".join(m["content"] for m in messages))
            if len(texts) == n:
                break
    return texts


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny BPE tokenizer and Llama (tied embeddings), and a corpus tokenized by `agentcpt tokenize`."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    from pretrain.tokenize import tokenize_files
    from synth.tokens import load_tokenizer

    root = tmp_path_factory.mktemp("cpt")
    texts = _texts(48)
    # A 384-token vocabulary keeps the output layer small: steps take milliseconds.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=384, special_tokens=["<|endoftext|>"]))
    hf_dir = root / "hf"
    hf_dir.mkdir()
    tok.save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        max_position_embeddings=128,
    )
    cfg.architectures = ["LlamaForCausalLM"]
    LlamaForCausalLM(cfg).save_pretrained(hf_dir)

    rows = [{"text": t, "kind": KINDS[i % 4], "cpt_stage": 1} for i, t in enumerate(texts)]
    pq.write_table(pa.Table.from_pylist(rows), root / "corpus.parquet")
    general = [{"text": t[::-1]} for t in texts[:8]]  # stand-in "general" text for replay
    pq.write_table(pa.Table.from_pylist(general), root / "general.parquet")
    tokenizer = load_tokenizer(hf_dir)
    tokenize_files([root / "corpus.parquet"], tokenizer, str(root / "megatron") + "/", progress_stream=None)
    tokenize_files([root / "general.parquet"], tokenizer, str(root / "general") + "/", progress_stream=None)
    return {
        "root": root,
        "hf": hf_dir,
        "blend": root / "megatron" / "blend_cpt1.json",
        "replay": root / "general" / "blend.json",
    }


def _stage(ws: dict[str, Path], **overrides: Any) -> dict[str, Any]:
    stage: dict[str, Any] = {
        "name": "stage1",
        "seq_length": 64,
        "train_steps": 8,
        "global_batch_size": 4,
        "micro_batch_size": 2,
        "data": {"blend": str(ws["blend"]), "holdout_kinds": ["rollout", "decision"]},
        "optim": {"lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 2, "schedule": "cosine"},
        "eval": {"interval": 100, "batches": 2},
        "log_interval": 4,
    }
    stage.update(overrides)
    return stage


def _config(ws: dict[str, Path], ckpt: Path, stages: list[dict[str, Any]], interval: int = 100) -> CPTConfig:
    return CPTConfig.model_validate(
        {
            "name": "test",
            "model": {"hf_dir": str(ws["hf"])},
            "checkpoint": {"dir": str(ckpt), "interval": interval, "export_hf": False},
            "precision": "fp32",
            "peak_flops_per_device": 3.3e11,
            "stages": stages,
        }
    )


# ----------------------------------------------------------------------------- resume


def test_resume_restores_step_optimizer_and_data_position_so_the_loss_curve_continues(
    workspace: dict[str, Path], tmp_path: Path
) -> None:
    k = 3
    stage = _stage(workspace, train_steps=2 * k)
    straight = train.run(_config(workspace, tmp_path / "straight", [stage]))[0]
    first = train.run(_config(workspace, tmp_path / "resumed", [stage]), exit_after_steps=k)[0]
    assert first.interrupted and len(first.losses) == k

    saved = checkpoint.read_train_state(first.final_checkpoint)
    assert (saved.step, saved.consumed_samples) == (k, k * 4)
    assert saved.scheduler["num_steps"] == k

    second = train.run(_config(workspace, tmp_path / "resumed", [stage]))[0]
    assert [s for s, _ in second.losses] == list(range(k + 1, 2 * k + 1))
    assert [loss for _, loss in first.losses + second.losses] == [loss for _, loss in straight.losses]
    a = torch.load(straight.final_checkpoint / "model_optim.pt", weights_only=True)
    b = torch.load(second.final_checkpoint / "model_optim.pt", weights_only=True)
    for key, value in a["model"].items():
        if torch.is_tensor(value):
            assert torch.equal(value, b["model"][key]), key
    for pid, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][pid]["exp_avg_sq"])
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]


def test_finished_stage_is_skipped_on_rerun(workspace: dict[str, Path], tmp_path: Path) -> None:
    cfg = _config(workspace, tmp_path / "ckpt", [_stage(workspace, train_steps=2, optim={"lr": 1e-3})])
    train.run(cfg)
    again = train.run(cfg)[0]
    assert again.skipped and again.losses == []


# ----------------------------------------------------------------------------- held-out loss, stages


def test_held_out_kinds_are_not_trained_on_and_their_loss_drops(
    workspace: dict[str, Path], tmp_path: Path
) -> None:
    blends = data.stage_blends(workspace["blend"], ["rollout", "decision"], None, 0.0)
    assert all("rollout" not in p and "decision" not in p for p in blends.train.prefixes)
    assert [(e.name, [Path(p).name for p in e.blend.prefixes]) for e in blends.evals if e.blend] == [
        ("held_out_kind/decision", ["cpt1_decision"]),
        ("held_out_kind/rollout", ["cpt1_rollout"]),
    ]
    result = train.run(_config(workspace, tmp_path / "ckpt", [_stage(workspace, train_steps=12)]))[0]
    (start_step, before), (end_step, after) = result.evals[0], result.evals[-1]
    assert (start_step, end_step) == (0, 12)
    assert after < before - 0.2, f"held-out loss {before:.3f} -> {after:.3f}"
    lines = [json.loads(x) for x in (tmp_path / "ckpt" / "stage1" / "metrics.jsonl").read_text().splitlines()]
    logged = [x for x in lines if x["event"] == "train"]
    assert logged and all(x["tokens_per_s"] > 0 and 0 < x["mfu"] < 1 for x in logged)


def test_second_stage_starts_from_the_first_with_its_rope_base_and_exports_hf(
    workspace: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    stages = [
        _stage(workspace, train_steps=2, optim={"lr": 1e-3}),
        _stage(
            workspace,
            name="stage2",
            seq_length=128,
            train_steps=2,
            global_batch_size=2,
            micro_batch_size=1,
            rope={"base": 40000.0},
            optim={"lr": 1e-3, "warmup_steps": 0, "schedule": "wsd", "wsd_decay_steps": 1},
        ),
    ]
    cfg = _config(workspace, tmp_path / "ckpt", stages).model_copy(deep=True)
    cfg.checkpoint.export_hf = True
    first, second = train.run(cfg)
    assert checkpoint.read_train_state(second.final_checkpoint).arch.rope_base == 40000.0
    log = (tmp_path / "ckpt" / "stage2" / "metrics.jsonl").read_text()
    assert str(first.final_checkpoint) in log  # stage 2's weights came from stage 1's final checkpoint
    exported = tmp_path / "ckpt" / "stage2" / "hf"
    hf_cfg = AutoConfig.from_pretrained(exported)
    assert hf_cfg.rope_parameters["rope_theta"] == 40000.0 and hf_cfg.max_position_embeddings == 128
    AutoModelForCausalLM.from_pretrained(exported)  # loads without missing or unexpected weights

    # Offline export (what a GPU run uses) of the same checkpoint gives the same weights.
    from safetensors.torch import load_file

    from pretrain.convert import export_checkpoint

    again = export_checkpoint(second.final_checkpoint, tmp_path / "offline")
    a, b = load_file(exported / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stage_without_its_predecessor_checkpoint_is_refused(
    workspace: dict[str, Path], tmp_path: Path
) -> None:
    stages = [_stage(workspace, train_steps=4), _stage(workspace, name="stage2", train_steps=4)]
    with pytest.raises(FileNotFoundError, match="stage1"):
        train.run(_config(workspace, tmp_path / "ckpt", stages), only_stage="stage2")


def test_cpu_runtime_refuses_model_parallel_layouts(workspace: dict[str, Path], tmp_path: Path) -> None:
    stage = _stage(workspace, parallel={"tensor": 2})
    with pytest.raises(ValueError, match="parallel"):
        train.run(_config(workspace, tmp_path / "ckpt", [stage]))


# ----------------------------------------------------------------------------- data mixing


def test_replay_weight_is_the_share_of_general_data(workspace: dict[str, Path]) -> None:
    blends = data.stage_blends(workspace["blend"], ["decision"], workspace["replay"], 0.2)
    replay = [w for p, w in zip(blends.train.prefixes, blends.train.weights, strict=True) if "general" in p]
    assert sum(replay) == pytest.approx(0.2) and sum(blends.train.weights) == pytest.approx(1.0)


def test_unknown_holdout_kind_is_named(workspace: dict[str, Path]) -> None:
    with pytest.raises(data.DataError, match="holdout_kinds.*tool_use"):
        data.stage_blends(workspace["blend"], ["tool_use"], None, 0.0)


# ----------------------------------------------------------------------------- schedules, MFU


class _OneParamOptimizer:
    def __init__(self) -> None:
        self.param_groups = [{"params": [], "lr": 0.0}]


@pytest.mark.parametrize(
    ("optim", "expected"),
    [
        (
            {"lr": 1.0, "min_lr": 0.1, "warmup_steps": 2, "schedule": "cosine"},
            {0: 0.0, 1: 0.5, 2: 1.0, 6: 0.55, 10: 0.1},
        ),
        (
            {
                "lr": 1.0,
                "min_lr": 0.0,
                "warmup_steps": 2,
                "schedule": "wsd",
                "wsd_decay_steps": 4,
                "wsd_decay_style": "linear",
            },
            {2: 1.0, 6: 1.0, 8: 0.5, 10: 0.0},
        ),
    ],
)
def test_megatron_scheduler_warms_up_then_decays(optim: dict[str, Any], expected: dict[int, float]) -> None:
    from pretrain.config import OptimConfig

    opt = _OneParamOptimizer()
    sched = schedule.make_scheduler(opt, OptimConfig.model_validate(optim), train_steps=10)
    seen = {}
    for step in range(11):
        seen[step] = opt.param_groups[0]["lr"]
        sched.step(1)
    for step, lr in expected.items():
        assert seen[step] == pytest.approx(lr), f"step {step}"


def test_mfu_counts_6n_plus_causal_attention() -> None:
    arch = model.Architecture(
        family="llama",
        vocab_size=1000,
        hidden_size=64,
        ffn_hidden_size=128,
        num_layers=2,
        num_attention_heads=4,
        num_query_groups=2,
        head_dim=16,
        norm_eps=1e-5,
        rope_base=1e4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        qkv_bias=False,
        qk_norm=False,
    )
    n = 2 * (64 * 16 * (8 + 4) + 3 * 64 * 128) + 64 * 1000
    assert flops.matmul_params(arch) == n
    assert flops.training_flops_per_token(arch, 512) == 6 * n + 2 * 6 * 512 * 64
    assert flops.mfu(1000.0, 1e9, devices=2, peak_flops_per_device=1e12) == pytest.approx(0.5)


def test_cli_reports_a_bad_config_in_one_line_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agentcpt.cli import main as agentcpt

    bad = tmp_path / "cpt.yaml"
    bad.write_text("name: x\nmodel: {hf_dir: embedded}\ncheckpoint: {dir: ckpt}\nstages: []\n")
    assert agentcpt(["cpt", str(bad)]) == 2
    assert "stages" in capsys.readouterr().err
    assert train.main([str(tmp_path / "missing.yaml")]) == 2
    no_data = tmp_path / "no_data.yaml"
    no_data.write_text((Path(__file__).resolve().parents[2] / "configs" / "cpt" / "smoke.yaml").read_text())
    assert agentcpt(["cpt", str(no_data)]) == 2
    assert "stages.smoke.data.blend" in capsys.readouterr().err


def test_checkpoint_directories_are_replaced_atomically(workspace: dict[str, Path], tmp_path: Path) -> None:
    cfg = _config(workspace, tmp_path / "ckpt", [_stage(workspace, train_steps=4)], interval=2)
    cfg.checkpoint.keep_last = 1
    train.run(cfg)
    stage_dir = tmp_path / "ckpt" / "stage1"
    assert sorted(p.name for p in stage_dir.glob("iter_*")) == ["iter_0000004"]
    assert (stage_dir / "latest").read_text() == "iter_0000004"
    shutil.rmtree(stage_dir / "iter_0000004")
    with pytest.raises(FileNotFoundError, match="latest"):
        checkpoint.latest_checkpoint(stage_dir)


# ----------------------------------------------------------------------------- make cpt-smoke


def test_smoke_without_a_corpus_says_run_make_synth_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pretrain import smoke

    assert smoke.main(["--runs-dir", str(tmp_path)]) == 2
    assert "make synth" in capsys.readouterr().err


def test_smoke_config_holds_out_decisions_and_rollouts_of_the_corpus(
    workspace: dict[str, Path], tmp_path: Path
) -> None:
    from pretrain import smoke

    cfg = smoke.smoke_config(smoke.DEFAULT_CONFIG, workspace["blend"], tmp_path / "out", steps=3)
    stage = cfg.stages[0]
    assert stage.data.holdout_kinds == ["decision", "rollout"] and stage.data.blend == str(workspace["blend"])
    assert (
        stage.train_steps == 3
        and cfg.checkpoint.dir == str(tmp_path / "out")
        and cfg.model.hf_dir == "embedded"
    )


# ----------------------------------------------------------------------------- preflight, document masks


def test_layout_preflight_refuses_a_later_stage_before_any_step(
    workspace: dict[str, Path], tmp_path: Path
) -> None:
    from pretrain.layout import LayoutError

    stages = [
        _stage(workspace, train_steps=4),
        _stage(workspace, name="stage2", seq_length=128, parallel={"tensor": 2, "context": 8}),
    ]
    with pytest.raises(
        LayoutError, match=r"^stages\.stage2\.parallel: .* = 16 devices per replica, the job has 1"
    ):
        train.run(_config(workspace, tmp_path / "ckpt", stages))
    assert not (tmp_path / "ckpt" / "stage1").exists()  # stage 1 never started


def test_document_masks_reach_the_loop_and_change_what_packed_short_documents_learn(
    workspace: dict[str, Path], tmp_path: Path
) -> None:
    """Short documents (sentences), several per 64-token sample: masks change every step's loss."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pretrain.tokenize import tokenize_files
    from synth.tokens import load_tokenizer

    sentences = [s.strip() for t in _texts(8) for s in t.split(". ") if 20 < len(s.strip()) < 120][:400]
    rows = [{"text": s, "kind": KINDS[i % 2], "cpt_stage": 1} for i, s in enumerate(sentences)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "short.parquet")
    tokenize_files(
        [tmp_path / "short.parquet"],
        load_tokenizer(workspace["hf"]),
        str(tmp_path / "short") + "/",
        progress_stream=None,
    )
    short = {**workspace, "blend": tmp_path / "short" / "blend_cpt1.json"}

    def losses(mask: bool) -> list[float]:
        stage = _stage(short, train_steps=3, optim={"lr": 1e-2, "warmup_steps": 0})
        stage["data"] = {"blend": str(short["blend"]), "document_mask": mask}
        result = train.run(_config(short, tmp_path / f"ckpt-{mask}", [stage]))[0]
        return [loss for _, loss in result.losses] + [result.evals[-1][1]]

    masked, unmasked = losses(True), losses(False)
    assert masked[0] != unmasked[0]  # the same first batch, attended differently
    assert max(abs(a - b) for a, b in zip(masked, unmasked, strict=True)) > 1e-3
    log = (tmp_path / "ckpt-True" / "stage1" / "metrics.jsonl").read_text()
    assert "document masks on" in log


# ----------------------------------------------------------------------------- TensorBoard


def _scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_loss_lr_grad_norm_throughput_mfu_and_each_held_out_kind(
    workspace: dict[str, Path], tmp_path: Path
) -> None:
    train.run(_config(workspace, tmp_path / "ckpt", [_stage(workspace, train_steps=4)]))
    scalars = _scalars(tmp_path / "ckpt" / "tensorboard" / "stage1")
    for tag in ("train/loss", "train/lr", "train/grad_norm"):
        assert [s for s, _ in scalars[tag]] == [1, 2, 3, 4], tag
    assert [s for s, _ in scalars["train/tokens_per_s"]] == [4] and 0 < scalars["train/mfu"][0][1] < 1
    for tag in (
        "heldout/held_out_kind/decision",
        "heldout/held_out_kind/rollout",
        "heldout/held_out_kind",
        "heldout/all",
    ):
        assert [s for s, _ in scalars[tag]] == [0, 4], tag


def test_wandb_requested_without_the_package_is_a_one_line_error(
    workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from pretrain.metrics import TrackerError

    if importlib.util.find_spec("wandb") is not None:
        pytest.fail("this test expects wandb to be absent from the environment")
    monkeypatch.setenv("WANDB_PROJECT", "agentcpt-test")
    with pytest.raises(
        TrackerError, match=r"WANDB_PROJECT is set but wandb is not installed \(pip install wandb\)"
    ):
        train.run(
            _config(workspace, tmp_path / "ckpt", [_stage(workspace, train_steps=1, optim={"lr": 1e-3})])
        )


# ----------------------------------------------------------------------------- MoE


def test_qwen3_moe_trains_on_cpu_and_resumes_exactly(workspace: dict[str, Path], tmp_path: Path) -> None:
    """The paper's base family: router + experts train through the same loop, and resume is exact."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    hf_dir = tmp_path / "moe"
    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        router_aux_loss_coef=0.01,
        tie_word_embeddings=False,
        max_position_embeddings=128,
    )
    Qwen3MoeForCausalLM(cfg).save_pretrained(hf_dir)
    shutil.copy(workspace["hf"] / "tokenizer.json", hf_dir / "tokenizer.json")
    moe_ws = {**workspace, "hf": hf_dir}
    stage = _stage(moe_ws, train_steps=4)
    straight = train.run(_config(moe_ws, tmp_path / "straight", [stage]))[0]
    assert straight.losses[-1][1] < straight.losses[0][1]
    assert straight.evals[-1][1] < straight.evals[0][1]
    train.run(_config(moe_ws, tmp_path / "resumed", [stage]), exit_after_steps=2)
    resumed = train.run(_config(moe_ws, tmp_path / "resumed", [stage]))[0]
    assert [loss for _, loss in resumed.losses] == [loss for _, loss in straight.losses[2:]]
    state = checkpoint.read_train_state(resumed.final_checkpoint)
    assert state.arch.moe is not None and state.arch.moe.num_experts == 4


# ----------------------------------------------------------------------------- the GPU path, as far as CPU can check


def test_gpu_runtime_refuses_to_start_without_transformer_engine_before_touching_cuda(
    workspace: dict[str, Path], tmp_path: Path
) -> None:
    import importlib.util

    from pretrain.runtime.gpu import GpuRuntime, GpuSetupError

    if importlib.util.find_spec("transformer_engine") is not None:
        pytest.fail("this test expects Transformer Engine to be absent (CPU machine)")
    with pytest.raises(
        GpuSetupError,
        match=r"Transformer Engine is missing .*pip install --no-build-isolation -e '\.\[gpu\]'",
    ) as err:
        GpuRuntime(_config(workspace, tmp_path / "ckpt", [_stage(workspace)]))
    assert "\n" not in str(err.value)


def test_gpu_kernels_are_fused_and_the_reference_kernels_are_plain() -> None:
    arch = model.architecture_from_hf(
        json.loads(
            (Path(__file__).resolve().parents[2] / "configs/cpt/hf_configs/qwen3-30b-a3b.json").read_text()
        )
    )
    fused = model.fused_kernel_options(arch, "fused")
    assert (
        fused["bias_activation_fusion"] and fused["apply_rope_fusion"] and fused["cross_entropy_loss_fusion"]
    )
    assert fused["moe_permute_fusion"] and fused["moe_router_fusion"]
    # Gradient-accumulation fusion needs apex's CUDA extension; on where it imports.
    assert fused["gradient_accumulation_fusion"] is False  # not importable here
    reference = model.fused_kernel_options(arch, "reference")
    assert not any(reference.values())
    selective = model.recompute_options("selective", arch, "fused")
    assert selective == {"recompute_granularity": "selective", "recompute_modules": ["core_attn", "moe_act"]}


def test_a_random_validation_share_without_documents_is_refused_not_looped_on(
    workspace: dict[str, Path], tmp_path: Path
) -> None:
    """12 documents per kind: 1% of them is none, where megatron's GPTDataset would spin forever."""
    stage = _stage(workspace, train_steps=1, optim={"lr": 1e-3})
    stage["data"] = {"blend": str(workspace["blend"]), "valid_fraction": 0.01}
    with pytest.raises(data.DataError, match=r"valid_fraction=0\.01 holds out no document of cpt1_planning"):
        train.run(_config(workspace, tmp_path / "ckpt", [stage]))
