"""The checkpoint format: ``<checkpoint.dir>/<stage>/iter_XXXXXXX/`` + ``latest``.

An iteration directory holds the tensors (GPU: megatron ``dist_checkpointing``, sharded
over every rank and reshardable; CPU: one ``torch.save`` file) and ``train_state.json``
(`TrainState`: the step, the data position, the scheduler, the architecture trained and
the HF directory training started from). Saving writes ``iter_X.tmp`` and renames it, then
points ``latest`` at it, so a crash leaves the previous checkpoint intact.

This module knows the layout and the metadata; the runtimes (`pretrain.runtime`) know how
to write and read their tensors into it, and `pretrain.convert` reads either format back
into an unsharded model for HF export.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from pretrain.model import Architecture

TRAIN_STATE_FILE = "train_state.json"
LATEST_FILE = "latest"
CPU_CHECKPOINT_FILE = "model_optim.pt"  # the CPU runtime's tensors: {"model": ..., "optimizer": ...}


def dist_ckpt_metadata() -> dict[str, Any]:
    """dist_checkpointing layout options, the same at save and load (Megatron-LM's defaults).

    The distributed optimizer's state is saved per DP shard, in parallel, reshardable over
    DP. A fresh dict each call: megatron adds process groups to the one it is given.
    """
    return {"distrib_optim_sharding_type": "dp_reshardable", "chained_optim_avoid_prefix": True}


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
    arch: Architecture = Field(description="architecture trained (RoPE as changed by the stages)")
    source_hf_dir: str = Field(
        description="HF directory training started from (config and tokenizer for export)"
    )


class CheckpointWriter(Protocol):
    """What `save_checkpoint` needs from a runtime and its trainer."""

    rank: int

    def barrier(self) -> None: ...


class TensorSaver(Protocol):
    def save(self, directory: Path) -> None: ...


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


def finished_checkpoint(stage_dir: Path, train_steps: int) -> Path | None:
    """The stage's latest checkpoint if it reached ``train_steps``, else None."""
    done = latest_checkpoint(stage_dir)
    return done if done is not None and read_train_state(done).step >= train_steps else None


def save_checkpoint(
    runtime: CheckpointWriter, tensors: TensorSaver, state: TrainState, stage_dir: Path, keep_last: int | None
) -> Path:
    """Save into ``iter_X.tmp`` (every rank writes its tensors), then rename and point ``latest`` at it."""
    final = iteration_dir(stage_dir, state.step)
    tmp = final.with_name(final.name + ".tmp")
    if runtime.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    runtime.barrier()
    tensors.save(tmp)
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


# ---------------------------------------------------------------------------
# The CPU runtime's tensor file
# ---------------------------------------------------------------------------


def save_cpu_tensors(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
        Path(directory) / CPU_CHECKPOINT_FILE,
    )


def load_cpu_tensors(directory: Path) -> dict[str, Any]:
    """``{"model": state_dict, "optimizer": state_dict}`` of a CPU checkpoint."""
    return torch.load(Path(directory) / CPU_CHECKPOINT_FILE, map_location="cpu", weights_only=True)
