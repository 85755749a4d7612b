"""The CPT config: one YAML file, two (or more) stages run in order (``agentcpt cpt CONFIG``).

AgentFounder (Tongyi Lab 2025, "Scaling Agents via Continual Pre-training") trains in two
stages: stage 1 on ~200B tokens at 32K context, stage 2 on ~100B tokens of long,
high-quality agentic data at 128K, with a small share of general data mixed in. Each stage
here names its blend file (from ``agentcpt tokenize``), sequence length, steps, learning-rate
schedule, RoPE change and parallel layout; stage N+1 starts from stage N's final weights.

Validation raises `pydantic.ValidationError` naming the field; `load_cpt_config` turns it
into `synth.spec.SpecError` (exit 2 from the CLI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from pretrain.model import ParallelSizes, Recompute, RopeScaling


class ModelSource(BaseModel):
    """Where the starting weights (and the tokenizer) come from."""

    model_config = ConfigDict(extra="forbid")
    hf_dir: str = Field(
        description="HF model directory (config.json + safetensors), or 'embedded' for SmolLM2-135M-Instruct "
        "converted from the bundled GGUF"
    )

    def resolve(self) -> Path:
        """The HF directory on disk (converting the embedded model on first use)."""
        if self.hf_dir == "embedded":
            from synth.llm.embedded import ensure_model_dir

            return Path(ensure_model_dir())
        path = Path(self.hf_dir).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.hf_dir: {path} has no config.json")
        return path


class DataConfig(BaseModel):
    """A stage's training mixture and its held-out set (see pretrain/data.py)."""

    model_config = ConfigDict(extra="forbid")
    blend: str = Field(
        description="blend file from `agentcpt tokenize` for this CPT stage (blend_cpt<N>.json)"
    )
    holdout_kinds: list[str] = Field(
        default_factory=list,
        description="corpus kinds kept out of training and used as the validation set (e.g. decision, rollout)",
    )
    valid_fraction: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description="share of every dataset held out for validation when holdout_kinds is empty",
    )
    replay_blend: str | None = Field(
        None, description="blend file of general text (`agentcpt tokenize --input ...`) mixed into training"
    )
    replay_weight: float = Field(
        0.0, ge=0, lt=1, description="share of training samples drawn from replay_blend"
    )
    document_mask: bool = Field(
        False,
        description="attend only within each packed document (THD cu_seqlens at EOD tokens; "
        "pretrain/packing.py); recommended for long-context stages",
    )

    @model_validator(mode="after")
    def _replay_needs_blend(self) -> DataConfig:
        if self.replay_weight > 0 and not self.replay_blend:
            raise ValueError("replay_weight > 0 needs replay_blend")
        return self


class OptimConfig(BaseModel):
    """AdamW and the learning-rate schedule (megatron's `OptimizerParamScheduler`)."""

    model_config = ConfigDict(extra="forbid")
    lr: PositiveFloat = Field(description="peak learning rate")
    min_lr: float = Field(0.0, ge=0, description="final learning rate of the decay")
    warmup_steps: NonNegativeInt = Field(0, description="linear warmup from 0 to lr, in optimizer steps")
    schedule: Literal["cosine", "wsd", "linear", "constant"] = Field(
        "cosine", description="decay after warmup: cosine to min_lr, or WSD (constant, then a final decay)"
    )
    wsd_decay_steps: NonNegativeInt | None = Field(
        None, description="WSD: steps of the final decay (the 'D')"
    )
    wsd_decay_style: Literal["linear", "cosine", "exponential", "minus_sqrt"] = Field(
        "minus_sqrt", description="WSD: shape of the final decay"
    )
    weight_decay: float = Field(0.1, ge=0, description="decoupled weight decay (not on norms and biases)")
    adam_beta1: float = Field(0.9, gt=0, lt=1, description="Adam beta1")
    adam_beta2: float = Field(0.95, gt=0, lt=1, description="Adam beta2")
    adam_eps: PositiveFloat = Field(1e-8, description="Adam epsilon")
    clip_grad: PositiveFloat = Field(1.0, description="global gradient-norm clip")

    @model_validator(mode="after")
    def _check(self) -> OptimConfig:
        if self.min_lr > self.lr:
            raise ValueError("min_lr must not exceed lr")
        if self.schedule == "wsd" and not self.wsd_decay_steps:
            raise ValueError("schedule 'wsd' needs wsd_decay_steps")
        return self


class RopeChange(BaseModel):
    """RoPE for a stage: a larger base (ABF) and/or a frequency scaling for longer context."""

    model_config = ConfigDict(extra="forbid")
    base: PositiveFloat | None = Field(None, description="new RoPE theta (None keeps the model's)")
    scaling: RopeScaling | None = Field(None, description="RoPE scaling (None keeps the model's)")


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    interval: PositiveInt = Field(
        100, description="held-out loss every this many steps (and at the start and end)"
    )
    batches: PositiveInt = Field(
        4, description="global batches of held-out samples per evaluation (the same ones each time)"
    )


class StageConfig(BaseModel):
    """One CPT stage."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="stage name (checkpoint sub-directory)")
    seq_length: PositiveInt = Field(description="tokens per sample")
    train_steps: PositiveInt = Field(description="optimizer steps in this stage")
    global_batch_size: PositiveInt = Field(
        description="samples per optimizer step, over all data-parallel ranks"
    )
    micro_batch_size: PositiveInt = Field(1, description="samples per forward pass on one rank")
    data: DataConfig
    optim: OptimConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    rope: RopeChange = Field(default_factory=RopeChange)
    parallel: ParallelSizes = Field(default_factory=ParallelSizes)
    recompute: Recompute = Field(
        "none",
        description="activation recomputation (GPU): selective = core attention + MLP, full = whole layers",
    )
    log_interval: PositiveInt = Field(10, description="log loss, tokens/s and MFU every this many steps")

    @model_validator(mode="after")
    def _check(self) -> StageConfig:
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError("global_batch_size must be a multiple of micro_batch_size")
        if self.optim.warmup_steps >= self.train_steps:
            raise ValueError("optim.warmup_steps must be below train_steps")
        if (
            self.optim.wsd_decay_steps
            and self.optim.wsd_decay_steps > self.train_steps - self.optim.warmup_steps
        ):
            raise ValueError("optim.wsd_decay_steps must fit after the warmup")
        cp = self.parallel.context
        if cp > 1 and self.seq_length % (2 * cp):
            raise ValueError(
                f"seq_length must be divisible by 2 x parallel.context ({2 * cp}) for load-balanced CP"
            )
        if (
            self.parallel.tensor > 1
            and self.parallel.sequence_parallel
            and (self.seq_length // cp) % self.parallel.tensor
        ):
            raise ValueError(
                "seq_length / parallel.context must be divisible by parallel.tensor (sequence parallel)"
            )
        return self


class CheckpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dir: str = Field(description="root directory; each stage writes <dir>/<stage>/iter_XXXXXXX")
    interval: PositiveInt = Field(
        500, description="save every this many steps (and at the end of each stage)"
    )
    keep_last: PositiveInt | None = Field(
        None, description="keep only the newest N checkpoints per stage (None: all)"
    )
    export_hf: bool = Field(
        True,
        description="write <dir>/<stage>/hf (an HF directory) when a stage finishes (CPU; GPU: see README)",
    )


class LoggingConfig(BaseModel):
    """Experiment trackers besides stdout and metrics.jsonl (see pretrain/metrics.py)."""

    model_config = ConfigDict(extra="forbid")
    tensorboard: bool = Field(True, description="write TensorBoard event files")
    tensorboard_dir: str | None = Field(
        None, description="TensorBoard root (default <checkpoint.dir>/tensorboard)"
    )
    wandb_project: str | None = Field(
        None, description="W&B project (default: the WANDB_PROJECT environment variable; unset: no W&B)"
    )


class CPTConfig(BaseModel):
    """The whole CPT run: a model, checkpointing, hardware facts, and stages in order."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="run name (logs)")
    model: ModelSource
    checkpoint: CheckpointConfig
    stages: list[StageConfig] = Field(
        min_length=1, description="run in order; each starts from the previous one's weights"
    )
    precision: Literal["bf16", "fp32"] = Field(
        "bf16", description="GPU training precision (the CPU path is always fp32)"
    )
    peak_flops_per_device: PositiveFloat | None = Field(
        None,
        description="dense peak FLOP/s of one device for MFU (H100 SXM bf16: 989e12); None: MFU not logged",
    )
    seed: int = Field(1234, description="data order and initialization seed")
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    distributed_timeout_minutes: PositiveInt = Field(
        60,
        description="NCCL collective timeout; must cover rank 0 building the dataset index of a large "
        "corpus while the other ranks wait (torch's default of 10 minutes does not)",
    )

    @model_validator(mode="after")
    def _unique_stage_names(self) -> CPTConfig:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        return self

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


def load_cpt_config(path: str | Path) -> CPTConfig:
    """Read and validate a CPT config; raises `SpecError` naming the file and the field."""
    from synth.errors import SpecError

    p = Path(path)
    if not p.is_file():
        raise SpecError(str(p), "CPT config not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SpecError(str(p), f"not valid YAML ({err})") from None
    try:
        return CPTConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise SpecError(f"{p}: {where}", first["msg"]) from None
