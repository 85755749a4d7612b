"""The CPU runtime: one process, gloo, fp32, the local layer spec, a plain AdamW loop.

mcore's DDP, `get_megatron_optimizer`, `get_forward_backward_func` and
`dist_checkpointing.save` assume CUDA (stream syncs, CUDA tensors for collectives), so
`CpuTrainer` is a plain loop instead: fp32, `torch.optim.AdamW` with Megatron's parameter
groups, gradient clipping, one process, checkpoints with `torch.save` in the iteration
layout of `pretrain.checkpoint`. It computes the loss the GPU path computes: the per-token
mean over the global batch, with the same document masks and the same MoE aux-loss scale.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Literal

import torch

from pretrain.checkpoint import load_cpu_tensors, save_cpu_tensors
from pretrain.config import CPTConfig, StageConfig
from pretrain.convert import full_state_from_model, save_hf_dir
from pretrain.data import Batch, LossTotals
from pretrain.layout import LayoutError
from pretrain.model import Architecture, ParallelSizes, build_gpt_model, transformer_config
from pretrain.packing import block_causal_mask
from pretrain.runtime.megatron_cpu import init_cpu_process_group, patch_megatron_for_cpu


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


def _set_moe_aux_loss_scale(scale: float) -> None:
    """The MoE load-balancing loss's backward scale, as mcore's schedule sets it.

    With ``calculate_per_token_loss`` mcore sets it to 1 and `finalize_model_grads` then
    divides every gradient by the global batch's token count; this loop divides the main
    loss before ``backward`` instead, so the aux loss gets the same 1 / tokens here.
    """
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(scale))


class CpuTrainer:
    """fp32 training of a bare `GPTModel` in one process: forward, backward, AdamW, clip."""

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

    def token_losses(self, batch: Batch) -> torch.Tensor:
        """Next-token loss of every position, ``[batch, seq]``.

        With document boundaries (``batch.cu_seqlens``) the micro-batch runs as one row
        under a block-diagonal causal mask: what the GPU path's THD attention computes.
        """
        if batch.cu_seqlens is None:
            return self.model(batch.tokens, batch.position_ids, attention_mask=None, labels=batch.labels)
        rows, seq = batch.tokens.shape
        total = rows * seq
        losses = self.model(
            batch.tokens.reshape(1, total),
            torch.arange(total).unsqueeze(0),  # RoPE ignores position ids; relative within a document
            attention_mask=block_causal_mask(batch.cu_seqlens, total),
            labels=batch.labels.reshape(1, total),
        )
        return losses.reshape(rows, seq)

    def train_step(self, microbatches: list[Batch]) -> tuple[LossTotals, float]:
        """One optimizer step over ``microbatches`` (gradient accumulation); returns loss totals and grad norm."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total_tokens = sum(float(b.loss_mask.sum()) for b in microbatches)
        if self.model.config.num_moe_experts:
            _set_moe_aux_loss_scale(1.0 / max(total_tokens, 1.0))
        loss_sum = 0.0
        for batch in microbatches:
            loss = (self.token_losses(batch).float() * batch.loss_mask).sum()
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
            per_token = self.token_losses(batch).float() * batch.loss_mask
            totals = totals + LossTotals(loss_sum=float(per_token.sum()), tokens=int(batch.loss_mask.sum()))
        return totals

    def save(self, directory: Path) -> None:
        """Model and optimizer state into ``directory`` (created by the caller)."""
        save_cpu_tensors(directory, self.model, self.optimizer)

    def load(self, directory: Path, with_optimizer: bool) -> None:
        """Restore from ``directory``; ``with_optimizer=False`` takes the weights only (next stage)."""
        state = load_cpu_tensors(directory)
        self.model.load_state_dict(state["model"])
        if with_optimizer:
            self.optimizer.load_state_dict(state["optimizer"])


class CpuRuntime:
    """The trainer's runtime without CUDA: one process, gloo, fp32, local layer spec, `CpuTrainer`."""

    name = "CPU (megatron-core local layer spec, fp32, plain AdamW loop)"
    checkpoint_format: Literal["torch", "dist"] = "torch"
    rank = 0
    world_size = 1

    def __init__(self, cfg: CPTConfig) -> None:
        self.cfg = cfg
        patch_megatron_for_cpu()
        self._owns_group = init_cpu_process_group()
        if cfg.precision == "bf16":
            print("cpu: no GPU found; training in fp32 (precision: bf16 applies to the GPU path)", flush=True)

    def device_memory(self) -> float | None:
        return None  # host memory: the GPU estimate does not apply

    def start_stage(self, stage: StageConfig, seed: int) -> None:
        from megatron.core import parallel_state

        p = stage.parallel
        if (p.tensor, p.pipeline, p.context, p.expert, p.expert_tensor) != (1, 1, 1, 1, 1):
            raise LayoutError(
                f"stages.{stage.name}.parallel: model parallelism needs GPUs; on CPU every size must be 1"
            )
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
        torch.manual_seed(seed)

    def data_parallel(self) -> tuple[int, int]:
        return 0, 1

    def build_model(self, arch: Architecture, stage: StageConfig) -> Any:
        config = transformer_config(arch, ParallelSizes(), torch.float32, use_cpu_initialization=True)
        return build_gpt_model(arch, config, "local", stage.seq_length)

    def make_trainer(self, model: Any, stage: StageConfig) -> CpuTrainer:
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

    def export_hf(self, trainer: Any, arch: Architecture, source_dir: Path, out_dir: Path) -> bool:
        save_hf_dir(full_state_from_model(trainer.model), arch, source_dir, out_dir)
        return True

    def end_stage(self) -> None:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        gc.collect()

    def shutdown(self) -> None:
        import torch.distributed as dist

        self.end_stage()
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
