"""The one place that knows CUDA is missing: megatron-core patched to run on CPU.

megatron-core (0.16.1) has no supported CPU path. `GPTModel` with the local layer spec and
``use_cpu_initialization=True`` builds on CPU; forward and backward run once these CUDA
assumptions are bypassed (NOTES.md, "megatron-core 0.16.1 on CPU"):

1. ``RotaryEmbedding.get_emb`` moves ``inv_freq`` to ``torch.cuda.current_device()``;
2. ``GlobalMemoryBuffer.get_tensor`` (the attention score buffer) allocates on CUDA;
3. ``get_default_causal_mask`` (softmax without an explicit mask) builds the mask on CUDA;
4. ``CudaRNGStatesTracker.fork`` (around attention dropout) needs a CUDA RNG state;
5. ``Router.gating`` (MoE) moves the router weight to ``torch.cuda.current_device()``;
6. ``RouterGatingLinearFunction`` (MoE) reads ``te_general_gemm``, which megatron-core only
   defines when Transformer Engine imports (a NameError without TE; None selects its
   plain ``torch.mm`` path).

MoE on CPU also needs the all-gather token dispatcher (all-to-all creates a CUDA stream)
and `SequentialMLP` experts: `pretrain.model` picks both for the reference kernels.

Nothing here runs at import time; `patch_megatron_for_cpu()` is explicit and idempotent.
"""

from __future__ import annotations

import functools
import os
import socket
from typing import Any

import torch

_PATCHED = False


def _rope_emb_on_cpu(self: Any, max_seq_len: int, offset: int = 0) -> torch.Tensor:
    """`RotaryEmbedding.get_emb` without the move of ``inv_freq`` to the current CUDA device."""
    freqs = self.get_freqs_non_repeated(max_seq_len, offset)
    if not self.rotary_interleaved:
        emb = torch.cat((freqs, freqs), dim=-1)
    else:
        emb = torch.stack((freqs.view(-1, 1), freqs.view(-1, 1)), dim=-1).view(freqs.shape[0], -1)
    return emb[:, None, None, :]


def _buffer_tensor_on_cpu(
    self: Any, tensor_shape: Any, dtype: torch.dtype, name: str, mem_alloc_context: Any = None
) -> torch.Tensor:
    """`GlobalMemoryBuffer.get_tensor` allocating in host memory (same reuse rule)."""
    required = 1
    for dim in tensor_shape:
        required *= int(dim)
    buf = self.buffer.get((name, dtype))
    if buf is None or buf.numel() < required:
        buf = self.buffer[(name, dtype)] = torch.empty(required, dtype=dtype)
    return buf[:required].view(*tensor_shape)


@functools.lru_cache(maxsize=8)
def _causal_mask_on_cpu(sq: int) -> torch.Tensor:
    """`get_default_causal_mask` in host memory: True above the diagonal (masked)."""
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def _router_gating_on_cpu(self: Any, input: torch.Tensor) -> torch.Tensor:
    """`Router.gating` without moving the router weight to CUDA (same dtype rule)."""
    from megatron.core.transformer.moe.moe_utils import router_gating_linear

    dtype = {"fp32": torch.float32, "fp64": torch.float64}.get(self.config.moe_router_dtype, input.dtype)
    return router_gating_linear(input, self.weight, self.bias, dtype)


def patch_megatron_for_cpu() -> None:
    """Bypass megatron-core's CUDA assumptions for a CPU forward/backward (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    from megatron.core import utils as mcore_utils
    from megatron.core.fusions import fused_softmax
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.tensor_parallel import random as mcore_random
    from megatron.core.transformer.moe import moe_utils, router

    RotaryEmbedding.get_emb = _rope_emb_on_cpu  # type: ignore[method-assign]
    mcore_utils.GlobalMemoryBuffer.get_tensor = _buffer_tensor_on_cpu  # type: ignore[method-assign]
    fused_softmax.get_default_causal_mask = _causal_mask_on_cpu
    router.Router.gating = _router_gating_on_cpu  # type: ignore[method-assign]
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None  # type: ignore[attr-defined]
    # mcore's own no-op tracker (built for inference): `fork()` is a null context. Dropout is
    # 0 in every supported architecture, so no random stream is consumed under it.
    mcore_random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    _PATCHED = True


def init_cpu_process_group() -> bool:
    """A gloo process group for mcore's parallel state: torchrun's, or a private one-process group.

    Returns True when this call created it (the caller then destroys it). The CPU path
    trains in one process; asking for more is refused, because the CPU trainer does not
    all-reduce gradients (use GPUs for data parallelism).
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != 1:
        raise RuntimeError(f"WORLD_SIZE={world}: the CPU path runs in one process (no GPU found)")
    if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
        dist.init_process_group("gloo", rank=0, world_size=1)
    else:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    return True


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a private process group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
