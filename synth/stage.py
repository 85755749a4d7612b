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

What a barrier stage's items are made from (``item_origin``) and the ``max_*`` setting that
caps them (``input_cap_field``) are counted into its plan (``item_sources``), so that
``agentcpt run --preview`` can scale each source of items to the full run on its own
(``pipelines/preview.py``).

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

from pydantic import BaseModel, ConfigDict, Field

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


INPUT_FILES = "inputs"
"""``ItemOrigin.source`` of items read from the spec's input files by a stage without upstream."""


@dataclass(frozen=True)
class ItemOrigin:
    """Where one work item of a barrier stage comes from, as the preview's estimate sees it.

    ``follows`` is the upstream stage whose records the item was made from: a preview sees
    only a sample of them, so the item's count grows with that stage's in the full run.
    ``None`` means the spec's input files (imported trajectories, a root stage's inputs),
    which a preview lists in full. Items made from one input share its ``input_id`` (memory:
    a document's chunks), so that a cap counting inputs counts them once; ``capped`` says
    whether the item counts against the stage's ``input_cap_field``.
    """

    source: str
    follows: str | None
    input_id: str | None = None
    capped: bool = True
    calls_llm: bool = True  # False: processing the item makes no LLM call (memory's triples)


class ItemSource(BaseModel):
    """A barrier stage's work items from one source, as ``prepare`` returned them (in the plan)."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="an upstream stage, or the input files the items were read from")
    follows: str | None = Field(
        description="the upstream stage whose records these items are made from; null: input files"
    )
    items: int = Field(
        ge=0, description="work items prepare returned from this source (before a preview's cut)"
    )
    inputs: int = Field(ge=0, description="distinct inputs they were made from (a document for its chunks)")
    cap: int | None = Field(
        None, description="the stage's limit on these inputs (its max_* setting); null = none"
    )
    calls_llm: bool = Field(True, description="whether processing these items calls the LLM")
    sampled: int | None = Field(
        None, ge=0, description="items of this source a --preview ran (null: not a preview)"
    )


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
    # The config field (a ``max_*`` setting, null = no cap) that limits the inputs a barrier
    # stage's ``prepare`` takes from its capped sources (``ItemOrigin.capped``). A preview's
    # sample seldom reaches it, so the estimate must apply it to the full run itself.
    input_cap_field: ClassVar[str | None] = None

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

    def item_origin(self, item: ItemT) -> ItemOrigin:
        """Barrier stages: where ``item`` comes from (see ``ItemOrigin``). The default, one
        item per record of the first upstream (input files without one), is right for a
        stage with one source; a stage that mixes sources says which an item is."""
        if self.upstream:
            return ItemOrigin(self.upstream[0], follows=self.upstream[0])
        return ItemOrigin(INPUT_FILES, follows=None)

    def input_cap(self, spec: RunSpec) -> int | None:
        """The value of ``input_cap_field`` in this run's config (None: no cap)."""
        if self.input_cap_field is None:
            return None
        cap = getattr(self.config(spec), self.input_cap_field)
        return cap if isinstance(cap, int) else None

    def item_sources(self, items: Sequence[ItemT], spec: RunSpec) -> list[ItemSource]:
        """``prepare``'s items counted per ``item_origin`` source (first-seen order), for the plan."""
        cap = self.input_cap(spec)
        origins: dict[str, ItemOrigin] = {}
        n_items: dict[str, int] = {}
        shared: dict[str, set[str]] = {}  # input ids of items that share their input
        single: dict[str, int] = {}  # items without input_id: an input each
        for item in items:
            origin = self.item_origin(item)
            key = origin.source
            origins.setdefault(key, origin)
            n_items[key] = n_items.get(key, 0) + 1
            if origin.input_id is None:
                single[key] = single.get(key, 0) + 1
            else:
                shared.setdefault(key, set()).add(origin.input_id)
        return [
            ItemSource(
                source=key,
                follows=origin.follows,
                items=n_items[key],
                inputs=single.get(key, 0) + len(shared.get(key, ())),
                cap=cap if origin.capped else None,
                calls_llm=origin.calls_llm,
            )
            for key, origin in origins.items()
        ]

    @abstractmethod
    async def process(self, items: Sequence[ItemT], ctx: StageContext) -> StageOutput:
        """One work unit: items in, records and failures out. Every item must end in one of them."""
