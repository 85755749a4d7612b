"""Training FLOPs per token and model FLOPs utilization (MFU).

Per token, a training step costs three forward passes' worth of matmuls (forward, and
backward for activations and for weights):

* matmuls: ``6 * N`` with ``N`` the parameters a token passes through — attention
  projections, the SwiGLU MLP (for MoE: the router and the ``top_k`` experts it is routed
  to, not all of them) and the output projection. The input embedding is a lookup, not a
  matmul, so it is left out; the output projection is counted even when tied (the matmul
  happens).
* attention: per layer, ``QK^T`` and ``AV`` each cost ``2 * s * d_attn`` FLOPs per token
  in the forward pass (``d_attn`` = heads x head_dim, ``s`` the sequence length); the
  causal mask halves the work a flash-attention kernel does, so ``2 * s * d_attn`` per
  layer forward, ``6 * s * d_attn`` with the backward. (With document masks the kernel
  does less; MFU still counts the full causal square, as Megatron-LM does.)

This is the PaLM appendix-B accounting (Chowdhery et al. 2022) with the causal halving.
MFU = achieved model FLOP/s / (devices x peak FLOP/s); recomputation is not counted, as
MFU (unlike hardware FLOPs utilization) should not reward it.
"""

from __future__ import annotations

from pretrain.model import Architecture

H100_BF16_DENSE_FLOPS = 989e12  # H100 SXM, dense bf16 tensor cores (NVIDIA datasheet)


def matmul_params(arch: Architecture) -> int:
    """Parameters a token passes through in matmuls (output projection included, input embedding not)."""
    h, hd = arch.hidden_size, arch.head_dim
    attn = h * hd * (2 * arch.num_attention_heads + 2 * arch.num_query_groups)
    if arch.moe is None:
        mlp = 3 * h * arch.ffn_hidden_size
    else:
        mlp = h * arch.moe.num_experts + arch.moe.top_k * 3 * h * arch.moe.expert_ffn_hidden_size
    return arch.num_layers * (attn + mlp) + h * arch.vocab_size


def training_flops_per_token(arch: Architecture, seq_length: int) -> float:
    """Model FLOPs of one training token at ``seq_length`` (forward + backward)."""
    d_attn = arch.num_attention_heads * arch.head_dim
    attention = arch.num_layers * 6 * seq_length * d_attn  # causal: half of 12 * s * d_attn
    return 6.0 * matmul_params(arch) + attention


def mfu(tokens_per_s: float, flops_per_token: float, devices: int, peak_flops_per_device: float) -> float:
    """Model FLOPs utilization in [0, 1]."""
    return tokens_per_s * flops_per_token / (devices * peak_flops_per_device)
