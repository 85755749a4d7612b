"""The interface the training loop sees: a `Runtime` (device, process groups, model building) and its `Trainer`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

from pretrain.config import StageConfig
from pretrain.data import Batch, LossTotals
from pretrain.model import Architecture


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

    def device_memory(self) -> float | None:
        """Bytes of memory of one device (None: not checked, e.g. host memory on CPU)."""
        ...

    def start_stage(self, stage: StageConfig, seed: int) -> None: ...
    def build_model(self, arch: Architecture, stage: StageConfig) -> Any: ...
    def make_trainer(self, model: Any, stage: StageConfig) -> Trainer: ...
    def data_parallel(self) -> tuple[int, int]: ...
    def barrier(self) -> None: ...
    def export_hf(self, trainer: Trainer, arch: Architecture, source_dir: Path, out_dir: Path) -> bool: ...
    def end_stage(self) -> None:
        """Release the stage's model, optimizer and process groups before the next stage builds."""
        ...

    def shutdown(self) -> None: ...
