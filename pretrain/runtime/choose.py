"""Pick the runtime for this machine: GPU when CUDA is there, else CPU."""

from __future__ import annotations

import torch

from pretrain.config import CPTConfig
from pretrain.runtime.base import Runtime
from pretrain.runtime.cpu import CpuRuntime
from pretrain.runtime.gpu import GpuRuntime


def make_runtime(cfg: CPTConfig) -> Runtime:
    """`GpuRuntime` when CUDA is available (it refuses to start without Transformer Engine), else `CpuRuntime`."""
    if torch.cuda.is_available():
        return GpuRuntime(cfg)
    return CpuRuntime(cfg)
