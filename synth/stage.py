"""The contract between a stage (in ``synth/``) and the runner (in ``pipelines/``).

A stage is a small object with a name, the stages it reads, and one async function from a
work unit's items to records and failures. It knows nothing about Ray, shards or
progress; the runner maps it over work units and commits each unit's output.

Two kinds of stage:

* **map** stages (``barrier = False``) consume the records of an upstream stage unit by
  unit, so they stream: unit ``k`` of ``planning`` is computed from unit ``k`` of
  ``questions`` as soon as that unit is committed (same unit name, so assignment is
  deterministic whatever the arrival order).
* **barrier** stages (``barrier = True``) need all of their upstream first: ``prepare``
  returns the full, deterministically ordered list of work items (e.g. knowledge clusters
  for ``questions``, the deduplicated documents for ``memory``), plus the inputs it dropped
  with a reason. The runner cuts the items into units of ``execution.unit_size``.

``prepare`` must be deterministic given the committed upstream and the spec, because a
resumed run recomputes it and must arrive at the same units.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from synth.llm.base import LLM
from synth.records import Failure, Record

if TYPE_CHECKING:
    from synth.spec import RunSpec


@dataclass
class StageContext:
    """What a stage may use besides its items. Built by the runner (or by a test)."""

    run_id: str
    spec: RunSpec
    llm: LLM
    judge_llm: LLM
    run_dir: Path
    seed: int = 0
    # Reads every committed record of a stage (for global needs such as a BM25 index
    # over documents). Tests pass a function over in-memory lists.
    read_stage: Callable[[str], list[Record]] = field(default=lambda stage: [])
    # Base directory that relative input globs are resolved against.
    base_dir: Path | None = None


@dataclass
class StageOutput:
    records: list[Record] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


@dataclass
class Prepared:
    """Work items of a barrier stage, in a deterministic order, and the inputs it dropped."""

    items: list[Any]
    dropped: list[Failure] = field(default_factory=list)


class Stage(ABC):
    name: ClassVar[str]
    upstream: ClassVar[tuple[str, ...]] = ()
    barrier: ClassVar[bool] = False
    # False for stages that never call a model (e.g. documents): a run of only such
    # stages starts no LLM endpoint.
    uses_llm: ClassVar[bool] = True

    def config(self, spec: RunSpec) -> BaseModel:
        """This stage's config block of the spec (it is enabled when the runner calls this)."""
        cfg = getattr(spec.stages, self.name)
        assert cfg is not None, f"stage {self.name} is not enabled"
        return cfg

    def prepare(self, ctx: StageContext) -> Prepared:
        """Barrier stages: every work item. Map stages never have this called."""
        raise NotImplementedError(f"{self.name} is a map stage; its items are upstream records")

    @abstractmethod
    async def process(self, items: Sequence[Any], ctx: StageContext) -> StageOutput:
        """One work unit: items in, records and failures out. Every item must end in one of them."""
