"""Where the trainer's numbers go: stdout, ``metrics.jsonl``, TensorBoard, and W&B when asked.

Rank 0 only. Per stage: one line per event on stdout, the same event as JSON in
``<checkpoint.dir>/<stage>/metrics.jsonl``, and scalars in a TensorBoard run
``<tensorboard_dir>/<stage>`` (``tensorboard --logdir <tensorboard_dir>`` shows the stages
side by side). With ``WANDB_PROJECT`` set (or ``logging.wandb_project``), the same scalars go
to one W&B run for the whole CPT run, each stage on its own step axis.

Scalar names (TensorBoard tags, W&B keys under ``<stage>/``)::

    train/loss  train/lr  train/grad_norm  train/tokens_per_s  train/mfu
    heldout/<group>  heldout/<group>/<kind>     (groups: see pretrain.data.EvalGroup)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pretrain.config import CPTConfig


class TrackerError(RuntimeError):
    """A requested tracker cannot start (message says what to install)."""


class MetricsLog:
    """One stage's log: events (stdout + JSON lines) and scalars (TensorBoard, W&B)."""

    def __init__(self, stage: str, jsonl: Path, tensorboard: Any | None, wandb_run: Any | None) -> None:
        self.stage = stage
        self.jsonl = jsonl
        self.tensorboard = tensorboard
        self.wandb_run = wandb_run

    def write(self, line: str, **record: Any) -> None:
        """Print ``line`` and append ``record`` (with the line) to metrics.jsonl."""
        print(line, flush=True)
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps({**record, "message": line}) + "\n")

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        """Scalars at ``step`` of this stage (None values are skipped)."""
        present = {k: float(v) for k, v in values.items() if v is not None}
        if self.tensorboard is not None:
            for tag, value in present.items():
                self.tensorboard.add_scalar(tag, value, step)
            self.tensorboard.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(
                {f"{self.stage}/step": step, **{f"{self.stage}/{k}": v for k, v in present.items()}}
            )

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


class _Silent(MetricsLog):
    """What ranks other than 0 get: nothing is written."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage, Path(os.devnull), None, None)

    def write(self, line: str, **record: Any) -> None:
        return None

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        return None


class Trackers:
    """The run's trackers (rank 0): a TensorBoard root and, when asked, one W&B run."""

    def __init__(self, cfg: CPTConfig, enabled: bool) -> None:
        self.enabled = enabled
        self.tensorboard_dir: Path | None = None
        self.wandb_run: Any | None = None
        if not enabled:
            return
        if cfg.logging.tensorboard:
            self.tensorboard_dir = Path(
                cfg.logging.tensorboard_dir or Path(cfg.checkpoint.dir) / "tensorboard"
            )
            try:
                import tensorboard  # noqa: F401  (torch's SummaryWriter needs it)
            except ImportError:
                raise TrackerError(
                    "logging.tensorboard: the tensorboard package is missing (pip install tensorboard)"
                ) from None
        project = cfg.logging.wandb_project or os.environ.get("WANDB_PROJECT")
        if project:
            try:
                import wandb
            except ImportError:
                raise TrackerError(
                    "WANDB_PROJECT is set but wandb is not installed (pip install wandb)"
                ) from None
            self.wandb_run = wandb.init(project=project, name=cfg.name, config=cfg.model_dump(mode="json"))

    def stage_log(self, stage: str, stage_dir: Path) -> MetricsLog:
        if not self.enabled:
            return _Silent(stage)
        writer = None
        if self.tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(self.tensorboard_dir / stage))
        if self.wandb_run is not None:
            self.wandb_run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
        return MetricsLog(stage, stage_dir / "metrics.jsonl", writer, self.wandb_run)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
