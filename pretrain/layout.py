"""Layout preflight: does every stage's TP x PP x CP x EP x DP fit the job, before stage 1 starts?

A stage that cannot run should fail in the first second of the job, not after the ~47k
steps of the stage before it. `check_layouts` checks every stage against the world size
and the model, and estimates the memory one GPU needs; the first stage that does not fit
raises `LayoutError`, one line naming the stage, what is wrong and a layout that fits.

Memory per GPU (bytes; bf16 training with fp32 gradients and the distributed optimizer,
as `pretrain.runtime.gpu` runs it):

* weights ``2 x P_local``, gradients ``4 x P_local`` (reduced in fp32), optimizer
  ``12 x P_local / DP`` (fp32 main weights + two Adam moments, sharded over data-parallel
  ranks; expert weights over the expert-data-parallel ranks), where ``P_local`` is this
  rank's share: dense weights over TP x PP, experts over EP x ETP x PP, the largest
  pipeline stage carrying one vocabulary matrix;
* activations: ``tokens_per_gpu x layers x bytes_per_token_layer / TP`` (sequence parallel
  shards them over TP; context parallel divides the tokens; 1F1B keeps PP micro-batches of
  L/PP layers on the first stage, i.e. L layers' worth). Per token and layer, with flash
  attention (no score matrix) and bf16 tensors, the tensors kept for the backward are:
  norm inputs and outputs (4h), Q, K, V and the attention output (2 a d + 2 g d), the
  SwiGLU fc1 output and its activation (3 f); MoE keeps top-k copies of (h + 3 I)
  instead of the dense MLP. Selective recompute (core attention + MLP / expert
  activation) drops the MLP internals; full recompute keeps only each layer's input (h),
  plus one layer's worth live during its recomputation. (Korthikanti et al. 2022,
  "Reducing Activation Recomputation in Large Transformer Models", re-derived for GQA,
  SwiGLU and flash attention.)
* logits: ``tokens_per_gpu x vocab / TP x 6`` (bf16 logits and the fp32 loss pass);
* 5 GiB for the CUDA context, NCCL buffers, TE workspaces and allocator fragmentation.

An estimate, not a measurement: `bench/gpu_check.sh` prints the measured peak next to it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from pretrain.config import CPTConfig, StageConfig
from pretrain.model import Architecture, ParallelSizes, Recompute, architecture_from_hf, padded_vocab_size

GIB = 1024**3
OVERHEAD_BYTES = 5 * GIB
GPUS_PER_NODE = 8  # tensor parallelism beyond one NVLink domain is never suggested
SUGGESTION_HEADROOM = 0.9  # a suggested layout leaves 10% of the GPU for estimate error


class LayoutError(ValueError):
    """A stage's layout cannot run on this job (one line: the stage, the problem, the fix)."""


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.overhead

    def describe(self) -> str:
        parts = ("weights", "gradients", "optimizer", "activations", "logits", "overhead")
        detail = ", ".join(f"{p} {getattr(self, p) / GIB:.1f}" for p in parts)
        return f"~{self.total / GIB:.1f} GiB per GPU ({detail})"


@dataclass(frozen=True)
class StagePlan:
    """A stage's layout on this job: data parallelism and the memory estimate."""

    stage: str
    parallel: ParallelSizes
    recompute: Recompute
    data_parallel: int
    tokens_per_gpu: int
    memory: MemoryEstimate


def _activation_bytes_per_token_layer(arch: Architecture, recompute: Recompute) -> float:
    h, ad, gd = (
        arch.hidden_size,
        arch.num_attention_heads * arch.head_dim,
        arch.num_query_groups * arch.head_dim,
    )
    attention = 4 * h + 2 * ad + 2 * gd  # norms in/out, Q, K, V, attention output
    if arch.moe is None:
        mlp_inner = 3 * arch.ffn_hidden_size  # fc1 output (gate, up) and the SwiGLU output
        mlp_selective = 0  # the whole MLP is recomputed from its input
    else:
        i, k = arch.moe.expert_ffn_hidden_size, arch.moe.top_k
        mlp_inner = k * (h + 3 * i)  # per routed copy: permuted input, fc1 output, activation
        mlp_selective = k * (h + 2 * i)  # only the expert activation is recomputed
    elements = {
        "none": attention + mlp_inner,
        "selective": attention + mlp_selective,
        "full": h,
    }[recompute]
    return 2.0 * elements  # bf16


def estimate_memory(arch: Architecture, stage: StageConfig, world_size: int) -> MemoryEstimate:
    """Bytes one GPU needs for ``stage`` on ``world_size`` GPUs (see the module docstring)."""
    p = stage.parallel
    dp = max(world_size // p.model_parallel, 1)
    expert_dp = max(world_size // (p.expert * p.expert_tensor * p.pipeline), 1)
    layers_here = arch.num_layers / p.pipeline
    dense_layer = arch.attention_parameters + 2 * arch.hidden_size
    dense_layer += arch.hidden_size * (arch.moe.num_experts if arch.moe else 3 * arch.ffn_hidden_size)
    vocab = padded_vocab_size(arch.vocab_size, p.tensor)
    vocab_matrices = 1 if (arch.tie_word_embeddings or p.pipeline > 1) else 2
    dense_local = (layers_here * dense_layer + vocab_matrices * vocab * arch.hidden_size) / p.tensor
    expert_local = arch.expert_parameters / (arch.num_layers * p.expert * p.expert_tensor) * layers_here
    local = dense_local + expert_local
    tokens = stage.micro_batch_size * stage.seq_length // p.context
    per_token_layer = _activation_bytes_per_token_layer(arch, stage.recompute)
    shard = p.tensor if (p.sequence_parallel or p.tensor == 1) else 1
    activations = tokens * arch.num_layers * per_token_layer / shard
    if stage.recompute == "full":  # one layer recomputed at a time, all of it live
        activations += tokens * _activation_bytes_per_token_layer(arch, "none") / shard
    return MemoryEstimate(
        weights=2.0 * local,
        gradients=4.0 * local,
        optimizer=12.0 * (dense_local / dp + expert_local / expert_dp),
        activations=activations,
        logits=tokens * vocab / p.tensor * 6.0,
        overhead=float(OVERHEAD_BYTES),
    )


def _shape_problem(arch: Architecture, stage: StageConfig, world_size: int) -> str | None:
    """What makes the layout impossible on ``world_size`` devices (None: it is possible)."""
    p = stage.parallel
    if p.model_parallel > world_size or world_size % p.model_parallel:
        return (
            f"tensor x pipeline x context = {p.tensor}x{p.pipeline}x{p.context} = {p.model_parallel} "
            f"devices per replica, the job has {world_size}"
        )
    if arch.num_attention_heads % p.tensor or arch.num_query_groups % p.tensor:
        return (
            f"tensor={p.tensor} must divide the {arch.num_attention_heads} attention heads "
            f"and {arch.num_query_groups} key/value heads"
        )
    if arch.num_layers % p.pipeline:
        return f"pipeline={p.pipeline} must divide the {arch.num_layers} layers"
    if p.context > 1 and stage.seq_length % (2 * p.context):
        return f"seq_length={stage.seq_length} must be divisible by 2 x context = {2 * p.context}"
    if arch.moe is None and (p.expert, p.expert_tensor) != (1, 1):
        return "expert / expert_tensor > 1 on a dense model"
    if arch.moe is not None:
        if arch.moe.num_experts % p.expert:
            return f"expert={p.expert} must divide the {arch.moe.num_experts} experts"
        group = p.expert * p.expert_tensor * p.pipeline
        if world_size % group:
            return f"expert x expert_tensor x pipeline = {group} must divide the {world_size} devices"
    dp = world_size // p.model_parallel
    if stage.global_batch_size % (stage.micro_batch_size * dp):
        return (
            f"global_batch_size={stage.global_batch_size} must be a multiple of micro_batch_size x "
            f"data-parallel size ({stage.micro_batch_size} x {dp})"
        )
    return None


def plan_stage(arch: Architecture, stage: StageConfig, world_size: int) -> StagePlan:
    """The stage's plan, or `LayoutError` when its layout cannot run on ``world_size`` devices."""
    problem = _shape_problem(arch, stage, world_size)
    if problem is not None:
        raise LayoutError(f"stages.{stage.name}.parallel: {problem}")
    p = stage.parallel
    return StagePlan(
        stage=stage.name,
        parallel=p,
        recompute=stage.recompute,
        data_parallel=world_size // p.model_parallel,
        tokens_per_gpu=stage.micro_batch_size * stage.seq_length // p.context,
        memory=estimate_memory(arch, stage, world_size),
    )


def suggest_layout(
    arch: Architecture, stage: StageConfig, world_size: int, device_memory: float
) -> str | None:
    """A layout that fits with headroom, as config text: the least recompute, then the most data parallelism.

    "Fits" means within `SUGGESTION_HEADROOM` of the device (the estimate is an estimate).
    """
    options: list[tuple[tuple[int, int, int, int], StageConfig]] = []
    recompute_cost = {"none": 0, "selective": 1, "full": 2}
    experts = (1, 2, 4, 8, 16, 32, 64) if arch.moe is not None else (1,)
    layouts = itertools.product((1, 2, 4, 8), (1, 2, 4), (1, 2, 4, 8, 16, 32), experts)
    for (tensor, pipeline, context, expert), recompute in itertools.product(layouts, recompute_cost):
        if tensor > min(GPUS_PER_NODE, world_size):
            continue
        sizes = {"tensor": tensor, "pipeline": pipeline, "context": context, "expert": expert}
        parallel = stage.parallel.model_copy(update=sizes)
        candidate = stage.model_copy(update={"parallel": parallel, "recompute": recompute})
        if _shape_problem(arch, candidate, world_size) is not None:
            continue
        if estimate_memory(arch, candidate, world_size).total <= SUGGESTION_HEADROOM * device_memory:
            options.append(
                ((recompute_cost[recompute], parallel.model_parallel, pipeline, expert), candidate)
            )
    if not options:
        return None
    best = min(options, key=lambda o: o[0])[1]
    mem = estimate_memory(arch, best, world_size)
    pp = f", pipeline: {best.parallel.pipeline}" if best.parallel.pipeline > 1 else ""
    ep = f", expert: {best.parallel.expert}" if arch.moe is not None else ""
    return (
        f"parallel: {{tensor: {best.parallel.tensor}, context: {best.parallel.context}{pp}{ep}}}, "
        f"recompute: {best.recompute} (~{mem.total / GIB:.0f} GiB of {device_memory / GIB:.0f} GiB)"
    )


def check_layouts(
    cfg: CPTConfig,
    arch: Architecture,
    world_size: int,
    device_memory: float | None,
    stages: list[str] | None = None,
) -> list[StagePlan]:
    """Plan every stage (or those named) for ``world_size`` devices of ``device_memory`` bytes.

    Raises `LayoutError` for the first stage that cannot run or (``device_memory`` given)
    does not fit, naming a layout that would. RoPE changes do not affect the shapes, so the
    starting architecture stands for every stage.
    """
    plans = []
    for stage in cfg.stages:
        if stages is not None and stage.name not in stages:
            continue
        try:
            plan = plan_stage(arch, stage, world_size)
        except LayoutError as err:
            fix = suggest_layout(arch, stage, world_size, device_memory) if device_memory else None
            hint = f"use {fix}" if fix else f"no layout of this model fits {world_size} device(s): use more"
            raise LayoutError(f"{err}; {hint}") from None
        if device_memory is not None and plan.memory.total > device_memory:
            fix = suggest_layout(arch, stage, world_size, device_memory)
            raise LayoutError(
                f"stages.{stage.name}: needs {plan.memory.describe()}, a GPU has {device_memory / GIB:.0f} GiB; "
                + (f"use {fix}" if fix else f"no layout of this model fits {world_size} GPUs: use more")
            )
        plans.append(plan)
    return plans


def main(argv: list[str] | None = None) -> int:
    """``python -m pretrain.layout CONFIG --gpus N --gpu-memory-gib M [--hf-config config.json]``."""
    from pretrain.config import load_cpt_config

    parser = argparse.ArgumentParser(prog="python -m pretrain.layout", description="CPT layout preflight")
    parser.add_argument("config", help="CPT config YAML")
    parser.add_argument("--gpus", type=int, required=True, help="world size of the job")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory of one GPU")
    parser.add_argument("--hf-config", help="the model's config.json (default: <model.hf_dir>/config.json)")
    args = parser.parse_args(argv)
    try:
        cfg = load_cpt_config(args.config)
        hf_config = Path(args.hf_config) if args.hf_config else Path(cfg.model.hf_dir) / "config.json"
        arch = architecture_from_hf(json.loads(hf_config.read_text()))
        plans = check_layouts(cfg, arch, args.gpus, args.gpu_memory_gib * GIB)
    except (LayoutError, OSError, ValueError) as err:
        print(f"pretrain.layout: error: {err}", file=sys.stderr)
        return 2
    for plan in plans:
        p = plan.parallel
        print(
            f"{plan.stage}: TP {p.tensor} x PP {p.pipeline} x CP {p.context} x DP {plan.data_parallel}"
            + (f" (EP {p.expert})" if p.expert > 1 else "")
            + f", recompute {plan.recompute}, {plan.tokens_per_gpu:,} tokens per GPU: {plan.memory.describe()}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
