"""HF <-> megatron-core weights for the Llama / Qwen2 / Qwen3 dense family and Qwen3-MoE.

The mapping (HF name -> mcore name, per layer ``i``)::

    model.embed_tokens.weight                 -> embedding.word_embeddings.weight   (rows padded)
    model.layers.i.input_layernorm.weight     -> decoder.layers.i.input_layernorm.weight
    self_attn.{q,k,v}_proj.weight (and .bias) -> self_attention.linear_qkv.weight   (interleaved)
    self_attn.{q,k}_norm.weight  (Qwen3)      -> self_attention.{q,k}_layernorm.weight
    self_attn.o_proj.weight                   -> self_attention.linear_proj.weight
    post_attention_layernorm.weight           -> pre_mlp_layernorm.weight
    mlp.{gate,up}_proj.weight                 -> mlp.linear_fc1.weight              (gate ‖ up)
    mlp.down_proj.weight                      -> mlp.linear_fc2.weight
    mlp.gate.weight               (MoE)       -> mlp.router.weight
    mlp.experts.e.{gate,up}_proj.weight (MoE) -> mlp.experts.local_experts.e.linear_fc1.weight (gate ‖ up)
    mlp.experts.e.down_proj.weight      (MoE) -> mlp.experts.local_experts.e.linear_fc2.weight
    model.norm.weight                         -> decoder.final_layernorm.weight
    lm_head.weight (untied only)              -> output_layer.weight                (rows padded)

(transformers 5 holds experts fused in memory, ``mlp.experts.gate_up_proj`` [E, 2I, H] and
``mlp.experts.down_proj`` [E, H, I], but saves the per-expert names above; both are read.)

QKV: mcore's fused projection is laid out per query group — ``[q heads of group g, k_g, v_g]``
for g in groups (megatron/core/transformer/attention.py, get_query_key_value_tensors) — so
a contiguous TP slice holds whole groups. HF's ``repeat_kv`` gives query head j the kv head
``j // (heads/groups)``, the same grouping. Both use the rotate-half RoPE layout, so no
row permutation is needed (unlike Meta's original Llama checkpoints).

The canonical names above are those of the local layer spec at TP=PP=EP=1 ("full"
state). `load_hf_into_model` places a full state into any rank's model: pipeline stages
hold a range of layers (renumbered from 0), tensor-parallel ranks hold a slice (fc1 is
sliced per half: each rank holds its gate rows then its up rows), expert-parallel ranks
hold a contiguous range of experts (renumbered from 0; TE's grouped GEMM names them
``linear_fc1.weight<j>``), and the Transformer Engine spec fuses the pre-attention/pre-MLP
norms into the following linear (``layer_norm_weight``).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pretrain.checkpoint import dist_ckpt_metadata, load_cpu_tensors, read_train_state
from pretrain.model import (
    MCORE_LLAMA3_ROPE,
    Architecture,
    ParallelSizes,
    build_gpt_model,
    padded_vocab_size,
    transformer_config,
)
from pretrain.runtime.megatron_cpu import init_cpu_process_group, patch_megatron_for_cpu

# Files copied as-is from the source HF directory on export (tokenizer and chat template).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)

# The TE layer spec fuses these norms into the next linear layer; same tensor, other name.
_TE_NAMES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}
_LAYER_KEY = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
# A local expert's weights: SequentialMLP (local spec) or TE's grouped GEMM (weight<j>).
_SEQUENTIAL_EXPERT = re.compile(r"^mlp\.experts\.local_experts\.(\d+)\.(linear_fc[12]\.weight)$")
_GROUPED_EXPERT = re.compile(r"^mlp\.experts\.(linear_fc[12])\.weight(\d+)$")
_FUSED_HF_EXPERTS = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")


class ConversionError(ValueError):
    """Weights do not match the architecture (message names the tensor)."""


# --------------------------------------------------------------------------- reading HF


def read_hf_state(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF safetensors checkpoint (single file or sharded with an index)."""
    hf_dir = Path(hf_dir)
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (hf_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(hf_dir / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                state[key] = f.get_tensor(key)
    return state


def per_expert_hf_state(hf: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Expand transformers-5 fused expert tensors into the per-expert names checkpoints use."""
    out: dict[str, torch.Tensor] = {}
    for key, t in hf.items():
        m = _FUSED_HF_EXPERTS.match(key)
        if m is None:
            out[key] = t
            continue
        prefix = f"model.layers.{m.group(1)}.mlp.experts."
        for e in range(t.shape[0]):
            if m.group(2) == "gate_up_proj":  # [E, 2I, H]: gate rows, then up rows
                gate, up = torch.chunk(t[e], 2, dim=0)
                out[f"{prefix}{e}.gate_proj.weight"], out[f"{prefix}{e}.up_proj.weight"] = gate, up
            else:  # [E, H, I]
                out[f"{prefix}{e}.down_proj.weight"] = t[e]
    return out


# --------------------------------------------------------------------------- HF -> mcore


def _interleave_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, arch: Architecture) -> torch.Tensor:
    """Stack per query group: [q heads of g, k_g, v_g] for each group g (works for weights and biases)."""
    groups, hd = arch.num_query_groups, arch.head_dim
    per_group = arch.num_attention_heads // groups
    rest = q.shape[1:]
    q = q.reshape(groups, per_group * hd, *rest)
    k = k.reshape(groups, hd, *rest)
    v = v.reshape(groups, hd, *rest)
    return torch.cat([q, k, v], dim=1).reshape(groups * (per_group + 2) * hd, *rest)


def _split_qkv(qkv: torch.Tensor, arch: Architecture) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `_interleave_qkv`."""
    groups, hd = arch.num_query_groups, arch.head_dim
    per_group = arch.num_attention_heads // groups
    rest = qkv.shape[1:]
    blocks = qkv.reshape(groups, (per_group + 2) * hd, *rest)
    q, k, v = torch.split(blocks, [per_group * hd, hd, hd], dim=1)
    return (
        q.reshape(groups * per_group * hd, *rest),
        k.reshape(groups * hd, *rest),
        v.reshape(groups * hd, *rest),
    )


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    pad = torch.zeros(rows - t.shape[0], *t.shape[1:], dtype=t.dtype)
    return torch.cat([t, pad], dim=0)


def _take(hf: Mapping[str, torch.Tensor], name: str, shape: tuple[int, ...]) -> torch.Tensor:
    if name not in hf:
        raise ConversionError(f"HF checkpoint has no tensor {name!r}")
    t = hf[name]
    if tuple(t.shape) != shape:
        raise ConversionError(f"{name}: shape {tuple(t.shape)}, architecture says {shape}")
    return t


def hf_to_mcore(
    hf: Mapping[str, torch.Tensor], arch: Architecture, tensor_parallel: int = 1
) -> dict[str, torch.Tensor]:
    """Full (unsharded) mcore state for ``arch`` from an HF state dict; every HF tensor is used.

    Vocabulary rows are padded for ``tensor_parallel`` (`padded_vocab_size`).
    """
    h, f, hd = arch.hidden_size, arch.ffn_hidden_size, arch.head_dim
    q_rows, kv_rows = arch.num_attention_heads * hd, arch.num_query_groups * hd
    vocab = padded_vocab_size(arch.vocab_size, tensor_parallel)
    used: set[str] = set()
    hf = per_expert_hf_state(hf) if arch.moe is not None else hf

    def take(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        used.add(name)
        return _take(hf, name, shape)

    out: dict[str, torch.Tensor] = {
        "embedding.word_embeddings.weight": _pad_rows(
            take("model.embed_tokens.weight", (arch.vocab_size, h)), vocab
        ),
        "decoder.final_layernorm.weight": take("model.norm.weight", (h,)),
    }
    for i in range(arch.num_layers):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        out[dst + "input_layernorm.weight"] = take(src + "input_layernorm.weight", (h,))
        out[dst + "self_attention.linear_qkv.weight"] = _interleave_qkv(
            take(src + "self_attn.q_proj.weight", (q_rows, h)),
            take(src + "self_attn.k_proj.weight", (kv_rows, h)),
            take(src + "self_attn.v_proj.weight", (kv_rows, h)),
            arch,
        )
        if arch.qkv_bias:
            out[dst + "self_attention.linear_qkv.bias"] = _interleave_qkv(
                take(src + "self_attn.q_proj.bias", (q_rows,)),
                take(src + "self_attn.k_proj.bias", (kv_rows,)),
                take(src + "self_attn.v_proj.bias", (kv_rows,)),
                arch,
            )
        if arch.qk_norm:
            out[dst + "self_attention.q_layernorm.weight"] = take(src + "self_attn.q_norm.weight", (hd,))
            out[dst + "self_attention.k_layernorm.weight"] = take(src + "self_attn.k_norm.weight", (hd,))
        out[dst + "self_attention.linear_proj.weight"] = take(src + "self_attn.o_proj.weight", (h, q_rows))
        out[dst + "pre_mlp_layernorm.weight"] = take(src + "post_attention_layernorm.weight", (h,))
        if arch.moe is None:
            out[dst + "mlp.linear_fc1.weight"] = torch.cat(
                [take(src + "mlp.gate_proj.weight", (f, h)), take(src + "mlp.up_proj.weight", (f, h))], dim=0
            )
            out[dst + "mlp.linear_fc2.weight"] = take(src + "mlp.down_proj.weight", (h, f))
            continue
        n, i_ = arch.moe.num_experts, arch.moe.expert_ffn_hidden_size
        out[dst + "mlp.router.weight"] = take(src + "mlp.gate.weight", (n, h))
        for e in range(n):
            hf_e, mc_e = f"{src}mlp.experts.{e}.", f"{dst}mlp.experts.local_experts.{e}."
            out[mc_e + "linear_fc1.weight"] = torch.cat(
                [take(hf_e + "gate_proj.weight", (i_, h)), take(hf_e + "up_proj.weight", (i_, h))], dim=0
            )
            out[mc_e + "linear_fc2.weight"] = take(hf_e + "down_proj.weight", (h, i_))
    if arch.tie_word_embeddings:
        # Tied checkpoints sometimes still store lm_head; it must be the embedding.
        if "lm_head.weight" in hf:
            used.add("lm_head.weight")
            if not torch.equal(hf["lm_head.weight"], hf["model.embed_tokens.weight"]):
                raise ConversionError("tie_word_embeddings=true but lm_head.weight differs from embed_tokens")
    else:
        out["output_layer.weight"] = _pad_rows(take("lm_head.weight", (arch.vocab_size, h)), vocab)
    # Rotary caches some exporters write are derived data, not weights.
    unused = sorted(k for k in hf if k not in used and not k.endswith("rotary_emb.inv_freq"))
    if unused:
        raise ConversionError(f"HF tensors not mapped (architecture mismatch?): {unused[:5]}")
    return out


# --------------------------------------------------------------------------- mcore -> HF


def mcore_to_hf(state: Mapping[str, torch.Tensor], arch: Architecture) -> dict[str, torch.Tensor]:
    """HF state dict from a full mcore state (padding rows dropped, tied head omitted)."""
    v, f = arch.vocab_size, arch.ffn_hidden_size

    def get(name: str) -> torch.Tensor:
        if name not in state:
            raise ConversionError(f"mcore state has no tensor {name!r}")
        return state[name]

    out = {
        "model.embed_tokens.weight": get("embedding.word_embeddings.weight")[:v],
        "model.norm.weight": get("decoder.final_layernorm.weight"),
    }
    for i in range(arch.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = get(src + "input_layernorm.weight")
        q, k, vv = _split_qkv(get(src + "self_attention.linear_qkv.weight"), arch)
        out[dst + "self_attn.q_proj.weight"], out[dst + "self_attn.k_proj.weight"] = q, k
        out[dst + "self_attn.v_proj.weight"] = vv
        if arch.qkv_bias:
            qb, kb, vb = _split_qkv(get(src + "self_attention.linear_qkv.bias"), arch)
            out[dst + "self_attn.q_proj.bias"], out[dst + "self_attn.k_proj.bias"] = qb, kb
            out[dst + "self_attn.v_proj.bias"] = vb
        if arch.qk_norm:
            out[dst + "self_attn.q_norm.weight"] = get(src + "self_attention.q_layernorm.weight")
            out[dst + "self_attn.k_norm.weight"] = get(src + "self_attention.k_layernorm.weight")
        out[dst + "self_attn.o_proj.weight"] = get(src + "self_attention.linear_proj.weight")
        out[dst + "post_attention_layernorm.weight"] = get(src + "pre_mlp_layernorm.weight")
        if arch.moe is None:
            gate, up = torch.split(get(src + "mlp.linear_fc1.weight"), [f, f], dim=0)
            out[dst + "mlp.gate_proj.weight"], out[dst + "mlp.up_proj.weight"] = gate, up
            out[dst + "mlp.down_proj.weight"] = get(src + "mlp.linear_fc2.weight")
            continue
        i_ = arch.moe.expert_ffn_hidden_size
        out[dst + "mlp.gate.weight"] = get(src + "mlp.router.weight")
        for e in range(arch.moe.num_experts):
            mc_e, hf_e = f"{src}mlp.experts.local_experts.{e}.", f"{dst}mlp.experts.{e}."
            gate, up = torch.split(get(mc_e + "linear_fc1.weight"), [i_, i_], dim=0)
            out[hf_e + "gate_proj.weight"], out[hf_e + "up_proj.weight"] = gate, up
            out[hf_e + "down_proj.weight"] = get(mc_e + "linear_fc2.weight")
    if not arch.tie_word_embeddings:
        out["lm_head.weight"] = get("output_layer.weight")[:v]
    return {k: t.contiguous() for k, t in out.items()}


# --------------------------------------------------------------------------- placing into a rank's model


def _first_local_expert(model: Any) -> int:
    """Global index of this rank's first expert (expert parallelism splits them in contiguous ranges)."""
    experts = model.config.num_moe_experts
    if not experts or model.config.expert_model_parallel_size == 1:
        return 0
    from megatron.core import parallel_state

    ep_rank = parallel_state.get_expert_model_parallel_rank()
    return ep_rank * (experts // parallel_state.get_expert_model_parallel_world_size())


def _local_to_full_name(model: Any, key: str) -> str:
    """Rank-local state-dict key -> canonical full key (layers and experts renumbered from 0 per rank)."""
    m = _LAYER_KEY.match(key)
    if not m:
        return key
    layer = model.decoder.layers[int(m.group(1))]
    rest = m.group(2)
    for full_name, te_name in _TE_NAMES.items():
        if rest == te_name:
            rest = full_name
    expert = _SEQUENTIAL_EXPERT.match(rest)
    grouped = _GROUPED_EXPERT.match(rest)
    if expert is not None:
        local, weight = int(expert.group(1)), expert.group(2)
        rest = f"mlp.experts.local_experts.{_first_local_expert(model) + local}.{weight}"
    elif grouped is not None:
        local, weight = int(grouped.group(2)), f"{grouped.group(1)}.weight"
        rest = f"mlp.experts.local_experts.{_first_local_expert(model) + local}.{weight}"
    return f"decoder.layers.{layer.layer_number - 1}.{rest}"


def _tp_slice(full: torch.Tensor, param: torch.Tensor, name: str, gated_fc1: bool) -> torch.Tensor:
    """This TP rank's part of ``full`` for a parameter; a replicated parameter gets all of it.

    Expert weights are split over the expert-tensor-parallel group, the rest over the
    tensor-parallel group. The split dimension is the ``partition_dim`` mcore (and
    Transformer Engine) set on TP parameters, or else the one dimension whose size differs.
    """
    if tuple(full.shape) == tuple(param.shape):
        return full
    from megatron.core import parallel_state

    if ".mlp.experts." in name:
        rank = parallel_state.get_expert_tensor_parallel_rank()
        size = parallel_state.get_expert_tensor_parallel_world_size()
    else:
        rank = parallel_state.get_tensor_model_parallel_rank()
        size = parallel_state.get_tensor_model_parallel_world_size()
    dim = getattr(param, "partition_dim", None)
    if dim is None or dim < 0:
        differing = [d for d in range(full.dim()) if full.shape[d] != param.shape[d]]
        if len(differing) != 1:
            raise ConversionError(f"{name}: cannot place {tuple(full.shape)} into {tuple(param.shape)}")
        dim = differing[0]
    if gated_fc1 and name.endswith("linear_fc1.weight"):
        # Each rank holds [its gate rows; its up rows] (mcore's swiglu sharding), not a
        # contiguous slice of [gate; up].
        gate, up = torch.chunk(full, 2, dim=0)
        return torch.cat([torch.chunk(gate, size, dim=0)[rank], torch.chunk(up, size, dim=0)[rank]], dim=0)
    return torch.chunk(full, size, dim=dim)[rank]


def load_full_state_into_model(model: Any, full: Mapping[str, torch.Tensor]) -> None:
    """Copy a full mcore state into this rank's ``model`` (bare GPTModel, any TP/PP rank, any spec).

    Strict: every parameter of the model must be found, with the shape this rank expects.
    """
    missing: list[str] = []
    gated = model.config.gated_linear_unit
    with torch.no_grad():
        for key, param in model.named_parameters():
            full_name = _local_to_full_name(model, key)
            if full_name == "output_layer.weight" and "output_layer.weight" not in full:
                # Tied embeddings on a last pipeline stage: its own copy of the embedding.
                full_name = "embedding.word_embeddings.weight"
            if full_name not in full:
                missing.append(full_name)
                continue
            target = _tp_slice(full[full_name], param, full_name, gated)
            if tuple(target.shape) != tuple(param.shape):
                raise ConversionError(
                    f"{key}: expected shape {tuple(param.shape)}, got {tuple(target.shape)}"
                )
            param.copy_(target.to(param.dtype))
    if missing:
        raise ConversionError(f"mcore tensors missing from the converted state: {missing[:5]}")


def load_hf_into_model(model: Any, hf_dir: Path, arch: Architecture) -> None:
    """Read ``hf_dir`` and place its weights into this rank's bare `GPTModel`."""
    tp = model.config.tensor_model_parallel_size
    load_full_state_into_model(model, hf_to_mcore(read_hf_state(hf_dir), arch, tensor_parallel=tp))


def full_state_from_model(model: Any) -> dict[str, torch.Tensor]:
    """The canonical full state of a TP=PP=EP=1 model (no `_extra_state`, tied head omitted)."""
    c = model.config
    if (c.tensor_model_parallel_size, c.pipeline_model_parallel_size, c.expert_model_parallel_size) != (
        1,
        1,
        1,
    ):
        raise ConversionError("export needs a TP=1, PP=1, EP=1 model; load the checkpoint into one first")
    out: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        if key.endswith("_extra_state") or t is None:
            continue
        out[_local_to_full_name(model, key)] = t.detach().to("cpu", torch.float32)
    return out


# --------------------------------------------------------------------------- writing HF


def hf_config_for(arch: Architecture, source_dir: Path, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The source ``config.json`` with what training may have changed (RoPE, context length)."""
    cfg = json.loads((Path(source_dir) / "config.json").read_text())
    scaling: dict[str, Any] | None = None
    if arch.rope_scaling is not None:
        scaling = {"rope_type": arch.rope_scaling.type, "factor": arch.rope_scaling.factor}
        if arch.rope_scaling.type == "llama3":
            scaling.update(MCORE_LLAMA3_ROPE)
    if "rope_parameters" in cfg:  # transformers >= 5
        params: dict[str, Any] = {"rope_theta": arch.rope_base, "rope_type": "default"}
        if scaling is not None:
            params.update(scaling)
        cfg["rope_parameters"] = params
    else:
        cfg["rope_theta"] = arch.rope_base
        cfg["rope_scaling"] = scaling
    cfg["max_position_embeddings"] = arch.max_position_embeddings
    cfg["tie_word_embeddings"] = arch.tie_word_embeddings
    # transformers >= 5 writes "dtype", older versions "torch_dtype"; keep the file's spelling.
    cfg["torch_dtype" if "torch_dtype" in cfg else "dtype"] = str(dtype).removeprefix("torch.")
    return cfg


def save_hf_dir(
    full_state: Mapping[str, torch.Tensor],
    arch: Architecture,
    source_dir: Path,
    out_dir: Path,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write an HF directory transformers loads: config.json, model.safetensors, tokenizer files.

    ``source_dir`` is the HF directory training started from (its config and tokenizer are
    reused; RoPE and context length come from ``arch``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: t.to(dtype).contiguous() for k, t in mcore_to_hf(full_state, arch).items()}
    tmp = out_dir / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out_dir / "model.safetensors")
    (out_dir / "config.json").write_text(
        json.dumps(hf_config_for(arch, source_dir, dtype), indent=2, sort_keys=True)
    )
    for name in _TOKENIZER_FILES:
        if (Path(source_dir) / name).is_file():
            shutil.copy2(Path(source_dir) / name, out_dir / name)
    return out_dir


# --------------------------------------------------------------------------- checkpoint -> HF (offline)


def export_checkpoint(checkpoint: Path, out_dir: Path, source_dir: Path | None = None) -> Path:
    """A trainer checkpoint (``<ckpt>/<stage>/iter_X``, CPU or GPU format) -> an HF directory.

    Runs in one CPU process whatever the training layout was: the model is built unsharded
    (TP=PP=EP=1, local spec) and megatron's ``dist_checkpointing.load`` reshards a GPU
    checkpoint into it (the local spec maps its norm names to Transformer Engine's, and
    SequentialMLP and TE's grouped experts share one sharded layout, ``experts.linear_fc*``).
    """
    import torch.distributed as dist
    from megatron.core import dist_checkpointing, parallel_state

    checkpoint = Path(checkpoint)
    state = read_train_state(checkpoint)
    source = Path(source_dir or state.source_hf_dir)
    patch_megatron_for_cpu()
    owns_group = init_cpu_process_group()
    owns_state = not parallel_state.model_parallel_is_initialized()
    try:
        if owns_state:
            parallel_state.initialize_model_parallel(1, 1)
        config = transformer_config(state.arch, ParallelSizes(), torch.float32, use_cpu_initialization=True)
        model = build_gpt_model(state.arch, config, "local", state.seq_length)
        if state.format == "torch":
            model.load_state_dict(load_cpu_tensors(checkpoint)["model"])
        else:
            sharded = {"model": model.sharded_state_dict(metadata=dist_ckpt_metadata())}
            model.load_state_dict(dist_checkpointing.load(sharded, str(checkpoint))["model"])
        return save_hf_dir(full_state_from_model(model), state.arch, source, out_dir)
    finally:
        if owns_state:
            parallel_state.destroy_model_parallel()
        if owns_group:
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """``python -m pretrain.convert export CHECKPOINT --out DIR [--source HF_DIR]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pretrain.convert", description="megatron-core checkpoint -> HF"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser(
        "export", help="a trainer checkpoint directory (iter_XXXXXXX) -> an HF model directory"
    )
    exp.add_argument("checkpoint", help="<checkpoint.dir>/<stage>/iter_XXXXXXX")
    exp.add_argument("--out", required=True, help="HF directory to write")
    exp.add_argument(
        "--source", help="HF directory for config and tokenizer (default: the one training started from)"
    )
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(
            Path(args.checkpoint), Path(args.out), Path(args.source) if args.source else None
        )
    except (FileNotFoundError, ConversionError) as err:
        print(f"pretrain.convert: error: {err}")
        return 2
    print(f"exported {args.checkpoint} -> {out}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
