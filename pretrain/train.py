"""The CPT trainer: ``agentcpt cpt CONFIG`` / ``torchrun ... -m pretrain.train CONFIG``.

Only the flow lives here, top to bottom: the run over stages, one stage's loop, the entry
points. The pieces it calls each have their own module:

* `pretrain.runtime` — where it computes (GPU: megatron-core + Transformer Engine; CPU:
  the same model in one process), behind one `Runtime` / `Trainer` interface;
* `pretrain.layout` — the preflight that checks every stage's layout before stage 1;
* `pretrain.data` / `pretrain.packing` — blends to datasets, batches, document masks;
* `pretrain.checkpoint` — the checkpoint layout and its `TrainState`;
* `pretrain.schedule` — megatron's learning-rate scheduler;
* `pretrain.metrics` — stdout, metrics.jsonl, TensorBoard, W&B.

Each stage: build the model; start from (in order of preference) the stage's own latest
checkpoint (model, optimizer, scheduler, step and data position: an exact resume), the
previous stage's final weights, or the HF model; evaluate every held-out set before
training, every ``eval.interval`` steps and at the end; log loss, learning rate, gradient
norm, tokens/s and MFU; save every ``checkpoint.interval`` steps and at the end; free the
stage's model before the next stage builds its own.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pretrain.checkpoint import (
    TrainState,
    finished_checkpoint,
    iteration_dir,
    latest_checkpoint,
    read_train_state,
    save_checkpoint,
)
from pretrain.config import CPTConfig, StageConfig, load_cpt_config
from pretrain.convert import ConversionError, load_hf_into_model
from pretrain.data import DataError, LossTotals, StageDatasets, build_datasets, rank_share, stage_blends
from pretrain.flops import mfu, training_flops_per_token
from pretrain.layout import LayoutError, check_layouts
from pretrain.metrics import MetricsLog, TrackerError, Trackers
from pretrain.model import Architecture, ArchitectureError, load_architecture
from pretrain.runtime.base import Runtime, Trainer
from pretrain.runtime.choose import make_runtime
from pretrain.runtime.gpu import GpuSetupError
from pretrain.schedule import current_lr, make_scheduler
from synth.errors import SpecError, UsageError


@dataclass
class StageResult:
    """What a stage did: losses per step, held-out losses per evaluation."""

    name: str
    final_checkpoint: Path
    arch: Architecture
    losses: list[tuple[int, float]] = field(default_factory=list)
    # (step, mean loss over every held-out token) per evaluation
    evals: list[tuple[int, float]] = field(default_factory=list)
    # (step, {held-out set or group name: mean loss}) per evaluation, see `heldout_losses`
    heldout: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    skipped: bool = False
    interrupted: bool = False  # stopped by exit_after_steps before train_steps


@dataclass
class StageStart:
    """Where a stage's weights come from when it has no checkpoint of its own."""

    hf_dir: Path | None = None  # the HF model (first stage)
    checkpoint: Path | None = None  # the previous stage's final checkpoint


# =============================================================================
# Held-out evaluation
# =============================================================================


def evaluate(
    trainer: Trainer,
    datasets: StageDatasets,
    stage: StageConfig,
    dp_rank: int,
    dp_size: int,
    eod_id: int | None,
) -> dict[str, LossTotals]:
    """Loss totals of every held-out set over the same ``eval.batches`` global batches every time."""
    totals: dict[str, LossTotals] = {}
    for eval_set, dataset in datasets.evals:
        total = LossTotals(0.0, 0)
        for b in range(stage.eval.batches):
            share = rank_share(
                dataset,
                b * stage.global_batch_size,
                stage.global_batch_size,
                stage.micro_batch_size,
                dp_rank,
                dp_size,
                eod_id,
            )
            total = total + trainer.eval_loss(share)
        totals[eval_set.name] = total
    return totals


def heldout_losses(totals: dict[str, LossTotals]) -> dict[str, float]:
    """Mean loss per held-out set (``group/kind``), per group (``group``) and over all (``all``)."""
    groups: dict[str, LossTotals] = {}
    for name, t in totals.items():
        group = name.split("/")[0]
        groups[group] = groups.get(group, LossTotals(0.0, 0)) + t
    everything = sum(totals.values(), LossTotals(0.0, 0))
    return {
        **{name: t.mean for name, t in totals.items() if "/" in name},
        **{g: t.mean for g, t in groups.items()},
        "all": everything.mean,
    }


# =============================================================================
# One stage
# =============================================================================


def run_stage(
    cfg: CPTConfig,
    stage: StageConfig,
    arch: Architecture,
    runtime: Runtime,
    start: StageStart,
    source_hf_dir: Path,
    log: MetricsLog,
    exit_after_steps: int | None = None,
) -> StageResult:
    """Train one stage to ``train_steps`` (resuming from its latest checkpoint if there is one).

    ``exit_after_steps`` stops after that many steps of this invocation, with a checkpoint
    (for time-limited cluster jobs; the next invocation resumes).
    """
    stage_dir = Path(cfg.checkpoint.dir) / stage.name
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
    p = stage.parallel
    moe = f", {arch.moe.num_experts} experts (top {arch.moe.top_k})" if arch.moe else ""
    log.write(
        f"[{stage.name}] {runtime.name}: {arch.family} {arch.num_parameters / 1e6:,.0f}M parameters{moe}, "
        f"seq {stage.seq_length}, RoPE base {arch.rope_base:g}, {runtime.world_size} device(s): "
        f"TP {p.tensor} x PP {p.pipeline} x CP {p.context} x DP {dp_size}"
        + (f", EP {p.expert}" if p.expert > 1 else "")
        + f", recompute {stage.recompute}, document masks {'on' if stage.data.document_mask else 'off'}",
        event="start",
        step=0,
    )
    model = runtime.build_model(arch, stage)
    if resume is None and start.hf_dir is not None:
        # Before the trainer exists: mcore's optimizer copies these into its fp32 main weights.
        load_hf_into_model(model, start.hf_dir, arch)
    trainer = runtime.make_trainer(model, stage)
    del model  # the trainer owns it; no other reference may outlive the stage
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
    datasets = build_datasets(
        blends,
        seq_length=stage.seq_length,
        train_samples=stage.train_steps * stage.global_batch_size,
        valid_samples=stage.eval.batches * stage.global_batch_size,
        valid_fraction=stage.data.valid_fraction,
        seed=cfg.seed,
        cache_dir=stage_dir / "index_cache",
    )
    eod_id = datasets.eod_id if stage.data.document_mask else None

    # ---- the loop ------------------------------------------------------------------
    flops_per_token = training_flops_per_token(arch, stage.seq_length)
    tokens_per_step = stage.global_batch_size * stage.seq_length

    def run_eval() -> None:
        losses = heldout_losses(evaluate(trainer, datasets, stage, dp_rank, dp_size, eod_id))
        result.evals.append((step, losses["all"]))
        result.heldout.append((step, losses))
        groups = " | ".join(f"{k} {v:.4f}" for k, v in losses.items() if "/" not in k and k != "all")
        log.write(
            f"[{stage.name}] step {step:>6} | held-out loss {losses['all']:.4f} ({groups})",
            event="eval",
            step=step,
            eval_loss=losses["all"],
            heldout=losses,
        )
        log.scalars(step, {f"heldout/{k}": v for k, v in losses.items()})

    if step == 0:
        run_eval()
    # Throughput counts data reading and training steps only, not evaluation or checkpoints.
    window_s, window_steps = 0.0, 0
    while step < stage.train_steps:
        started = time.perf_counter()
        batch = rank_share(
            datasets.train,
            consumed,
            stage.global_batch_size,
            stage.micro_batch_size,
            dp_rank,
            dp_size,
            eod_id,
        )
        totals, grad_norm = trainer.train_step(batch)  # returns host floats: the step has finished
        scheduler.step(1)
        window_s += time.perf_counter() - started
        step += 1
        consumed += stage.global_batch_size
        window_steps += 1
        result.losses.append((step, totals.mean))
        lr = current_lr(trainer.optimizer)
        log.scalars(step, {"train/loss": totals.mean, "train/lr": lr, "train/grad_norm": grad_norm})
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
                f"lr {lr:.3e} | grad norm {grad_norm:.3f} | "
                f"{tokens_per_s:,.0f} tokens/s ({tokens_per_s / runtime.world_size:,.0f}/device) | MFU {util_txt}",
                event="train",
                step=step,
                loss=totals.mean,
                lr=lr,
                grad_norm=grad_norm,
                tokens_per_s=tokens_per_s,
                mfu=util,
            )
            log.scalars(step, {"train/tokens_per_s": tokens_per_s, "train/mfu": util})
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
# The run: preflight, then stages in order
# =============================================================================


def run(
    cfg: CPTConfig,
    only_stage: str | None = None,
    runtime: Runtime | None = None,
    exit_after_steps: int | None = None,
) -> list[StageResult]:
    """Run every stage (or only ``only_stage``) in order; returns what each did.

    Every stage's layout is checked (`pretrain.layout`) before any model is built.
    ``exit_after_steps``: stop (with a checkpoint) after that many training steps in total.
    """
    if only_stage is not None and only_stage not in {s.name for s in cfg.stages}:
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
    trackers: Trackers | None = None
    try:
        check_layouts(
            cfg,
            arch,
            runtime.world_size,
            runtime.device_memory(),
            stages=[only_stage] if only_stage is not None else None,
        )
        trackers = Trackers(cfg, enabled=runtime.rank == 0)
        for i, stage in enumerate(cfg.stages):
            # RoPE changes accumulate: stage 2 keeps stage 1's base unless it sets its own.
            arch = arch.with_rope(stage.rope.base, stage.rope.scaling, stage.seq_length)
            stage_dir = Path(cfg.checkpoint.dir) / stage.name
            if only_stage is not None and stage.name != only_stage:
                previous = finished_checkpoint(stage_dir, stage.train_steps)
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
            if runtime.rank == 0:
                stage_dir.mkdir(parents=True, exist_ok=True)
            runtime.barrier()
            log = trackers.stage_log(stage.name, stage_dir)
            try:
                result = run_stage(cfg, stage, arch, runtime, start, source, log, budget)
            finally:
                log.close()
                runtime.end_stage()  # stage N's model and optimizer are gone before N+1 builds
            results.append(result)
            if result.interrupted:
                break
            previous = result.final_checkpoint
    finally:
        if trackers is not None:
            trackers.close()
        runtime.shutdown()
    return results


# =============================================================================
# Entry points
# =============================================================================


def cpt_command(config: str, stage: str | None = None, exit_after_steps: int | None = None) -> int:
    """``agentcpt cpt CONFIG [--stage NAME]``: bad config, data, layout or setup -> one-line error, exit 2."""
    cfg = load_cpt_config(config)
    try:
        run(cfg, stage, exit_after_steps=exit_after_steps)
    except (DataError, ArchitectureError, ConversionError, LayoutError, TrackerError, GpuSetupError) as err:
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
    try:
        return cpt_command(args.config, args.stage, args.exit_after_steps)
    except (SpecError, UsageError, FileNotFoundError, ValueError) as err:
        print(f"pretrain.train: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
