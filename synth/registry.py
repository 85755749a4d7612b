"""Stage lookup by name. Each stage module exposes ``STAGE``, an instance of its Stage class.

Imports are lazy so that, e.g., the API can list stage names without importing torch.
"""

from __future__ import annotations

import importlib

from synth.records import STAGES
from synth.stage import Stage


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    module = importlib.import_module(f"synth.{name}")
    stage = getattr(module, "STAGE", None)
    if not isinstance(stage, Stage):
        raise NotImplementedError(f"stage {name!r} is not available yet (synth/{name}.py has no STAGE)")
    return stage
