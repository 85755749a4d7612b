"""Work units: what the driver sends to a worker, what comes back, and a barrier stage's plan.

Unit assignment is deterministic so that a resumed run arrives at the same units:

* a **map** stage's unit ``k`` is its upstream's committed unit ``k`` (same name);
* a **barrier** stage's items (from ``Stage.prepare``, deterministic by contract) are cut
  into consecutive chunks of at most ``execution.unit_size`` items of one source (``cut_units``),
  named ``unit_name(i)``; the inputs
  ``prepare`` dropped are committed once as the unit ``DROPPED_UNIT``, which holds no
  records, only failed-ledger rows, and which map stages downstream skip.

A stage's plan (its unit names) is saved under ``plan/<stage>.json`` once a barrier stage's
``prepare`` has run, and again, marked complete, when any stage completes: a resumed run
then knows the stage is done without running ``prepare`` again. A barrier stage's plan also
counts its items per source (``Stage.item_sources``), which ``--preview`` scales to the full run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from synth.layout import RunLayout
from synth.shards import atomic_write_bytes, unit_name
from synth.stage import ItemSource

DROPPED_UNIT = "dropped"
"""Unit name of a barrier stage's dropped inputs (failed ledger only); never a map unit."""


def is_data_unit(unit: str) -> bool:
    """True for units that carry records downstream (all but the dropped-inputs unit)."""
    return unit != DROPPED_UNIT


def cut_units(
    items: Sequence[Any], unit_size: int, source_of: Callable[[Any], str] | None = None
) -> list[tuple[str, list[Any]]]:
    """Consecutive chunks of at most ``unit_size`` items, named ``00000``, ``00001``, …

    With ``source_of``, a unit never spans two sources: a new unit starts where the source
    changes. So the rollouts' imported trajectories, which need no agent run, form units of
    their own, and the decisions stage downstream starts on them while the generated
    rollouts are still running, instead of waiting for a unit that mixes both.
    """
    if unit_size < 1:
        raise ValueError("unit_size must be >= 1")
    chunks: list[list[Any]] = []
    source: str | None = None
    for item in items:
        item_source = source_of(item) if source_of is not None else ""
        if not chunks or len(chunks[-1]) >= unit_size or item_source != source:
            chunks.append([])
            source = item_source
        chunks[-1].append(item)
    return [(unit_name(i), chunk) for i, chunk in enumerate(chunks)]


def preview_cut(items: Sequence[Any], limit: int, source_of: Callable[[Any], str]) -> list[Any]:
    """The first ``limit`` items of each source (``--preview``), in their order.

    Per source, not overall: the first five items of the quickstart's documents are all web
    pages, and a preview that never sees its knowledge-graph triples samples nothing of the
    questions they feed.
    """
    taken: dict[str, int] = {}
    out: list[Any] = []
    for item in items:
        source = source_of(item)
        if taken.get(source, 0) < limit:
            taken[source] = taken.get(source, 0) + 1
            out.append(item)
    return out


@dataclass(frozen=True)
class UnitTask:
    """One unit of work for a worker.

    Map units name the upstream stage to read the unit from (``upstream``); barrier units
    travel with their items as a separate Ray argument (so Ray resolves the object ref).
    """

    stage: str
    unit: str
    upstream: str | None = None


@dataclass(frozen=True)
class UnitResult:
    """What a worker reports for a committed unit."""

    stage: str
    unit: str
    records: int
    failed: int
    worker: str
    already_committed: bool = False
    elapsed_s: float = 0.0
    usage: dict[str, Any] | None = None
    usage_source: str = ""


@dataclass(frozen=True)
class PrepareResult:
    """A barrier stage's units (their items are in the run directory: ``RunLayout.unit_items``)
    and how many items it made and inputs it dropped."""

    units: list[str]
    items: int  # items cut into units (the first ``limit`` of a preview)
    items_available: int  # items prepare returned
    dropped: int
    usage: dict[str, Any] | None = None
    usage_source: str = ""
    # prepare's items counted per source (Stage.item_sources): how a preview scales them.
    sources: list[ItemSource] = field(default_factory=list)


class StagePlan(BaseModel):
    """The units of a stage: written by a barrier stage after ``prepare``, by every stage when complete."""

    model_config = ConfigDict(extra="forbid")
    stage: str
    units: list[str] = Field(description="data unit names, in order")
    items: int | None = Field(None, description="work items cut into units (barrier stages)")
    items_available: int | None = Field(
        None, description="work items prepare returned, when a preview used only the first `items`"
    )
    dropped: int = Field(0, description="inputs prepare dropped (committed under the 'dropped' unit)")
    unit_size: int | None = Field(None, description="execution.unit_size the items were cut with")
    sources: list[ItemSource] = Field(
        default_factory=list,
        description="prepare's items per source (Stage.item_sources), which --preview scales one by one",
    )
    complete: bool = Field(False, description="every unit is committed")


def plan_path(run_dir: Path, stage: str) -> Path:
    return RunLayout(run_dir).plan(stage)


def read_plan(run_dir: Path, stage: str) -> StagePlan | None:
    path = plan_path(run_dir, stage)
    try:
        return StagePlan.model_validate(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return None
    except ValueError:
        # An unreadable plan only costs a second prepare.
        return None


def write_plan(run_dir: Path, plan: StagePlan) -> None:
    atomic_write_bytes(plan_path(run_dir, plan.stage), plan.model_dump_json(indent=2).encode())
