"""The stages, in pipeline order: the one list the runner, the spec, the catalog and the
dashboard ask for stage names, configs, record types and verdicts.

Adding a stage is one module here (a ``Stage`` subclass, its config and prompts), one
record class (``synth/records.py`` or the stage module), and one line in ``_BUILTIN``.
``register`` adds a stage at run time (plugins, tests).
"""

from __future__ import annotations

from typing import Any

from synth.stage import Stage
from synth.stages import corpus, decisions, documents, memory, planning, questions, reasoning, rollouts

_BUILTIN: tuple[Stage[Any, Any], ...] = (
    documents.STAGE,
    memory.STAGE,
    questions.STAGE,
    planning.STAGE,
    reasoning.STAGE,
    rollouts.STAGE,
    decisions.STAGE,
    corpus.STAGE,
)

_registry: dict[str, Stage[Any, Any]] = {s.name: s for s in _BUILTIN}


def register(stage: Stage[Any, Any], *, before: str | None = None) -> None:
    """Add ``stage`` to the pipeline order (at the end, or just before stage ``before``)."""
    if stage.name in _registry and _registry[stage.name] is not stage:
        raise ValueError(f"a different stage is already registered as {stage.name!r}")
    for upstream in stage.upstream:
        if upstream not in _registry:
            raise ValueError(f"stage {stage.name!r} reads {upstream!r}, which is not registered")
    items = [(n, s) for n, s in _registry.items() if n != stage.name]
    at = len(items) if before is None else [n for n, _ in items].index(before)
    items.insert(at, (stage.name, stage))
    _registry.clear()
    _registry.update(items)


def unregister(name: str) -> None:
    """Remove a stage added with ``register`` (built-in stages stay)."""
    if any(s.name == name for s in _BUILTIN):
        raise ValueError(f"{name!r} is a built-in stage")
    _registry.pop(name, None)


def stage_names() -> tuple[str, ...]:
    """Every registered stage name, in pipeline order."""
    return tuple(_registry)


def get_stage(name: str) -> Stage[Any, Any]:
    try:
        return _registry[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages are {', '.join(_registry)}") from None


def all_stages() -> tuple[Stage[Any, Any], ...]:
    return tuple(_registry.values())
