"""Learning-rate schedule: megatron's `OptimizerParamScheduler`, counted in optimizer steps."""

from __future__ import annotations

from typing import Any

from pretrain.config import OptimConfig

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
