"""The contract between a stage (in ``synth/stages/``) and the runner (in ``pipelines/``).

A stage is a small object with a name, a typed config, a record type, the stages it reads,
and one async function from a work unit's items to records and failures. It knows nothing
about Ray, shards or progress; the runner maps it over work units and commits each unit's
output.

Two kinds of stage:

* **map** stages (``barrier = False``) consume the records of their one upstream stage unit
  by unit, so they stream: unit ``k`` of ``planning`` is computed from unit ``k`` of
  ``questions`` as soon as that unit is committed (same unit name, so assignment is
  deterministic whatever the arrival order).
* **barrier** stages (``barrier = True``) need all of their upstream first: ``prepare``
  returns the full, deterministically ordered list of work items (e.g. knowledge clusters
  for ``questions``, the deduplicated documents for ``memory``), plus the inputs it dropped
  with a reason. The runner cuts the items into units of ``execution.unit_size``.

``prepare`` must be deterministic given the committed upstream and the spec, because a
resumed run recomputes it and must arrive at the same units.

A stage may read only the stages it declares (``upstream``): ``StageContext.read_stage``
refuses any other, so the data flow drawn in ARCHITECTURE.md is the one that runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from synth.llm.base import LLM
from synth.records import Failure, Record

if TYPE_CHECKING:
    from synth.spec import RunSpec

ConfigT = TypeVar("ConfigT", bound=BaseModel)
ItemT = TypeVar("ItemT")


class UndeclaredReadError(RuntimeError):
    """A stage read a stage it did not declare in ``upstream``."""


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

    def scoped_to(self, stage: Stage[Any, Any]) -> StageContext:
        """This context with ``read_stage`` limited to the stages ``stage`` declares."""
        allowed = frozenset((*stage.upstream, *stage.reads))
        reader = self.read_stage

        def read_declared(name: str) -> list[Record]:
            if name not in allowed:
                raise UndeclaredReadError(
                    f"stage {stage.name!r} read stage {name!r}, which it does not declare in upstream "
                    f"or reads {tuple(sorted(allowed))}"
                )
            return reader(name)

        return dataclasses.replace(self, read_stage=read_declared)


@dataclass
class StageOutput:
    records: list[Record] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


@dataclass
class Prepared(Generic[ItemT]):
    """Work items of a barrier stage, in a deterministic order, and the inputs it dropped."""

    items: list[ItemT]
    dropped: list[Failure] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    """How a stage's records say yes or no, as SQL over its view (for stats and the dashboard)."""

    accepted_sql: str
    rejected_sql: str


def _prompt_material(value: Any) -> Any:
    """The JSON-able prompt text inside a module constant, or None when it holds none."""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple | list):
        parts = [_prompt_material(v) for v in value]
        return parts if parts and all(p is not None for p in parts) else None
    return None


def prompt_fingerprint(module_names: Sequence[str]) -> str:
    """A hash of every upper-case string constant (prompts, few-shot examples, tuples of
    them) of the named modules. Editing any prompt text changes it; no version to bump."""
    material: list[tuple[str, str, Any]] = []
    for module_name in module_names:
        module = importlib.import_module(module_name)
        for name, value in sorted(vars(module).items()):
            if name.lstrip("_").isupper() and (text := _prompt_material(value)) is not None:
                material.append((module_name, name, text))
    blob = json.dumps(material, ensure_ascii=False, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Stage(ABC, Generic[ConfigT, ItemT]):
    """One stage: ``config_type`` is its spec block, ``record_type`` what it writes.

    ``upstream`` names every stage it reads (map stages: exactly one, the unit source).
    ``verdict`` and ``summary_fields`` are how catalog stats and the dashboard describe its
    records; ``prompt_modules`` are the modules whose prompt text the stage's fingerprint
    covers (its own, plus shared prompt modules such as ``synth.judges``).
    """

    name: ClassVar[str]
    config_type: ClassVar[type[BaseModel]]
    record_type: ClassVar[type[Record]]
    upstream: ClassVar[tuple[str, ...]] = ()
    # Stages a map stage reads besides its unit source (``upstream``, exactly one): planning's
    # judge and reasoning's step 2 read the memory statements their questions cite. They must
    # be complete before the map stage's first unit (memory is, being upstream of questions).
    reads: ClassVar[tuple[str, ...]] = ()
    barrier: ClassVar[bool] = False
    # False for stages that never call a model (e.g. documents): a run of only such
    # stages starts no LLM endpoint.
    uses_llm: ClassVar[bool] = True
    verdict: ClassVar[Verdict | None] = None
    summary_fields: ClassVar[tuple[str, ...]] = ()
    shared_prompt_modules: ClassVar[tuple[str, ...]] = ()

    def config(self, spec: RunSpec) -> ConfigT:
        """This stage's config block of the spec (it is enabled when the runner calls this)."""
        cfg = spec.stages.block(self.name)
        if cfg is None:
            raise ValueError(f"stage {self.name} is not enabled in stages")
        if not isinstance(cfg, self.config_type):
            cfg = self.config_type.model_validate(cfg.model_dump() if isinstance(cfg, BaseModel) else cfg)
        return cfg  # type: ignore[return-value]

    @property
    def prompt_modules(self) -> tuple[str, ...]:
        return (type(self).__module__, *self.shared_prompt_modules)

    @cached_property
    def prompt_fingerprint(self) -> str:
        """Hash of this stage's prompt text and few-shot examples (see ``prompt_fingerprint``)."""
        return prompt_fingerprint(self.prompt_modules)

    def prepare(self, ctx: StageContext) -> Prepared[ItemT]:
        """Barrier stages: every work item. Map stages never have this called."""
        raise NotImplementedError(f"{self.name} is a map stage; its items are upstream records")

    @abstractmethod
    async def process(self, items: Sequence[ItemT], ctx: StageContext) -> StageOutput:
        """One work unit: items in, records and failures out. Every item must end in one of them."""
