"""HF config -> megatron-core `GPTModel` for Llama / Qwen2 / Qwen3 dense and Qwen3-MoE.

Three steps, each a plain function:

* `architecture_from_hf(config_json)` reads an HF ``config.json`` into an `Architecture`
  (the facts both sides of the conversion must agree on) and refuses what this module cannot
  represent faithfully (sliding windows, YaRN, biases other than Qwen2's QKV bias, MoE
  layouts other than Qwen3-MoE's every-layer experts without a shared expert).
* `transformer_config(arch, ...)` builds the `TransformerConfig` (RMSNorm, SwiGLU, RoPE, GQA,
  Qwen3 QK-norm, MoE routing, parallel sizes, precision, fused kernels).
* `build_gpt_model(...)` builds the `GPTModel` with a layer spec: Transformer Engine on GPU
  (fused kernels, flash attention, grouped-GEMM experts, needed for context parallelism),
  the local spec on CPU.

Nothing here knows about CUDA being absent; `pretrain.runtime.megatron_cpu` patches
megatron-core before a CPU build.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

Family = Literal["llama", "qwen2", "qwen3", "qwen3_moe"]
LayerImpl = Literal["transformer_engine", "local"]
# fused: the GPU kernels (TE attention, fused SwiGLU/RoPE/cross-entropy, grouped-GEMM experts,
# all-to-all dispatch); reference: plain PyTorch ops, the only ones that run on CPU.
Kernels = Literal["fused", "reference"]

_FAMILY_BY_MODEL_TYPE: dict[str, Family] = {
    "llama": "llama",
    "mistral": "llama",  # same weights layout; sliding windows are refused below
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3_moe",
}

# mcore's Llama-3 RoPE scaling hardcodes these (RotaryEmbedding._apply_scaling); an HF config
# with other values cannot be represented, so it is refused instead of silently changed.
MCORE_LLAMA3_ROPE = {
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


class ArchitectureError(ValueError):
    """The HF model cannot be represented by this converter (message names the field)."""


class RopeScaling(BaseModel):
    """RoPE frequency scaling, as both HF and megatron-core can express it."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["linear", "llama3"] = Field(
        description="linear: positions divided by factor (HF 'linear'); llama3: Llama-3.1 frequency-band scaling"
    )
    factor: PositiveFloat = Field(description="scaling factor (> 1 stretches the context)")


class MoeArchitecture(BaseModel):
    """The mixture-of-experts MLP of every layer (Qwen3-MoE: no shared expert, softmax router)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    num_experts: PositiveInt = Field(description="routed experts per layer (HF num_experts)")
    top_k: PositiveInt = Field(description="experts per token (HF num_experts_per_tok)")
    expert_ffn_hidden_size: PositiveInt = Field(
        description="SwiGLU width of one expert (HF moe_intermediate_size)"
    )
    normalize_top_k: bool = Field(
        description="renormalise the top-k routing weights to sum to 1 (HF norm_topk_prob)"
    )
    aux_loss_coeff: float = Field(ge=0, description="load-balancing loss weight (HF router_aux_loss_coef)")


class Architecture(BaseModel):
    """What a checkpoint is: the shapes and the numerics of its layers (dense or Qwen3-MoE)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    family: Family = Field(
        description="weights layout family: llama (also SmolLM2), qwen2 (QKV bias), qwen3 (QK-norm), "
        "qwen3_moe (QK-norm, routed experts)"
    )
    vocab_size: PositiveInt = Field(description="tokenizer vocabulary size (rows of the HF embedding)")
    hidden_size: PositiveInt = Field(description="model width")
    ffn_hidden_size: PositiveInt = Field(description="SwiGLU inner width (HF intermediate_size)")
    num_layers: PositiveInt = Field(description="transformer layers")
    num_attention_heads: PositiveInt = Field(description="query heads")
    num_query_groups: PositiveInt = Field(description="key/value heads (GQA groups)")
    head_dim: PositiveInt = Field(description="per-head width (kv_channels in mcore)")
    norm_eps: PositiveFloat = Field(description="RMSNorm epsilon")
    rope_base: PositiveFloat = Field(description="RoPE theta")
    rope_scaling: RopeScaling | None = Field(None, description="RoPE scaling, if any")
    max_position_embeddings: PositiveInt = Field(description="context the checkpoint was trained for")
    tie_word_embeddings: bool = Field(description="output layer shares the input embedding")
    qkv_bias: bool = Field(description="Q/K/V projections carry a bias (Qwen2)")
    qk_norm: bool = Field(description="RMSNorm on each query/key head before RoPE (Qwen3)")
    moe: MoeArchitecture | None = Field(None, description="routed experts in every layer (None: dense MLP)")

    def with_rope(
        self, base: float | None, scaling: RopeScaling | None, max_positions: int | None
    ) -> Architecture:
        """A copy with RoPE changed for long-context training (None keeps the current value)."""
        update: dict[str, Any] = {}
        if base is not None:
            update["rope_base"] = base
        if scaling is not None:
            update["rope_scaling"] = scaling
        if max_positions is not None:
            update["max_position_embeddings"] = max(max_positions, self.max_position_embeddings)
        return self.model_copy(update=update)

    @property
    def attention_parameters(self) -> int:
        """Parameters of one layer's attention block (projections, biases, QK-norm)."""
        attn = self.hidden_size * self.head_dim * (2 * self.num_attention_heads + 2 * self.num_query_groups)
        if self.qkv_bias:
            attn += self.head_dim * (self.num_attention_heads + 2 * self.num_query_groups)
        if self.qk_norm:
            attn += 2 * self.head_dim
        return attn

    @property
    def expert_parameters(self) -> int:
        """Parameters of all experts of all layers (0 for a dense model): what expert parallelism splits."""
        if self.moe is None:
            return 0
        return self.num_layers * self.moe.num_experts * 3 * self.hidden_size * self.moe.expert_ffn_hidden_size

    @property
    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def num_parameters(self) -> int:
        """Parameter count as HF counts it (tied embeddings counted once)."""
        if self.moe is None:
            mlp = 3 * self.hidden_size * self.ffn_hidden_size
        else:
            mlp = self.hidden_size * self.moe.num_experts  # the router; experts counted below
        per_layer = self.attention_parameters + mlp + 2 * self.hidden_size
        return (
            self.num_layers * per_layer
            + self.expert_parameters
            + self.embedding_parameters
            + self.hidden_size
        )


def _rope_from_hf(cfg: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    """RoPE theta and scaling from either transformers>=5 (`rope_parameters`) or older keys."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:  # per-layer-type form
        params = params["full_attention"]
    if isinstance(params, dict):
        theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
        scaling = params if params.get("rope_type", "default") != "default" else None
    else:
        theta = cfg.get("rope_theta", 10000.0)
        scaling = cfg.get("rope_scaling")
    if not scaling:
        return float(theta), None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return float(theta), RopeScaling(type="linear", factor=float(scaling["factor"]))
    if kind == "llama3":
        for key, expected in MCORE_LLAMA3_ROPE.items():
            if float(scaling.get(key, expected)) != expected:
                raise ArchitectureError(
                    f"rope_scaling.{key}={scaling.get(key)}: megatron-core fixes it at {expected}"
                )
        return float(theta), RopeScaling(type="llama3", factor=float(scaling["factor"]))
    raise ArchitectureError(f"rope_scaling type {kind!r} is not supported (linear and llama3 are)")


def _moe_from_hf(cfg: dict[str, Any]) -> MoeArchitecture:
    """Qwen3-MoE's expert settings; refuses layouts mcore would compute differently here."""
    if cfg.get("decoder_sparse_step", 1) != 1 or cfg.get("mlp_only_layers"):
        raise ArchitectureError(
            "decoder_sparse_step / mlp_only_layers: only MoE in every layer is supported (Qwen3-MoE's layout)"
        )
    if cfg.get("shared_expert_intermediate_size"):
        raise ArchitectureError("shared_expert_intermediate_size: shared experts are not supported")
    experts = cfg.get("num_experts") or cfg.get("num_local_experts")  # transformers 5 says num_local_experts
    if not experts:
        raise ArchitectureError("num_experts: a qwen3_moe config must name its experts")
    return MoeArchitecture(
        num_experts=int(experts),
        top_k=int(cfg["num_experts_per_tok"]),
        expert_ffn_hidden_size=int(cfg["moe_intermediate_size"]),
        normalize_top_k=bool(cfg.get("norm_topk_prob", False)),
        aux_loss_coeff=float(cfg.get("router_aux_loss_coef", 0.0)),
    )


def architecture_from_hf(cfg: dict[str, Any]) -> Architecture:
    """Read an HF ``config.json`` dict; raise `ArchitectureError` naming the unsupported field."""
    model_type = cfg.get("model_type")
    if model_type not in _FAMILY_BY_MODEL_TYPE:
        raise ArchitectureError(
            f"model_type {model_type!r} is not supported (llama, mistral, qwen2, qwen3, qwen3_moe are)"
        )
    family = _FAMILY_BY_MODEL_TYPE[model_type]
    if family != "qwen3_moe" and (cfg.get("num_experts") or cfg.get("num_local_experts")):
        raise ArchitectureError(f"num_experts: experts in a {model_type!r} model are not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ArchitectureError(f"hidden_act {cfg.get('hidden_act')!r}: only silu (SwiGLU) is supported")
    if cfg.get("mlp_bias"):
        raise ArchitectureError("mlp_bias=true is not supported")
    if family == "llama" and cfg.get("attention_bias"):
        raise ArchitectureError("attention_bias=true is not supported for the llama family")
    if family in ("qwen3", "qwen3_moe") and cfg.get("attention_bias"):
        raise ArchitectureError(f"attention_bias=true is not supported for {family}")
    if cfg.get("use_sliding_window") or (family == "llama" and cfg.get("sliding_window")):
        raise ArchitectureError("sliding_window attention is not supported")
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    theta, scaling = _rope_from_hf(cfg)
    return Architecture(
        family=family,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        ffn_hidden_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=heads,
        num_query_groups=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_base=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=family == "qwen2",
        qk_norm=family in ("qwen3", "qwen3_moe"),
        moe=_moe_from_hf(cfg) if family == "qwen3_moe" else None,
    )


def load_architecture(hf_dir: Path) -> Architecture:
    """`architecture_from_hf` on ``hf_dir/config.json``."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not an HF model directory (no config.json)")
    return architecture_from_hf(json.loads(path.read_text()))


def padded_vocab_size(vocab_size: int, tensor_parallel: int, divisible_by: int = 128) -> int:
    """Vocabulary rows mcore holds: a multiple of ``divisible_by * tp`` (Megatron-LM's rule).

    The vocab-parallel embedding needs rows divisible by TP, and multiples of 128 keep the
    output GEMM efficient. Real tokenizers (49152, 151936, 128256) are already multiples;
    the extra rows are zeros, dropped again on export.
    """
    multiple = divisible_by * tensor_parallel
    return int(math.ceil(vocab_size / multiple) * multiple)


class ParallelSizes(BaseModel):
    """Model-parallel layout of one training stage (data parallelism is what is left)."""

    model_config = ConfigDict(extra="forbid")
    tensor: PositiveInt = Field(1, description="tensor parallel size (within a node)")
    pipeline: PositiveInt = Field(1, description="pipeline parallel size")
    context: PositiveInt = Field(
        1, description="context parallel size (long sequences; needs Transformer Engine)"
    )
    expert: PositiveInt = Field(
        1,
        description="expert parallel size (MoE): experts are split over this many ranks of the data-parallel group",
    )
    expert_tensor: PositiveInt = Field(
        1, description="tensor parallel size inside each expert (MoE; 1 is usual: experts are small)"
    )
    sequence_parallel: bool = Field(
        True, description="shard norms/dropout activations over TP ranks (ignored at TP=1)"
    )

    @property
    def model_parallel(self) -> int:
        """GPUs holding one replica of the dense part: TP x PP x CP."""
        return self.tensor * self.pipeline * self.context


# Activation recomputation (mcore's names). "selective" recomputes what is cheap to redo and
# costly to keep: core attention (nearly free with flash attention) and the MLP (or the
# experts' activation), leaving each layer's inputs stored. "full" keeps only each layer's
# input (one recompute of the whole layer in the backward, ~33% more compute).
Recompute = Literal["none", "selective", "full"]


def recompute_options(recompute: Recompute, arch: Architecture, kernels: Kernels) -> dict[str, Any]:
    """TransformerConfig keyword arguments for a recompute setting."""
    if recompute == "full":
        return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    if recompute == "selective":
        if arch.moe is None:
            modules = ["core_attn", "mlp"]
        else:  # moe_act needs grouped-GEMM experts (the fused kernels)
            modules = ["core_attn", "moe_act"] if kernels == "fused" else ["core_attn"]
        return {"recompute_granularity": "selective", "recompute_modules": modules}
    return {}


def fused_kernel_options(arch: Architecture, kernels: Kernels) -> dict[str, Any]:
    """Fusions on the GPU path (with Transformer Engine); all off for the reference path.

    Gradient-accumulation fusion of the output layer (a plain mcore ColumnParallelLinear)
    needs apex's ``fused_weight_gradient_mlp_cuda``; mcore raises without it, so it is on
    only where that extension is importable (NGC containers that ship apex).
    """
    if kernels == "reference":
        return dict(
            bias_activation_fusion=False,
            bias_dropout_fusion=False,
            masked_softmax_fusion=False,
            apply_rope_fusion=False,
            persist_layer_norm=False,
            gradient_accumulation_fusion=False,
            cross_entropy_loss_fusion=False,
        )
    import importlib.util

    options: dict[str, Any] = dict(
        bias_activation_fusion=True,  # fused SwiGLU
        bias_dropout_fusion=True,
        masked_softmax_fusion=False,  # flash attention replaces the softmax kernel
        apply_rope_fusion=True,  # TE's fused RoPE (also the THD / packed-sequence form)
        persist_layer_norm=False,  # apex-only; TE's norms are fused into the linears
        gradient_accumulation_fusion=importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None,
        cross_entropy_loss_fusion=True,
        cross_entropy_fusion_impl="native",
    )
    if arch.moe is not None:
        options.update(moe_permute_fusion=True, moe_router_fusion=True)
    return options


def transformer_config(
    arch: Architecture,
    parallel: ParallelSizes,
    dtype: torch.dtype,
    use_cpu_initialization: bool,
    recompute: Recompute = "none",
    kernels: Kernels = "reference",
    init_method_std: float = 0.02,
) -> Any:
    """The `TransformerConfig` that computes what the HF model computes.

    ``kernels="fused"`` (the GPU path, Transformer Engine installed) turns on the fused
    kernels; ``"reference"`` keeps plain PyTorch ops (CPU, parity tests).
    """
    from megatron.core.transformer import TransformerConfig

    if arch.num_query_groups % parallel.tensor:
        raise ArchitectureError(
            f"parallel.tensor={parallel.tensor} must divide num_key_value_heads={arch.num_query_groups}"
        )
    if arch.num_layers % parallel.pipeline:
        raise ArchitectureError(
            f"parallel.pipeline={parallel.pipeline} must divide num_hidden_layers={arch.num_layers}"
        )
    moe: dict[str, Any] = {}
    if arch.moe is not None:
        if arch.moe.num_experts % parallel.expert:
            raise ArchitectureError(
                f"parallel.expert={parallel.expert} must divide num_experts={arch.moe.num_experts}"
            )
        moe = dict(
            num_moe_experts=arch.moe.num_experts,
            moe_router_topk=arch.moe.top_k,
            moe_ffn_hidden_size=arch.moe.expert_ffn_hidden_size,
            # Softmax over the top-k logits equals HF's softmax-then-top-k renormalised
            # (norm_topk_prob); without renormalisation HF keeps the full-softmax weights.
            moe_router_pre_softmax=not arch.moe.normalize_top_k,
            moe_router_score_function="softmax",
            moe_router_dtype="fp32",
            moe_router_load_balancing_type="aux_loss" if arch.moe.aux_loss_coeff > 0 else "none",
            moe_aux_loss_coeff=arch.moe.aux_loss_coeff,
            # all-to-all needs CUDA streams; all-gather computes the same on CPU.
            moe_token_dispatcher_type="alltoall" if kernels == "fused" else "allgather",
            moe_grouped_gemm=kernels == "fused",
            expert_model_parallel_size=parallel.expert,
            expert_tensor_parallel_size=parallel.expert_tensor,
        )
    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        qk_layernorm=arch.qk_norm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=init_method_std,
        tensor_model_parallel_size=parallel.tensor,
        pipeline_model_parallel_size=parallel.pipeline,
        context_parallel_size=parallel.context,
        sequence_parallel=parallel.sequence_parallel and parallel.tensor > 1,
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        use_cpu_initialization=use_cpu_initialization,
        # The loss is the mean over every token of the global batch (not a mean of
        # micro-batch means): the GPU schedule sums, finalize_model_grads divides.
        calculate_per_token_loss=True,
        **fused_kernel_options(arch, kernels),
        **recompute_options(recompute, arch, kernels),
        **moe,
    )


def layer_spec(arch: Architecture, impl: LayerImpl) -> Any:
    """The transformer-layer spec: TE modules on GPU, plain mcore modules on CPU."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    experts = arch.moe.num_experts if arch.moe is not None else None
    if impl == "transformer_engine":
        return get_gpt_layer_with_transformer_engine_spec(
            num_experts=experts, moe_grouped_gemm=experts is not None, qk_layernorm=arch.qk_norm
        )
    return get_gpt_layer_local_spec(
        num_experts=experts, moe_grouped_gemm=False, qk_layernorm=arch.qk_norm, normalization="RMSNorm"
    )


def build_gpt_model(
    arch: Architecture,
    config: Any,
    impl: LayerImpl,
    seq_length: int,
    pre_process: bool = True,
    post_process: bool = True,
) -> Any:
    """A `GPTModel` for ``arch`` (this rank's pipeline stage when ``pre/post_process`` say so)."""
    from megatron.core.models.gpt import GPTModel

    scaling = arch.rope_scaling
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(arch, impl),
        vocab_size=padded_vocab_size(arch.vocab_size, config.tensor_model_parallel_size),
        max_sequence_length=seq_length,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=arch.rope_base,  # type: ignore[arg-type]  # mcore annotates int; theta is a float
        rope_scaling=scaling is not None and scaling.type == "llama3",
        rope_scaling_factor=scaling.factor if scaling is not None and scaling.type == "llama3" else 8.0,
        seq_len_interpolation_factor=scaling.factor
        if scaling is not None and scaling.type == "linear"
        else None,
    )
