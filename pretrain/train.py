"""The CPT trainer: ``agentcpt cpt CONFIG`` / ``torchrun ... -m pretrain.train CONFIG``.

Reads top to bottom: entry points, the run over stages, one stage's loop, checkpoints, and
the GPU runtime (pure megatron-core). The CPU runtime lives in `pretrain.cpu_compat`, the
only module that knows CUDA is missing; both expose the same small interface
(`Runtime` / `Trainer` below), so this loop does not branch on the device.

GPU path (megatron-core 0.16): NCCL process group from torchrun's environment;
``parallel_state.initialize_model_parallel`` with the stage's TP / PP / CP; the
Transformer Engine layer spec (flash attention, context parallelism); bf16 parameters
(``Float16Module``) with fp32 main weights, gradients reduced in fp32 through mcore's
``DistributedDataParallel`` and sharded by the distributed optimizer
(``get_megatron_optimizer``); ``get_forward_backward_func`` (1F1B when PP > 1) with a
per-token loss (``calculate_per_token_loss``); ``dist_checkpointing`` checkpoints.

Each stage: build the model; start from (in order of preference) the stage's own latest
checkpoint (model, optimizer, scheduler, step and data position: an exact resume), the
previous stage's final weights, or the HF model; evaluate the held-out loss before
training, every ``eval.interval`` steps and at the end; log loss, tokens/s and MFU; save
every ``checkpoint.interval`` steps and at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from pretrain.config import CPTConfig, OptimConfig, StageConfig, load_cpt_config
from pretrain.data import Batch, LossTotals, StageDatasets, build_datasets, rank_share, stage_blends
from pretrain.flops import mfu, training_flops_per_token
from pretrain.model import DenseArchitecture, load_architecture

TRAIN_STATE_FILE = "train_state.json"
LATEST_FILE = "latest"


def dist_ckpt_metadata() -> dict[str, Any]:
    """dist_checkpointing layout options, the same at save and load (Megatron-LM's defaults).

    The distributed optimizer's state is saved per DP shard, in parallel, reshardable over
    DP. A fresh dict each call: megatron adds process groups to the one it is given.
    """
    return {"distrib_optim_sharding_type": "dp_reshardable", "chained_optim_avoid_prefix": True}


# =============================================================================
# Interfaces shared by the CPU and GPU runtimes
# =============================================================================


class Trainer(Protocol):
    """Model + optimizer of one stage on one rank."""

    optimizer: Any  # has param_groups (for OptimizerParamScheduler)

    def train_step(self, microbatches: list[Batch]) -> tuple[LossTotals, float]: ...
    def eval_loss(self, microbatches: list[Batch]) -> LossTotals: ...
    def save(self, directory: Path) -> None: ...
    def load(self, directory: Path, with_optimizer: bool) -> None: ...


class Runtime(Protocol):
    """Where this process computes: the device, the process groups, how models are built."""

    name: str
    checkpoint_format: Literal["torch", "dist"]
    world_size: int
    rank: int

    def start_stage(self, stage: StageConfig, seed: int) -> None: ...
    def build_model(self, arch: DenseArchitecture, stage: StageConfig) -> Any: ...
    def make_trainer(self, model: Any, stage: StageConfig) -> Trainer: ...
    def data_parallel(self) -> tuple[int, int]: ...
    def barrier(self) -> None: ...
    def export_hf(
        self, trainer: Trainer, arch: DenseArchitecture, source_dir: Path, out_dir: Path
    ) -> bool: ...
    def shutdown(self) -> None: ...


def make_runtime(cfg: CPTConfig) -> Runtime:
    """The GPU runtime when CUDA is there, else the CPU one (pretrain.cpu_compat)."""
    from pretrain import cpu_compat

    if cpu_compat.cuda_available():
        return GpuRuntime(cfg)
    return cpu_compat.CpuRuntime(cfg)


# =============================================================================
# Checkpoint layout: <checkpoint.dir>/<stage>/iter_XXXXXXX/ + latest
# =============================================================================


class TrainState(BaseModel):
    """What a checkpoint needs besides tensors: the step, the data position and the schedule."""

    model_config = ConfigDict(extra="forbid")
    stage: str = Field(description="stage name")
    step: int = Field(description="optimizer steps done")
    consumed_samples: int = Field(description="training samples read: the data position")
    scheduler: dict[str, Any] = Field(description="OptimizerParamScheduler.state_dict()")
    seq_length: int = Field(description="tokens per sample")
    global_batch_size: int = Field(description="samples per step")
    format: Literal["torch", "dist"] = Field(
        description="torch: CPU torch.save; dist: megatron dist_checkpointing"
    )
    arch: DenseArchitecture = Field(description="architecture trained (RoPE as changed by the stages)")
    source_hf_dir: str = Field(
        description="HF directory training started from (config and tokenizer for export)"
    )


def iteration_dir(stage_dir: Path, step: int) -> Path:
    return stage_dir / f"iter_{step:07d}"


def latest_checkpoint(stage_dir: Path) -> Path | None:
    """The directory named by ``stage_dir/latest``, or None before the first save."""
    marker = stage_dir / LATEST_FILE
    if not marker.is_file():
        return None
    path = stage_dir / marker.read_text().strip()
    if not (path / TRAIN_STATE_FILE).is_file():
        raise FileNotFoundError(f"{marker} names {path}, which holds no {TRAIN_STATE_FILE}")
    return path


def read_train_state(checkpoint: Path) -> TrainState:
    return TrainState.model_validate_json((checkpoint / TRAIN_STATE_FILE).read_text())


def save_checkpoint(
    runtime: Runtime, trainer: Trainer, state: TrainState, stage_dir: Path, keep_last: int | None
) -> Path:
    """Save into ``iter_X.tmp``, then rename and point ``latest`` at it: a crash leaves the previous one."""
    final = iteration_dir(stage_dir, state.step)
    tmp = final.with_name(final.name + ".tmp")
    if runtime.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    runtime.barrier()
    trainer.save(tmp)
    runtime.barrier()
    if runtime.rank == 0:
        (tmp / TRAIN_STATE_FILE).write_text(state.model_dump_json(indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        marker_tmp = stage_dir / (LATEST_FILE + ".tmp")
        marker_tmp.write_text(final.name)
        marker_tmp.replace(stage_dir / LATEST_FILE)
        if keep_last:
            for old in sorted(stage_dir.glob("iter_???????"))[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    runtime.barrier()
    return final


# =============================================================================
# Learning-rate schedule (megatron's OptimizerParamScheduler, in optimizer steps)
# =============================================================================

_DECAY_STYLE = {"cosine": "cosine", "wsd": "WSD", "linear": "linear", "constant": "constant"}


def make_scheduler(optimizer: Any, optim: OptimConfig, train_steps: int) -> Any:
    """Linear warmup from 0, then cosine / WSD / linear / constant to ``min_lr`` at ``train_steps``."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=optim.lr,
        min_lr=optim.min_lr,
        lr_warmup_steps=optim.warmup_steps,
        lr_decay_steps=train_steps,
        lr_decay_style=_DECAY_STYLE[optim.schedule],
        start_wd=optim.weight_decay,
        end_wd=optim.weight_decay,
        wd_incr_steps=train_steps,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=False,  # the config is the truth; a mismatch is an error
        wsd_decay_steps=optim.wsd_decay_steps,
        lr_wsd_decay_style=optim.wsd_decay_style,
    )


def current_lr(optimizer: Any) -> float:
    return float(optimizer.param_groups[0]["lr"])


# =============================================================================
# One stage
# =============================================================================


@dataclass
class StageResult:
    """What a stage did (losses are per step, evals are (step, held-out loss))."""

    name: str
    final_checkpoint: Path
    arch: DenseArchitecture
    losses: list[tuple[int, float]] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    skipped: bool = False
    interrupted: bool = False  # stopped by exit_after_steps before train_steps


@dataclass
class StageStart:
    """Where a stage's weights come from when it has no checkpoint of its own."""

    hf_dir: Path | None = None  # the HF model (first stage)
    checkpoint: Path | None = None  # the previous stage's final checkpoint


class MetricsLog:
    """Rank 0 prints one line per event and appends it as JSON to ``<stage>/metrics.jsonl``."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, line: str, **record: Any) -> None:
        if not self.enabled:
            return
        print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({**record, "message": line}) + "\n")


def evaluate(trainer: Trainer, valid: Any, stage: StageConfig, dp_rank: int, dp_size: int) -> float:
    """Mean held-out loss over the same ``eval.batches`` global batches every time."""
    totals = LossTotals(0.0, 0)
    for b in range(stage.eval.batches):
        share = rank_share(
            valid,
            b * stage.global_batch_size,
            stage.global_batch_size,
            stage.micro_batch_size,
            dp_rank,
            dp_size,
        )
        totals = totals + trainer.eval_loss(share)
    return totals.mean


def run_stage(
    cfg: CPTConfig,
    stage: StageConfig,
    arch: DenseArchitecture,
    runtime: Runtime,
    start: StageStart,
    source_hf_dir: Path,
    exit_after_steps: int | None = None,
) -> StageResult:
    """Train one stage to ``train_steps`` (resuming from its latest checkpoint if there is one).

    ``exit_after_steps`` stops after that many steps of this invocation, with a checkpoint
    (for time-limited cluster jobs; the next invocation resumes).
    """
    from pretrain.convert import load_hf_into_model

    stage_dir = Path(cfg.checkpoint.dir) / stage.name
    if runtime.rank == 0:
        stage_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(stage_dir / "metrics.jsonl", enabled=runtime.rank == 0)
    result = StageResult(name=stage.name, final_checkpoint=stage_dir, arch=arch)

    # ---- where to start --------------------------------------------------------------
    resume = latest_checkpoint(stage_dir)
    resume_state = read_train_state(resume) if resume is not None else None
    if resume_state is not None and resume_state.step >= stage.train_steps:
        log.write(
            f"[{stage.name}] already finished at step {resume_state.step} ({resume})",
            event="skip",
            step=resume_state.step,
        )
        result.final_checkpoint, result.skipped = resume, True
        return result

    runtime.start_stage(stage, cfg.seed)
    dp_rank, dp_size = runtime.data_parallel()
    if stage.global_batch_size % (stage.micro_batch_size * dp_size):
        raise ValueError(
            f"stages.{stage.name}.global_batch_size={stage.global_batch_size} must be a multiple of "
            f"micro_batch_size x data-parallel size ({stage.micro_batch_size} x {dp_size})"
        )
    log.write(
        f"[{stage.name}] {runtime.name}: {arch.family} {arch.num_parameters / 1e6:,.0f}M parameters, "
        f"seq {stage.seq_length}, RoPE base {arch.rope_base:g}, {runtime.world_size} device(s), DP {dp_size}, "
        f"TP {stage.parallel.tensor}, PP {stage.parallel.pipeline}, CP {stage.parallel.context}",
        event="start",
        step=0,
    )
    model = runtime.build_model(arch, stage)
    if resume is None and start.hf_dir is not None:
        # Before the trainer exists: mcore's optimizer copies these into its fp32 main weights.
        load_hf_into_model(model, start.hf_dir, arch)
    trainer = runtime.make_trainer(model, stage)
    scheduler = make_scheduler(trainer.optimizer, stage.optim, stage.train_steps)
    step, consumed = 0, 0
    if resume is not None and resume_state is not None:
        if (
            resume_state.global_batch_size != stage.global_batch_size
            or resume_state.seq_length != stage.seq_length
        ):
            raise ValueError(
                f"stages.{stage.name}: batch size or seq_length differ from the checkpoint {resume}"
            )
        trainer.load(resume, with_optimizer=True)
        scheduler.load_state_dict(resume_state.scheduler)
        step, consumed = resume_state.step, resume_state.consumed_samples
        log.write(
            f"[{stage.name}] resumed from {resume}: step {step}, {consumed} samples read",
            event="resume",
            step=step,
        )
    elif start.checkpoint is not None:
        trainer.load(start.checkpoint, with_optimizer=False)
        log.write(f"[{stage.name}] weights from {start.checkpoint}", event="init", step=0)

    # ---- data ----------------------------------------------------------------------
    blends = stage_blends(
        Path(stage.data.blend),
        stage.data.holdout_kinds,
        Path(stage.data.replay_blend) if stage.data.replay_blend else None,
        stage.data.replay_weight,
    )
    if blends.vocab_size > arch.vocab_size:
        raise ValueError(
            f"stages.{stage.name}.data.blend: tokenizer ids go up to {blends.vocab_size - 1}, "
            f"the model has {arch.vocab_size} embeddings (tokenized with another tokenizer?)"
        )
    datasets: StageDatasets = build_datasets(
        blends,
        seq_length=stage.seq_length,
        train_samples=stage.train_steps * stage.global_batch_size,
        valid_samples=stage.eval.batches * stage.global_batch_size,
        valid_fraction=stage.data.valid_fraction,
        seed=cfg.seed,
        cache_dir=stage_dir / "index_cache",
    )

    # ---- the loop ------------------------------------------------------------------
    flops_per_token = training_flops_per_token(arch, stage.seq_length)
    tokens_per_step = stage.global_batch_size * stage.seq_length

    def run_eval() -> None:
        loss = evaluate(trainer, datasets.valid, stage, dp_rank, dp_size)
        result.evals.append((step, loss))
        log.write(
            f"[{stage.name}] step {step:>6} | held-out loss {loss:.4f}",
            event="eval",
            step=step,
            eval_loss=loss,
        )

    if step == 0:
        run_eval()
    # Throughput counts data reading and training steps only, not evaluation or checkpoints.
    window_s, window_steps = 0.0, 0
    while step < stage.train_steps:
        started = time.perf_counter()
        batch = rank_share(
            datasets.train, consumed, stage.global_batch_size, stage.micro_batch_size, dp_rank, dp_size
        )
        totals, grad_norm = trainer.train_step(batch)  # returns host floats: the step has finished
        scheduler.step(1)
        window_s += time.perf_counter() - started
        step += 1
        consumed += stage.global_batch_size
        window_steps += 1
        result.losses.append((step, totals.mean))
        if step % stage.log_interval == 0 or step == stage.train_steps:
            tokens_per_s = window_steps * tokens_per_step / window_s
            util = (
                mfu(tokens_per_s, flops_per_token, runtime.world_size, cfg.peak_flops_per_device)
                if cfg.peak_flops_per_device
                else None
            )
            util_txt = f"{100 * util:.3g}%" if util is not None else "n/a"
            log.write(
                f"[{stage.name}] step {step:>6}/{stage.train_steps} | loss {totals.mean:.4f} | "
                f"lr {current_lr(trainer.optimizer):.3e} | grad norm {grad_norm:.3f} | "
                f"{tokens_per_s:,.0f} tokens/s ({tokens_per_s / runtime.world_size:,.0f}/device) | MFU {util_txt}",
                event="train",
                step=step,
                loss=totals.mean,
                lr=current_lr(trainer.optimizer),
                grad_norm=grad_norm,
                tokens_per_s=tokens_per_s,
                mfu=util,
            )
            window_s, window_steps = 0.0, 0
        if step % stage.eval.interval == 0 or step == stage.train_steps:
            run_eval()
        stop = exit_after_steps is not None and len(result.losses) >= exit_after_steps
        if step % cfg.checkpoint.interval == 0 or step == stage.train_steps or stop:
            state = TrainState(
                stage=stage.name,
                step=step,
                consumed_samples=consumed,
                scheduler=scheduler.state_dict(),
                seq_length=stage.seq_length,
                global_batch_size=stage.global_batch_size,
                format=runtime.checkpoint_format,
                arch=arch,
                source_hf_dir=str(source_hf_dir),
            )
            saved = save_checkpoint(runtime, trainer, state, stage_dir, cfg.checkpoint.keep_last)
            log.write(f"[{stage.name}] saved {saved}", event="save", step=step)
        if stop and step < stage.train_steps:
            log.write(
                f"[{stage.name}] exiting after {len(result.losses)} steps (exit_after_steps)",
                event="exit",
                step=step,
            )
            result.final_checkpoint, result.interrupted = iteration_dir(stage_dir, step), True
            return result

    result.final_checkpoint = iteration_dir(stage_dir, step)
    if cfg.checkpoint.export_hf:
        out = stage_dir / "hf"
        if runtime.export_hf(trainer, arch, source_hf_dir, out):
            log.write(f"[{stage.name}] exported HF model to {out}", event="export", step=step)
        else:
            log.write(
                f"[{stage.name}] export on one CPU process: python -m pretrain.convert export {result.final_checkpoint} --out {out}",
                event="export_hint",
                step=step,
            )
    return result


# =============================================================================
# The run: stages in order
# =============================================================================


def run(
    cfg: CPTConfig,
    only_stage: str | None = None,
    runtime: Runtime | None = None,
    exit_after_steps: int | None = None,
) -> list[StageResult]:
    """Run every stage (or only ``only_stage``) in order; returns what each did.

    ``exit_after_steps``: stop (with a checkpoint) after that many training steps in total.
    """
    if only_stage is not None and only_stage not in {s.name for s in cfg.stages}:
        from synth.cli import UsageError

        raise UsageError(f"--stage: no stage named {only_stage!r} (stages: {[s.name for s in cfg.stages]})")
    for stage in cfg.stages:  # fail before any model is built
        if only_stage is not None and stage.name != only_stage:
            continue
        for key, path in (("blend", stage.data.blend), ("replay_blend", stage.data.replay_blend)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(
                    f"stages.{stage.name}.data.{key}: {path} not found (run `agentcpt tokenize`)"
                )
    source = cfg.model.resolve()
    arch = load_architecture(source)
    runtime = runtime or make_runtime(cfg)
    results: list[StageResult] = []
    previous: Path | None = None
    try:
        for i, stage in enumerate(cfg.stages):
            # RoPE changes accumulate: stage 2 keeps stage 1's base unless it sets its own.
            arch = arch.with_rope(stage.rope.base, stage.rope.scaling, stage.seq_length)
            stage_dir = Path(cfg.checkpoint.dir) / stage.name
            if only_stage is not None and stage.name != only_stage:
                done = latest_checkpoint(stage_dir)
                previous = (
                    done if done is not None and read_train_state(done).step >= stage.train_steps else None
                )
                continue
            start = StageStart(hf_dir=source) if i == 0 else StageStart(checkpoint=previous)
            if i > 0 and previous is None and latest_checkpoint(stage_dir) is None:
                raise FileNotFoundError(
                    f"stage {stage.name!r} starts from stage {cfg.stages[i - 1].name!r}, which has no final checkpoint"
                )
            budget = (
                None if exit_after_steps is None else exit_after_steps - sum(len(r.losses) for r in results)
            )
            if budget is not None and budget <= 0:
                break
            result = run_stage(cfg, stage, arch, runtime, start, source, budget)
            results.append(result)
            if result.interrupted:
                break
            previous = result.final_checkpoint
    finally:
        runtime.shutdown()
    return results


def cpt_command(config: str, stage: str | None = None, exit_after_steps: int | None = None) -> int:
    """``agentcpt cpt CONFIG [--stage NAME]``: bad config or data -> one-line error, exit 2."""
    from pretrain.convert import ConversionError
    from pretrain.data import DataError
    from pretrain.model import ArchitectureError
    from synth.cli import UsageError

    cfg = load_cpt_config(config)
    try:
        run(cfg, stage, exit_after_steps=exit_after_steps)
    except (DataError, ArchitectureError, ConversionError) as err:
        raise UsageError(str(err)) from None
    return 0


def quiet_megatron_warnings() -> None:
    """Silence megatron-core's import-time notices (no apex / TE, deprecations) in command output."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"megatron\.")


def main(argv: list[str] | None = None) -> int:
    """``python -m pretrain.train CONFIG [--stage NAME]`` (what torchrun starts on every rank)."""
    parser = argparse.ArgumentParser(prog="python -m pretrain.train", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="CPT config YAML")
    parser.add_argument("--stage", help="run only this stage (default: all, in order)")
    parser.add_argument(
        "--exit-after-steps",
        type=int,
        help="stop with a checkpoint after this many steps (time-limited jobs)",
    )
    args = parser.parse_args(argv)
    quiet_megatron_warnings()
    from synth.cli import UsageError
    from synth.spec import SpecError

    try:
        return cpt_command(args.config, args.stage, args.exit_after_steps)
    except (SpecError, UsageError, FileNotFoundError, ValueError) as err:
        print(f"pretrain.train: error: {err}", file=sys.stderr)
        return 2


# =============================================================================
# GPU runtime: pure megatron-core
# =============================================================================


class GpuRuntime:
    """NCCL, TP/PP/CP from the stage, TE layers, bf16, mcore DDP + distributed optimizer."""

    name = "megatron-core (GPU)"
    checkpoint_format: Literal["torch", "dist"] = "dist"

    def __init__(self, cfg: CPTConfig) -> None:
        import torch.distributed as dist

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
            )
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def start_stage(self, stage: StageConfig, seed: int) -> None:
        from megatron.core import parallel_state, tensor_parallel

        p = stage.parallel
        if self.world_size % (p.tensor * p.pipeline * p.context):
            raise ValueError(
                f"stages.{stage.name}.parallel: tensor x pipeline x context = {p.tensor * p.pipeline * p.context} "
                f"must divide the {self.world_size} GPUs"
            )
        if p.context > 1 and not _have_transformer_engine():
            raise ValueError(
                f"stages.{stage.name}.parallel.context > 1 needs Transformer Engine (not installed)"
            )
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=p.tensor,
            pipeline_model_parallel_size=p.pipeline,
            context_parallel_size=p.context,
        )
        # Per-TP-rank RNG streams for initialization and dropout (megatron's convention).
        tensor_parallel.model_parallel_cuda_manual_seed(seed)

    def data_parallel(self) -> tuple[int, int]:
        from megatron.core import parallel_state

        # CP ranks of one DP replica read the same samples and slice them by sequence.
        return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()

    def build_model(self, arch: DenseArchitecture, stage: StageConfig) -> Any:
        from megatron.core import parallel_state

        from pretrain.model import build_gpt_model, transformer_config

        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float32
        config = transformer_config(
            arch, stage.parallel, dtype, use_cpu_initialization=False, recompute=stage.recompute
        )
        impl = "transformer_engine" if _have_transformer_engine() else "local"
        return build_gpt_model(
            arch,
            config,
            impl,
            stage.seq_length,
            pre_process=parallel_state.is_pipeline_first_stage(),
            post_process=parallel_state.is_pipeline_last_stage(),
        )

    def make_trainer(self, model: Any, stage: StageConfig) -> Trainer:
        return McoreTrainer(model, stage)

    def barrier(self) -> None:
        torch.distributed.barrier()

    def export_hf(self, trainer: Trainer, arch: DenseArchitecture, source_dir: Path, out_dir: Path) -> bool:
        # Weights are sharded over TP/PP/DP ranks; `python -m pretrain.convert export` reads
        # the dist checkpoint into one unsharded model on CPU instead of gathering here.
        return False

    def shutdown(self) -> None:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _have_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


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

    def _forward_step(self, data_iterator: Any, model: Any) -> tuple[torch.Tensor, Callable[..., Any]]:
        from functools import partial

        from megatron.core.utils import get_batch_on_this_cp_rank

        batch: Batch = next(data_iterator)
        tensors = get_batch_on_this_cp_rank(
            {k: v.cuda(non_blocking=True) for k, v in batch.as_dict().items()}
        )
        output = model(tensors["tokens"], tensors["position_ids"], None, labels=tensors["labels"])
        return output, partial(self._loss, tensors["loss_mask"])

    def _run(self, microbatches: list[Batch], forward_only: bool) -> LossTotals:
        from megatron.core import parallel_state

        reports = self.forward_backward(
            forward_step_func=self._forward_step,
            data_iterator=iter(microbatches),
            model=[self.model],
            num_microbatches=len(microbatches),
            seq_length=self.stage.seq_length,
            micro_batch_size=self.stage.micro_batch_size,
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


if __name__ == "__main__":
    sys.exit(main())
