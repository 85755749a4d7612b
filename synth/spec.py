"""The run spec (DESIGN §5): pydantic models, loading from YAML/JSON, one-line errors.

Every model forbids unknown keys, so a typo in a spec is an error naming its path
(``stages.planning.k: extra field not permitted``) rather than a silently ignored key.
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from synth.corpus import CorpusConfig
from synth.decisions import DecisionsConfig
from synth.documents import DocumentsConfig
from synth.llm.config import LLMConfig
from synth.memory import MemoryConfig
from synth.planning import PlanningConfig
from synth.questions import QuestionsConfig
from synth.reasoning import ReasoningConfig
from synth.rollouts import RolloutsConfig

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class SpecError(ValueError):
    """A spec problem, with the dotted path of the field it concerns."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class Inputs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    web: list[str] = Field(default_factory=list, description="globs of html | warc(.gz) | jsonl (url + html|text)")
    trajectories: list[str] = Field(default_factory=list, description="globs of JSONL trajectories (ReAct chatml or OpenAI tool_calls)")


class StagesConfig(BaseModel):
    """Which stages run, with their settings. A stage left out is skipped; `{}` runs it with defaults."""

    model_config = ConfigDict(extra="forbid")
    documents: DocumentsConfig | None = None
    memory: MemoryConfig | None = None
    questions: QuestionsConfig | None = None
    planning: PlanningConfig | None = None
    reasoning: ReasoningConfig | None = None
    rollouts: RolloutsConfig | None = None
    decisions: DecisionsConfig | None = None
    corpus: CorpusConfig | None = None

    def enabled(self) -> list[str]:
        """Enabled stage names in pipeline order."""
        return [name for name in type(self).model_fields if getattr(self, name) is not None]


class ExecutionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ray_address: str | None = Field(None, description="join this Ray cluster; null starts a local instance")
    unit_size: PositiveInt = Field(256, description="records per work unit")
    seed: int = Field(0, description="seed for every sampler and shuffle")
    max_units_in_flight: PositiveInt | None = Field(None, description="backpressure bound; null = 2 x CPUs")


class RunSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="human-readable run name")
    inputs: Inputs = Field(default_factory=Inputs)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    judge_llm: LLMConfig | None = Field(None, description="endpoint for judges; null = use llm")
    stages: StagesConfig = Field(default_factory=StagesConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    output_dir: str = Field("runs", description="runs are written under output_dir/<run_id>")

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    @property
    def effective_judge_llm(self) -> LLMConfig:
        return self.judge_llm or self.llm


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

_PYDANTIC_MESSAGES = {
    "extra_forbidden": "extra field not permitted",
    "missing": "field required",
}


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def spec_error_from_validation(err: ValidationError) -> SpecError:
    """The first error of a pydantic ValidationError, as a one-line SpecError naming the field."""
    first = err.errors()[0]
    loc = tuple(x for x in first["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    message = _PYDANTIC_MESSAGES.get(first["type"], first["msg"])
    if first["type"] not in _PYDANTIC_MESSAGES and "input" in first and not isinstance(first["input"], dict | list):
        message = f"{message} (got {first['input']!r})"
    return SpecError(_loc_to_path(loc), message)


def parse_spec(data: Any) -> RunSpec:
    """Validate a mapping as a RunSpec; raises SpecError naming the first bad field."""
    if not isinstance(data, dict):
        raise SpecError("", "a run spec must be a mapping of keys to values")
    try:
        return RunSpec.model_validate(data)
    except ValidationError as err:
        raise spec_error_from_validation(err) from None


def load_spec(path: str | Path) -> RunSpec:
    """Read a YAML or JSON spec file; raises SpecError (file errors name the file)."""
    p = Path(path)
    if not p.is_file():
        raise SpecError("spec", f"no such file: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise SpecError("spec", f"{p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}{where}") from None
    return parse_spec(data if data is not None else {})


def resolve_globs(patterns: list[str], field: str, base_dir: Path | None = None) -> list[Path]:
    """Expand globs (relative to base_dir, else the cwd); a glob matching nothing is a SpecError."""
    out: list[Path] = []
    for i, pattern in enumerate(patterns):
        full = pattern if Path(pattern).is_absolute() or base_dir is None else str(base_dir / pattern)
        matches = sorted(Path(m) for m in glob.glob(full, recursive=True) if Path(m).is_file())
        if not matches:
            raise SpecError(f"{field}[{i}]", f"no file matches {pattern!r}")
        out.extend(matches)
    # Keep order, drop repeats (two globs may match the same file).
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def check_inputs(spec: RunSpec, base_dir: Path | None = None) -> None:
    """Fail early, naming the glob, when an input glob of an enabled stage matches no file."""
    enabled = spec.stages.enabled()
    if "documents" in enabled:
        if not spec.inputs.web:
            raise SpecError("inputs.web", "the documents stage needs at least one input glob")
        resolve_globs(spec.inputs.web, "inputs.web", base_dir)
    if spec.inputs.trajectories:
        resolve_globs(spec.inputs.trajectories, "inputs.trajectories", base_dir)
    for i, pattern in enumerate(spec.stages.corpus.decontaminate if spec.stages.corpus else []):
        resolve_globs([pattern], f"stages.corpus.decontaminate[{i}]", base_dir)


def validate_run_id(run_id: str) -> str:
    if not RUN_ID_RE.match(run_id):
        raise SpecError("run_id", f"{run_id!r} is not a valid run id (letters, digits, '.', '_', '-'; max 128)")
    return run_id


def dump_spec(spec: RunSpec) -> str:
    """The spec as YAML, as saved next to a run's output."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=False), sort_keys=False)
