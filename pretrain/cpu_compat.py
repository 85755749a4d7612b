"""The one place that knows CUDA is missing: megatron-core on CPU, and a plain training backend.

megatron-core (0.16.1) has no supported CPU path. `GPTModel` with the local layer spec and
``use_cpu_initialization=True`` builds on CPU; forward and backward run once four CUDA
assumptions are bypassed (NOTES.md, "megatron-core 0.16.1 on CPU"):

1. ``RotaryEmbedding.get_emb`` moves ``inv_freq`` to ``torch.cuda.current_device()``;
2. ``GlobalMemoryBuffer.get_tensor`` (the attention score buffer) allocates on CUDA;
3. ``get_default_causal_mask`` (softmax without an explicit mask) builds the mask on CUDA;
4. ``CudaRNGStatesTracker.fork`` (around attention dropout) needs a CUDA RNG state.

mcore's DDP, `get_megatron_optimizer`, `get_forward_backward_func` and
`dist_checkpointing.save` also assume CUDA (stream syncs, CUDA tensors for collectives), so
`CpuTrainer` is a plain loop instead: fp32, `torch.optim.AdamW` with Megatron's parameter
groups, gradient clipping, one process, checkpoints with `torch.save` in the same
iteration-directory layout the GPU path uses with `dist_checkpointing`.

Nothing here runs at import time; `patch_megatron_for_cpu()` is explicit and idempotent.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Any, Literal

import torch

from pretrain.data import Batch, LossTotals

_PATCHED = False
CHECKPOINT_FILE = "model_optim.pt"


def cuda_available() -> bool:
    """True when this process can train on GPUs (the pure megatron-core path)."""
    return torch.cuda.is_available()


# --------------------------------------------------------------------------- megatron-core patches


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


def patch_megatron_for_cpu() -> None:
    """Bypass megatron-core's CUDA assumptions for a CPU forward/backward (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    from megatron.core import utils as mcore_utils
    from megatron.core.fusions import fused_softmax
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.tensor_parallel import random as mcore_random

    RotaryEmbedding.get_emb = _rope_emb_on_cpu  # type: ignore[method-assign]
    mcore_utils.GlobalMemoryBuffer.get_tensor = _buffer_tensor_on_cpu  # type: ignore[method-assign]
    fused_softmax.get_default_causal_mask = _causal_mask_on_cpu
    # mcore's own no-op tracker (built for inference): `fork()` is a null context. Dropout is
    # 0 in every supported architecture, so no random stream is consumed under it.
    mcore_random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    _PATCHED = True


def init_cpu_process_group() -> bool:
    """A gloo process group for mcore's parallel state: torchrun's, or a private one-process group.

    Returns True when this call created it (the caller then destroys it). The CPU path
    trains in one process; asking for more is refused, because `CpuTrainer` does not
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
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- the CPU backend


def megatron_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Megatron's default groups: no weight decay on biases and 1-D tensors (norm weights)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [
        {"params": decay, "wd_mult": 1.0, "weight_decay": weight_decay},
        {"params": no_decay, "wd_mult": 0.0, "weight_decay": 0.0},
    ]


class CpuTrainer:
    """fp32 training of a bare `GPTModel` in one process: forward, backward, AdamW, clip.

    The loss is the per-token mean over the whole global batch (what the GPU path computes
    with ``calculate_per_token_loss``), so gradient accumulation does not reweight tokens.
    """

    name = "cpu"

    def __init__(
        self,
        model: torch.nn.Module,
        lr: float,
        weight_decay: float,
        betas: tuple[float, float],
        eps: float,
        clip_grad: float,
    ) -> None:
        self.model = model.float()
        self.clip_grad = clip_grad
        self.optimizer = torch.optim.AdamW(
            megatron_param_groups(self.model, weight_decay),
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
        )

    def _token_losses(self, batch: Batch) -> torch.Tensor:
        return self.model(batch.tokens, batch.position_ids, attention_mask=None, labels=batch.labels)

    def train_step(self, microbatches: list[Batch]) -> tuple[LossTotals, float]:
        """One optimizer step over ``microbatches`` (gradient accumulation); returns loss totals and grad norm."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total_tokens = sum(float(b.loss_mask.sum()) for b in microbatches)
        loss_sum = 0.0
        for batch in microbatches:
            per_token = self._token_losses(batch).float() * batch.loss_mask
            loss = per_token.sum()
            (loss / max(total_tokens, 1.0)).backward()
            loss_sum += float(loss.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.optimizer.step()
        return LossTotals(loss_sum=loss_sum, tokens=int(total_tokens)), float(grad_norm)

    @torch.no_grad()
    def eval_loss(self, microbatches: list[Batch]) -> LossTotals:
        """Summed next-token loss over ``microbatches`` (no gradients)."""
        self.model.eval()
        totals = LossTotals(loss_sum=0.0, tokens=0)
        for batch in microbatches:
            per_token = self._token_losses(batch).float() * batch.loss_mask
            totals = totals + LossTotals(loss_sum=float(per_token.sum()), tokens=int(batch.loss_mask.sum()))
        return totals

    def save(self, directory: Path) -> None:
        """Model and optimizer state into ``directory`` (created by the caller)."""
        torch.save(
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()},
            Path(directory) / CHECKPOINT_FILE,
        )

    def load(self, directory: Path, with_optimizer: bool) -> None:
        """Restore from ``directory``; ``with_optimizer=False`` takes the weights only (next stage)."""
        state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        if with_optimizer:
            self.optimizer.load_state_dict(state["optimizer"])

    def full_state(self) -> dict[str, torch.Tensor]:
        """Canonical full mcore state for HF export."""
        from pretrain.convert import full_state_from_model

        return full_state_from_model(self.model)


class CpuRuntime:
    """The trainer's runtime without CUDA: one process, gloo, fp32, local layer spec, `CpuTrainer`."""

    name = "CPU (megatron-core local layer spec, fp32, plain AdamW loop)"
    checkpoint_format: Literal["torch", "dist"] = "torch"
    rank = 0
    world_size = 1

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        patch_megatron_for_cpu()
        self._owns_group = init_cpu_process_group()
        if cfg.precision == "bf16":
            print("cpu: no GPU found; training in fp32 (precision: bf16 applies to the GPU path)", flush=True)

    def start_stage(self, stage: Any, seed: int) -> None:
        from megatron.core import parallel_state

        p = stage.parallel
        if (p.tensor, p.pipeline, p.context) != (1, 1, 1):
            raise ValueError(
                f"stages.{stage.name}.parallel: tensor/pipeline/context must be 1 on CPU "
                f"(got {p.tensor}/{p.pipeline}/{p.context}); model parallelism needs GPUs"
            )
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
        torch.manual_seed(seed)

    def data_parallel(self) -> tuple[int, int]:
        return 0, 1

    def build_model(self, arch: Any, stage: Any) -> Any:
        from pretrain.model import ParallelSizes, build_gpt_model, transformer_config

        config = transformer_config(arch, ParallelSizes(), torch.float32, use_cpu_initialization=True)
        return build_gpt_model(arch, config, "local", stage.seq_length)

    def make_trainer(self, model: Any, stage: Any) -> CpuTrainer:
        o = stage.optim
        return CpuTrainer(
            model,
            lr=o.lr,
            weight_decay=o.weight_decay,
            betas=(o.adam_beta1, o.adam_beta2),
            eps=o.adam_eps,
            clip_grad=o.clip_grad,
        )

    def barrier(self) -> None:
        return None

    def export_hf(self, trainer: Any, arch: Any, source_dir: Path, out_dir: Path) -> bool:
        from pretrain.convert import save_hf_dir

        save_hf_dir(trainer.full_state(), arch, source_dir, out_dir)
        return True

    def shutdown(self) -> None:
        import torch.distributed as dist
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()


def load_model_weights_from_checkpoint(model: torch.nn.Module, directory: Path) -> None:
    """Weights only from a CPU checkpoint directory (for export)."""
    state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
