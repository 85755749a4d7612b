"""HF <-> megatron-core conversion: same logits as transformers, and a lossless export."""

from __future__ import annotations

import json
import multiprocessing as mp
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pretrain import convert, model

warnings.filterwarnings("ignore", message=".*Transformer Engine.*")

SEQ = 24


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny matmuls: one intra-op thread is faster, and far faster when other suites share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _perturb(hf: torch.nn.Module, seed: int) -> None:
    """Random values in every tensor (norm weights included) so a swapped mapping cannot hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def _llama_tied(rope_scaling: dict | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=100,  # not a multiple of 128: exercises vocabulary padding
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=50000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        max_position_embeddings=256,
        rope_scaling=rope_scaling,
    )
    return LlamaForCausalLM(cfg)


def _qwen3_untied():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,  # head_dim != hidden / heads, as in real Qwen3 models
        tie_word_embeddings=False,
        max_position_embeddings=256,
    )
    return Qwen3ForCausalLM(cfg)


def _qwen2_bias():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        max_position_embeddings=256,
    )
    return Qwen2ForCausalLM(cfg)


def _qwen3_moe(normalize_top_k: bool = True, tied: bool = False):
    """A tiny random Qwen3-MoE (the paper's base family): 8 experts, 2 per token."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=normalize_top_k,
        tie_word_embeddings=tied,
        max_position_embeddings=256,
    )
    return Qwen3MoeForCausalLM(cfg)


BUILDERS = {
    "llama_tied": lambda: _llama_tied(),
    "llama3_rope_scaling": lambda: _llama_tied(
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    ),
    "linear_rope_scaling": lambda: _llama_tied({"rope_type": "linear", "factor": 4.0}),
    "qwen3_qk_norm_untied": _qwen3_untied,
    "qwen2_qkv_bias": _qwen2_bias,
    "qwen3_moe": _qwen3_moe,
    "qwen3_moe_unnormalized_tied": lambda: _qwen3_moe(normalize_top_k=False, tied=True),
}


@pytest.fixture(scope="module")
def megatron_cpu() -> Iterator[None]:
    """megatron-core patched for CPU, with a one-process gloo group and TP=PP=1."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from pretrain.runtime import megatron_cpu

    megatron_cpu.patch_megatron_for_cpu()
    owns = megatron_cpu.init_cpu_process_group()
    parallel_state.initialize_model_parallel(1, 1)
    yield
    parallel_state.destroy_model_parallel()
    if owns:
        dist.destroy_process_group()


@pytest.fixture(scope="module", params=list(BUILDERS))
def hf_model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, torch.nn.Module]:
    torch.manual_seed(0)
    hf = BUILDERS[request.param]()
    _perturb(hf, seed=1)
    hf.eval()
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return request.param, path, hf


def _mcore_from_hf(path: Path) -> tuple[model.Architecture, torch.nn.Module]:
    arch = model.load_architecture(path)
    config = model.transformer_config(arch, model.ParallelSizes(), torch.float32, use_cpu_initialization=True)
    gpt = model.build_gpt_model(arch, config, "local", seq_length=SEQ)
    convert.load_hf_into_model(gpt, path, arch)
    return arch, gpt.eval()


def _tokens(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (2, SEQ), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _mcore_logits(gpt: torch.nn.Module, ids: torch.Tensor, vocab: int) -> torch.Tensor:
    pos = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    return gpt(ids, pos, attention_mask=None)[..., :vocab]


# ----------------------------------------------------------------------------- parity


def test_converted_gptmodel_gives_hf_logits(
    megatron_cpu: None, hf_model: tuple[str, Path, torch.nn.Module]
) -> None:
    name, path, hf = hf_model
    arch, gpt = _mcore_from_hf(path)
    ids = _tokens(arch.vocab_size)
    with torch.no_grad():
        expected = hf(ids).logits
    diff = (_mcore_logits(gpt, ids, arch.vocab_size) - expected).abs().max().item()
    print(f"{name}: HF vs mcore max |delta logit| {diff:.3e}")
    assert diff < 1e-4, f"{name}: max abs logit difference {diff}"


def test_export_reloads_in_transformers_with_identical_weights_and_logits(
    megatron_cpu: None, hf_model: tuple[str, Path, torch.nn.Module], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    name, path, hf = hf_model
    arch, gpt = _mcore_from_hf(path)
    out = convert.save_hf_dir(convert.full_state_from_model(gpt), arch, path, tmp_path / "export")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    original, again = hf.state_dict(), reloaded.state_dict()
    assert set(original) == set(again)
    for key in original:
        assert torch.equal(original[key], again[key]), f"{name}: {key} changed in the round trip"
    ids = _tokens(arch.vocab_size, seed=3)
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, reloaded(ids).logits)


# ----------------------------------------------------------------------------- layout


def _arch(**overrides: object) -> model.Architecture:
    base = dict(
        family="llama",
        vocab_size=128,
        hidden_size=8,
        ffn_hidden_size=6,
        num_layers=1,
        num_attention_heads=4,
        num_query_groups=2,
        head_dim=2,
        norm_eps=1e-5,
        rope_base=10000.0,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        qkv_bias=False,
        qk_norm=False,
    )
    base.update(overrides)
    return model.Architecture.model_validate(base)


def _labelled_hf_state(arch: model.Architecture) -> dict[str, torch.Tensor]:
    """An HF state whose q/k/v rows hold their head number (q: 0..3, k: 10+g, v: 20+g)."""
    h, hd = arch.hidden_size, arch.head_dim
    p = "model.layers.0."

    def rows(values: list[float]) -> torch.Tensor:
        return torch.tensor([v for v in values for _ in range(hd)]).unsqueeze(1).expand(-1, h).clone()

    return {
        "model.embed_tokens.weight": torch.zeros(arch.vocab_size, h),
        "model.norm.weight": torch.ones(h),
        p + "input_layernorm.weight": torch.ones(h),
        p + "post_attention_layernorm.weight": torch.ones(h),
        p + "self_attn.q_proj.weight": rows([0, 1, 2, 3]),
        p + "self_attn.k_proj.weight": rows([10, 11]),
        p + "self_attn.v_proj.weight": rows([20, 21]),
        p + "self_attn.o_proj.weight": torch.zeros(h, 4 * hd),
        p + "mlp.gate_proj.weight": torch.full((arch.ffn_hidden_size, h), 1.0),
        p + "mlp.up_proj.weight": torch.full((arch.ffn_hidden_size, h), 2.0),
        p + "mlp.down_proj.weight": torch.zeros(h, arch.ffn_hidden_size),
    }


def test_qkv_is_interleaved_per_query_group_and_fc1_is_gate_then_up() -> None:
    arch = _arch()
    state = convert.hf_to_mcore(_labelled_hf_state(arch), arch)
    qkv = state["decoder.layers.0.self_attention.linear_qkv.weight"][:, 0]
    heads = qkv.reshape(-1, arch.head_dim)[:, 0].tolist()
    # group 0: q0 q1 k0 v0 | group 1: q2 q3 k1 v1 (megatron's attention.py split order)
    assert heads == [0, 1, 10, 20, 2, 3, 11, 21]
    fc1 = state["decoder.layers.0.mlp.linear_fc1.weight"][:, 0]
    assert fc1[: arch.ffn_hidden_size].eq(1.0).all() and fc1[arch.ffn_hidden_size :].eq(2.0).all()


def test_mcore_to_hf_inverts_hf_to_mcore_with_vocab_padding() -> None:
    arch = _arch(vocab_size=100, tie_word_embeddings=False, qkv_bias=True, family="qwen2")
    gen = torch.Generator().manual_seed(0)
    hf = {k: torch.randn(v.shape, generator=gen) for k, v in _labelled_hf_state(arch).items()}
    hf["model.embed_tokens.weight"] = torch.randn(100, arch.hidden_size, generator=gen)
    hf["lm_head.weight"] = torch.randn(100, arch.hidden_size, generator=gen)
    for name, rows in (("q", 8), ("k", 4), ("v", 4)):
        hf[f"model.layers.0.self_attn.{name}_proj.bias"] = torch.randn(rows, generator=gen)
    mc = convert.hf_to_mcore(hf, arch, tensor_parallel=2)
    assert mc["embedding.word_embeddings.weight"].shape[0] == 256  # padded to 128 x TP
    assert mc["output_layer.weight"][100:].eq(0).all()
    back = convert.mcore_to_hf(mc, arch)
    assert set(back) == set(hf)
    assert all(torch.equal(back[k], hf[k]) for k in hf)


def test_tensor_that_does_not_match_the_architecture_is_named() -> None:
    arch = _arch()
    state = _labelled_hf_state(arch)
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(7, arch.hidden_size)
    with pytest.raises(convert.ConversionError, match="up_proj"):
        convert.hf_to_mcore(state, arch)
    state = _labelled_hf_state(arch)
    state["model.layers.0.self_attn.extra.weight"] = torch.zeros(1)
    with pytest.raises(convert.ConversionError, match="not mapped"):
        convert.hf_to_mcore(state, arch)


QWEN3_MOE_KEYS = {
    "model_type": "qwen3_moe",
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 8,
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model_type": "qwen2_moe"}, "model_type"),
        ({"num_local_experts": 8}, "num_experts"),
        ({**QWEN3_MOE_KEYS, "decoder_sparse_step": 2}, "decoder_sparse_step"),
        ({**QWEN3_MOE_KEYS, "mlp_only_layers": [0]}, "mlp_only_layers"),
        ({**QWEN3_MOE_KEYS, "shared_expert_intermediate_size": 64}, "shared_expert"),
        ({"use_sliding_window": True, "model_type": "qwen2"}, "sliding_window"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        (
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "original_max_position_embeddings": 4096,
                }
            },
            "original_max_position_embeddings",
        ),
    ],
)
def test_unsupported_hf_configs_are_refused_naming_the_field(change: dict, field: str) -> None:
    cfg = {
        "model_type": "llama",
        "vocab_size": 100,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_theta": 10000.0,
    }
    cfg.update(change)
    with pytest.raises(model.ArchitectureError, match=field):
        model.architecture_from_hf(cfg)


def test_rope_change_is_written_to_the_exported_config(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(
        json.dumps({"model_type": "qwen3", "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}})
    )
    arch = _arch(family="qwen3", qk_norm=True).with_rope(5e6, None, 131072)
    cfg = convert.hf_config_for(arch, src)
    assert cfg["rope_parameters"] == {"rope_theta": 5e6, "rope_type": "default"}
    assert cfg["max_position_embeddings"] == 131072
    scaled = arch.with_rope(None, model.RopeScaling(type="linear", factor=4.0), None)
    assert convert.hf_config_for(scaled, src)["rope_parameters"]["factor"] == 4.0


# ----------------------------------------------------------------------------- TP / PP placement


def _parallel_worker(rank: int, port: int, hf_dir: str, out_dir: str) -> None:
    """One of two gloo ranks: TP=2 logits, then PP=2 layer placement (written to out_dir)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from pretrain.runtime import megatron_cpu

    megatron_cpu.patch_megatron_for_cpu()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        arch = model.load_architecture(Path(hf_dir))
        # Tensor parallel: each rank holds half the heads / half the gate and up rows.
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
        cfg = model.transformer_config(
            arch,
            model.ParallelSizes(tensor=2, sequence_parallel=False),
            torch.float32,
            use_cpu_initialization=True,
        )
        gpt = model.build_gpt_model(arch, cfg, "local", SEQ)
        convert.load_hf_into_model(gpt, Path(hf_dir), arch)
        with torch.no_grad():
            logits = gpt.eval()(
                _tokens(arch.vocab_size), torch.arange(SEQ).expand(2, -1), attention_mask=None
            )
        parts = [torch.empty_like(logits) for _ in range(2)]
        dist.all_gather(parts, logits.contiguous())  # vocab-parallel output: one half per rank
        if rank == 0:
            torch.save(torch.cat(parts, dim=-1)[..., : arch.vocab_size], Path(out_dir) / "tp_logits.pt")
        parallel_state.destroy_model_parallel()
        # Pipeline parallel: rank r holds layer r (renumbered 0) and the matching ends.
        parallel_state.initialize_model_parallel(pipeline_model_parallel_size=2)
        cfg = model.transformer_config(
            arch, model.ParallelSizes(pipeline=2), torch.float32, use_cpu_initialization=True
        )
        stage = model.build_gpt_model(
            arch,
            cfg,
            "local",
            SEQ,
            pre_process=parallel_state.is_pipeline_first_stage(),
            post_process=parallel_state.is_pipeline_last_stage(),
        )
        convert.load_hf_into_model(stage, Path(hf_dir), arch)
        torch.save(dict(stage.state_dict()), Path(out_dir) / f"pp_rank{rank}.pt")
        parallel_state.destroy_model_parallel()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_tensor_and_pipeline_parallel_ranks_receive_the_right_slices(tmp_path: Path) -> None:
    """What the GPU path relies on to load HF weights into TP/PP ranks, run with gloo on CPU."""
    from pretrain.runtime.megatron_cpu import free_port

    torch.manual_seed(0)
    hf = _qwen3_untied()
    _perturb(hf, seed=2)
    hf.eval().save_pretrained(tmp_path / "hf")
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(target=_parallel_worker, args=(r, port, str(tmp_path / "hf"), str(tmp_path)))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0, "a parallel worker failed (see its stderr above)"
    ids = _tokens(100)
    with torch.no_grad():
        expected = hf(ids).logits
    assert (torch.load(tmp_path / "tp_logits.pt") - expected).abs().max().item() < 1e-4
    hf_state = hf.state_dict()
    first, last = torch.load(tmp_path / "pp_rank0.pt"), torch.load(tmp_path / "pp_rank1.pt")
    assert torch.equal(
        first["decoder.layers.0.mlp.linear_fc2.weight"], hf_state["model.layers.0.mlp.down_proj.weight"]
    )
    assert torch.equal(
        last["decoder.layers.0.mlp.linear_fc2.weight"], hf_state["model.layers.1.mlp.down_proj.weight"]
    )
    assert "embedding.word_embeddings.weight" in first and "output_layer.weight" not in first
    assert torch.equal(last["output_layer.weight"][:100], hf_state["lm_head.weight"])
    assert torch.equal(last["decoder.final_layernorm.weight"], hf_state["model.norm.weight"])


def test_fused_transformers5_expert_tensors_map_like_per_expert_ones() -> None:
    """transformers 5 holds experts as gate_up_proj [E, 2I, H] / down_proj [E, H, I] in memory."""
    torch.manual_seed(0)
    hf = _qwen3_moe()
    _perturb(hf, seed=5)
    fused = dict(hf.state_dict())  # in-memory (fused) names
    assert "model.layers.0.mlp.experts.gate_up_proj" in fused
    per_expert = convert.per_expert_hf_state(fused)
    assert "model.layers.0.mlp.experts.7.down_proj.weight" in per_expert
    gate_up = fused["model.layers.1.mlp.experts.gate_up_proj"][3]
    assert torch.equal(per_expert["model.layers.1.mlp.experts.3.gate_proj.weight"], gate_up[:32])
    assert torch.equal(per_expert["model.layers.1.mlp.experts.3.up_proj.weight"], gate_up[32:])
    arch = model.architecture_from_hf(hf.config.to_dict())
    a, b = convert.hf_to_mcore(fused, arch), convert.hf_to_mcore(per_expert, arch)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert set(convert.mcore_to_hf(a, arch)) == set(per_expert)  # export writes the checkpoint names


def _expert_parallel_worker(rank: int, port: int, hf_dir: str, out_dir: str) -> None:
    """One of two gloo ranks with EP=2: its half of the experts, renumbered from 0."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from pretrain.runtime import megatron_cpu

    megatron_cpu.patch_megatron_for_cpu()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        arch = model.load_architecture(Path(hf_dir))
        parallel_state.initialize_model_parallel(expert_model_parallel_size=2, expert_tensor_parallel_size=1)
        cfg = model.transformer_config(
            arch, model.ParallelSizes(expert=2), torch.float32, use_cpu_initialization=True
        )
        gpt = model.build_gpt_model(arch, cfg, "local", SEQ)
        convert.load_hf_into_model(gpt, Path(hf_dir), arch)
        torch.save(dict(gpt.state_dict()), Path(out_dir) / f"ep_rank{rank}.pt")
        parallel_state.destroy_model_parallel()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_expert_parallel_ranks_receive_their_contiguous_experts(tmp_path: Path) -> None:
    """What the GPU path relies on to load HF experts into EP ranks, run with gloo on CPU."""
    from pretrain.runtime.megatron_cpu import free_port

    torch.manual_seed(0)
    hf = _qwen3_moe()
    _perturb(hf, seed=6)
    hf.eval().save_pretrained(tmp_path / "hf")
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(target=_expert_parallel_worker, args=(r, port, str(tmp_path / "hf"), str(tmp_path)))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0, "an expert-parallel worker failed (see its stderr above)"
    hf_state = convert.per_expert_hf_state(hf.state_dict())
    for rank in range(2):
        local = torch.load(tmp_path / f"ep_rank{rank}.pt")
        assert sum(".linear_fc2.weight" in k and "layers.1." in k for k in local) == 4  # 8 experts / EP 2
        for j in range(4):
            e = 4 * rank + j
            src, dst = f"model.layers.1.mlp.experts.{e}.", f"decoder.layers.1.mlp.experts.local_experts.{j}."
            assert torch.equal(local[dst + "linear_fc2.weight"], hf_state[src + "down_proj.weight"])
            assert torch.equal(local[dst + "linear_fc1.weight"][:32], hf_state[src + "gate_proj.weight"])
        assert torch.equal(
            local["decoder.layers.1.mlp.router.weight"], hf_state["model.layers.1.mlp.gate.weight"]
        )


# ----------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_smollm2_135m_parity_and_export_round_trip(megatron_cpu: None, tmp_path: Path) -> None:
    """The embedded SmolLM2-135M-Instruct (Llama, tied embeddings): < 1e-3 in fp32, both ways."""
    from transformers import AutoModelForCausalLM

    from synth.llm.embedded import ensure_model_dir

    path = Path(ensure_model_dir())
    arch, gpt = _mcore_from_hf(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = _tokens(arch.vocab_size, seed=5)
    with torch.no_grad():
        expected = hf(ids).logits
    diff = (_mcore_logits(gpt, ids, arch.vocab_size) - expected).abs().max().item()
    print(f"SmolLM2-135M HF vs mcore max abs logit diff: {diff:.3e}")
    assert diff < 1e-3
    out = convert.save_hf_dir(convert.full_state_from_model(gpt), arch, path, tmp_path / "export")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        diff_export = (reloaded(ids).logits - expected).abs().max().item()
    print(f"SmolLM2-135M exported vs original max abs logit diff: {diff_export:.3e}")
    assert diff_export < 1e-3


# ----------------------------------------------------------------------------- GPU checkpoints


@pytest.mark.slow
@pytest.mark.parametrize("builder", [_qwen3_untied, _qwen3_moe], ids=["qwen3", "qwen3_moe"])
def test_dist_checkpoint_of_a_gpu_run_exports_to_hf_on_cpu(
    megatron_cpu: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, builder: Any
) -> None:
    """`python -m pretrain.convert export` on the format GPU runs write (megatron dist_checkpointing)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from transformers import AutoModelForCausalLM

    from pretrain.checkpoint import TRAIN_STATE_FILE, TrainState, dist_ckpt_metadata

    # Writing one needs CUDA (a stream sync and a CUDA flag tensor); only this test's
    # writer is redirected to the CPU, the reader under test is left alone.
    preload = filesystem_async.FileSystemWriterAsync.preload_tensors
    monkeypatch.setattr(
        filesystem_async.FileSystemWriterAsync,
        "preload_tensors",
        staticmethod(lambda buckets, non_blocking=True: preload(buckets, False)),
    )
    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")

    torch.manual_seed(0)
    hf = builder()
    _perturb(hf, seed=4)
    hf.eval().save_pretrained(tmp_path / "hf")
    arch, gpt = _mcore_from_hf(tmp_path / "hf")
    ckpt = tmp_path / "iter_0000007"
    ckpt.mkdir()
    dist_checkpointing.save({"model": gpt.sharded_state_dict(metadata=dist_ckpt_metadata())}, str(ckpt))
    state = TrainState(
        stage="stage1",
        step=7,
        consumed_samples=56,
        scheduler={},
        seq_length=SEQ,
        global_batch_size=8,
        format="dist",
        arch=arch,
        source_hf_dir=str(tmp_path / "hf"),
    )
    (ckpt / TRAIN_STATE_FILE).write_text(state.model_dump_json())
    monkeypatch.undo()

    assert convert.main(["export", str(ckpt), "--out", str(tmp_path / "out")]) == 0
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in hf.state_dict().items())
