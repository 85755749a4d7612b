"""The GPU runtime: pure megatron-core (0.16.1) with Transformer Engine.

NCCL process group from torchrun's environment (with a timeout that survives rank 0
building the dataset index); ``parallel_state.initialize_model_parallel`` with the stage's
TP / PP / CP / EP; the Transformer Engine layer spec (flash attention, context
parallelism, fused norms and linears, grouped-GEMM experts) with the fused kernels on
(`pretrain.model`, ``kernels="fused"``); the model moved to the GPU explicitly; bf16
parameters (``Float16Module``) with fp32 main weights, gradients reduced in fp32 through
mcore's ``DistributedDataParallel`` and sharded by the distributed optimizer
(``get_megatron_optimizer``, TE's fused Adam); ``get_forward_backward_func`` (1F1B when
PP > 1) with a per-token loss; packed-sequence (THD) document masks; ``dist_checkpointing``.

Transformer Engine is required: without it megatron-core would silently fall back to the
local spec (unfused attention: out of memory at 32K; no context parallelism) and to torch's
AdamW, whose distributed-optimizer state cannot be loaded back (resume fails at
``distrib_optimizer.py:642``). So a GPU without ``transformer_engine.pytorch`` stops at
start-up with one line saying how to install it.
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from pretrain.checkpoint import dist_ckpt_metadata
from pretrain.config import CPTConfig, StageConfig
from pretrain.data import Batch, LossTotals
from pretrain.layout import LayoutError
from pretrain.model import Architecture, build_gpt_model, transformer_config
from pretrain.packing import PackedSequence, pad_segments

INSTALL_TE = (
    "pip install --no-build-isolation -e '.[gpu]' (Transformer Engine 2.9-2.11 for megatron-core 0.16.1, "
    "built against this torch; `make cpt` does it), or run in docker/trainer.Dockerfile (NGC PyTorch, TE included)"
)


class GpuSetupError(RuntimeError):
    """The GPU environment cannot run the trainer (one line: what is missing, how to install it)."""


def require_transformer_engine() -> None:
    """Raise `GpuSetupError` unless ``transformer_engine.pytorch`` imports."""
    try:
        import transformer_engine.pytorch  # noqa: F401
    except ImportError as err:
        raise GpuSetupError(f"GPU found but Transformer Engine is missing ({err}): {INSTALL_TE}") from None


class GpuRuntime:
    """NCCL, TP/PP/CP/EP from the stage, TE layers, bf16, mcore DDP + distributed optimizer."""

    name = "megatron-core (GPU, Transformer Engine)"
    checkpoint_format: Literal["torch", "dist"] = "dist"

    def __init__(self, cfg: CPTConfig) -> None:
        import torch.distributed as dist

        require_transformer_engine()  # before any CUDA work: the one-line refusal
        self.cfg = cfg
        # megatron-core overlaps TP/SP communication with compute assuming one hardware
        # queue orders them; must be set before the CUDA context exists.
        os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(self.local_rank)
        if not dist.is_initialized():
            # torchrun sets RANK / WORLD_SIZE / MASTER_ADDR; a bare `python` run is one rank.
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            dist.init_process_group(
                "nccl",
                rank=int(os.environ.get("RANK", "0")),
                world_size=int(os.environ.get("WORLD_SIZE", "1")),
                timeout=timedelta(minutes=cfg.distributed_timeout_minutes),
            )
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def device_memory(self) -> float | None:
        return float(torch.cuda.get_device_properties(self.local_rank).total_memory)

    def start_stage(self, stage: StageConfig, seed: int) -> None:
        from megatron.core import parallel_state, tensor_parallel

        p = stage.parallel
        if self.world_size % p.model_parallel:  # the preflight checked; a guard for direct callers
            raise LayoutError(
                f"stages.{stage.name}.parallel: {p.model_parallel} must divide {self.world_size} GPUs"
            )
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=p.tensor,
            pipeline_model_parallel_size=p.pipeline,
            context_parallel_size=p.context,
            expert_model_parallel_size=p.expert,
            expert_tensor_parallel_size=p.expert_tensor,
            distributed_timeout_minutes=self.cfg.distributed_timeout_minutes,
        )
        # Per-TP-rank RNG streams for initialization and dropout (megatron's convention).
        tensor_parallel.model_parallel_cuda_manual_seed(seed)

    def data_parallel(self) -> tuple[int, int]:
        from megatron.core import parallel_state

        # CP ranks of one DP replica read the same samples and slice them by sequence.
        return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()

    def build_model(self, arch: Architecture, stage: StageConfig) -> Any:
        from megatron.core import parallel_state

        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float32
        config = transformer_config(
            arch,
            stage.parallel,
            dtype,
            use_cpu_initialization=False,
            recompute=stage.recompute,
            kernels="fused",
        )
        model = build_gpt_model(
            arch,
            config,
            "transformer_engine",
            stage.seq_length,
            pre_process=parallel_state.is_pipeline_first_stage(),
            post_process=parallel_state.is_pipeline_last_stage(),
        )
        # Explicitly on this GPU (buffers included), not left to the distributed optimizer's
        # buffer to relocate the parameters.
        return model.cuda(torch.cuda.current_device())

    def make_trainer(self, model: Any, stage: StageConfig) -> McoreTrainer:
        return McoreTrainer(model, stage)

    def barrier(self) -> None:
        torch.distributed.barrier()

    def export_hf(self, trainer: Any, arch: Architecture, source_dir: Path, out_dir: Path) -> bool:
        # Weights are sharded over TP/PP/EP/DP ranks; `python -m pretrain.convert export` reads
        # the dist checkpoint into one unsharded model on CPU instead of gathering here.
        return False

    def end_stage(self) -> None:
        """Free the stage's GPU memory before the next stage builds its model (the loop dropped its references)."""
        from megatron.core import parallel_state

        torch.cuda.synchronize()
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        gc.collect()
        torch.cuda.empty_cache()

    def shutdown(self) -> None:
        self.end_stage()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class McoreTrainer:
    """megatron-core's own training step: DDP, distributed optimizer, forward_backward_func."""

    def __init__(self, gpt: Any, stage: StageConfig) -> None:
        from megatron.core.distributed import (
            DistributedDataParallel,
            DistributedDataParallelConfig,
            finalize_model_grads,
        )
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.pipeline_parallel import get_forward_backward_func
        from megatron.core.transformer.module import Float16Module

        config = gpt.config
        self.gpt = gpt
        self.stage = stage
        module = Float16Module(config, gpt) if config.bf16 else gpt
        self.model = DistributedDataParallel(
            config=config,
            ddp_config=DistributedDataParallelConfig(
                grad_reduce_in_fp32=True,
                overlap_grad_reduce=True,
                # Parameters are all-gathered right after the optimizer step (not lazily in
                # the next forward), so evaluation and checkpoints always see fresh weights.
                overlap_param_gather=False,
                use_distributed_optimizer=True,
                check_for_nan_in_grad=True,
            ),
            module=module,
        )
        optim = stage.optim
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam",
                lr=optim.lr,
                min_lr=optim.min_lr,
                weight_decay=optim.weight_decay,
                adam_beta1=optim.adam_beta1,
                adam_beta2=optim.adam_beta2,
                adam_eps=optim.adam_eps,
                clip_grad=optim.clip_grad,
                bf16=config.bf16,
                params_dtype=config.params_dtype,
                use_distributed_optimizer=True,
            ),
            [self.model],
        )
        # Hooks the schedule calls: defer the DP reduce to the last micro-batch, then
        # finish it (plus SP layer-norm and tied-embedding reductions, per-token scaling).
        config.no_sync_func = self.model.no_sync
        config.finalize_model_grads_func = finalize_model_grads
        if config.pipeline_model_parallel_size > 1:
            config.grad_sync_func = self.model.start_grad_sync
        self.forward_backward = get_forward_backward_func()
        self.context_parallel = config.context_parallel_size

    # ---- one micro-batch ---------------------------------------------------------------
    @staticmethod
    def _loss(
        loss_mask: torch.Tensor, output: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Summed token loss, token count, and [sum, count] for logging (per-token loss mode)."""
        losses = output.float().view(-1)
        mask = loss_mask.view(-1).float()
        loss = torch.sum(losses * mask)
        tokens = mask.sum().to(torch.int)
        return loss, tokens, {"lm loss": torch.stack([loss.detach(), mask.sum()])}

    def _packed(self, batch: Batch) -> tuple[dict[str, torch.Tensor], Any]:
        """THD tensors of this CP rank and their `PackedSeqParams` (document masks)."""
        from megatron.core.utils import get_thd_batch_on_this_cp_rank

        assert batch.cu_seqlens is not None
        multiple = 2 * self.context_parallel if self.context_parallel > 1 else 1
        packed: PackedSequence = pad_segments(
            batch.tokens, batch.labels, batch.loss_mask, batch.cu_seqlens, multiple
        )
        tensors = {k: v.cuda(non_blocking=True) for k, v in packed.as_dict().items()}
        return get_thd_batch_on_this_cp_rank(
            tensors,
            packed.cu_seqlens.cuda(non_blocking=True),
            packed.cu_seqlens_padded.cuda(non_blocking=True),
            torch.tensor([packed.max_seqlen], dtype=torch.int32),
        )

    def _forward_step(self, data_iterator: Any, model: Any) -> tuple[torch.Tensor, Callable[..., Any]]:
        from megatron.core.utils import get_batch_on_this_cp_rank

        batch: Batch = next(data_iterator)
        if batch.cu_seqlens is not None:
            tensors, packed_seq_params = self._packed(batch)
        else:
            tensors = get_batch_on_this_cp_rank(
                {k: v.cuda(non_blocking=True) for k, v in batch.as_dict().items()}
            )
            packed_seq_params = None
        output = model(
            tensors["tokens"],
            tensors["position_ids"],
            None,
            labels=tensors["labels"],
            packed_seq_params=packed_seq_params,
        )
        return output, partial(self._loss, tensors["loss_mask"])

    def _run(self, microbatches: list[Batch], forward_only: bool) -> LossTotals:
        from megatron.core import parallel_state

        packed = microbatches[0].cu_seqlens is not None
        rows, seq = microbatches[0].tokens.shape
        reports = self.forward_backward(
            forward_step_func=self._forward_step,
            data_iterator=iter(microbatches),
            model=[self.model],
            num_microbatches=len(microbatches),
            # A packed micro-batch is one THD row of rows x seq tokens.
            seq_length=rows * seq if packed else seq,
            micro_batch_size=1 if packed else rows,
            forward_only=forward_only,
        )
        # Loss reports exist on the last pipeline stage: sum over micro-batches and the
        # DP x CP group there, then broadcast over the pipeline so every rank can log.
        summed = torch.zeros(2, dtype=torch.float32, device="cuda")
        if parallel_state.is_pipeline_last_stage():
            for r in reports:
                summed += r["lm loss"].float()
            torch.distributed.all_reduce(
                summed, group=parallel_state.get_data_parallel_group(with_context_parallel=True)
            )
        torch.distributed.broadcast(
            summed,
            src=parallel_state.get_pipeline_model_parallel_last_rank(),
            group=parallel_state.get_pipeline_model_parallel_group(),
        )
        return LossTotals(loss_sum=float(summed[0]), tokens=int(summed[1]))

    def train_step(self, microbatches: list[Batch]) -> tuple[LossTotals, float]:
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        totals = self._run(microbatches, forward_only=False)
        ok, grad_norm, _ = self.optimizer.step()
        if not ok:
            raise FloatingPointError("optimizer step skipped: non-finite gradients")
        return totals, float(grad_norm if grad_norm is not None else math.nan)

    @torch.no_grad()
    def eval_loss(self, microbatches: list[Batch]) -> LossTotals:
        self.model.eval()
        return self._run(microbatches, forward_only=True)

    # ---- checkpoints -------------------------------------------------------------------
    def _sharded(self, with_optimizer: bool, is_loading: bool) -> dict[str, Any]:
        metadata = dist_ckpt_metadata()
        model_sd = self.gpt.sharded_state_dict(metadata=metadata)
        state: dict[str, Any] = {"model": model_sd}
        if with_optimizer:
            state["optimizer"] = self.optimizer.sharded_state_dict(
                model_sd, is_loading=is_loading, metadata=metadata
            )
        return state

    def save(self, directory: Path) -> None:
        from megatron.core import dist_checkpointing

        dist_checkpointing.save(
            self._sharded(True, False), str(directory), content_metadata=dist_ckpt_metadata()
        )

    def load(self, directory: Path, with_optimizer: bool) -> None:
        from megatron.core import dist_checkpointing

        loaded = dist_checkpointing.load(self._sharded(with_optimizer, True), str(directory))
        self.gpt.load_state_dict(loaded["model"])
        if with_optimizer:
            self.optimizer.load_state_dict(loaded["optimizer"])
        else:
            # New weights under a fresh optimizer: refresh its fp32 main copies.
            self.optimizer.reload_model_params()
