"""The run spec (DESIGN §5): pydantic models, loading from YAML/JSON, errors that name fields.

Every model forbids unknown keys, so a typo in a spec is an error naming its path and the
field it probably meant (``stages.planning.judgee: extra field not permitted (did you mean
'judge'?)``) rather than a silently ignored key. All problems of a spec are reported at
once (``SpecErrors``), one line each. Input globs are checked by ``synth.inputs``.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from synth.errors import SpecError, raise_problems
from synth.llm.base import truncation_caps
from synth.llm.config import EMBEDDED, LLMConfig, completion_cap
from synth.stages import get_stage, stage_names
from synth.stages.corpus import CorpusConfig
from synth.stages.decisions import DecisionsConfig
from synth.stages.documents import DocumentsConfig
from synth.stages.memory import MemoryConfig
from synth.stages.planning import PlanningConfig
from synth.stages.questions import QuestionsConfig
from synth.stages.reasoning import ReasoningConfig
from synth.stages.rollouts import RolloutsConfig


class Inputs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    web: list[str] = Field(default_factory=list, description="globs of html | warc(.gz) | jsonl (url + html|text)")
    trajectories: list[str] = Field(default_factory=list, description="globs of JSONL trajectories (ReAct chatml or OpenAI tool_calls)")
    triples: list[str] = Field(default_factory=list, description="globs of JSONL knowledge-graph triples: subject, relation, object, time, source")


class StagesConfig(BaseModel):
    """Which stages run, with their settings. A stage left out is skipped; `{}` runs it with defaults."""

    # "allow" only so that stages added with synth.stages.register get a block here too; the
    # validator below refuses every key that is not a registered stage.
    model_config = ConfigDict(extra="allow")
    documents: DocumentsConfig | None = None
    memory: MemoryConfig | None = None
    questions: QuestionsConfig | None = None
    planning: PlanningConfig | None = None
    reasoning: ReasoningConfig | None = None
    rollouts: RolloutsConfig | None = None
    decisions: DecisionsConfig | None = None
    corpus: CorpusConfig | None = None

    @model_validator(mode="after")
    def _registered_stages_only(self) -> StagesConfig:
        known = stage_names()
        for name, value in list((self.__pydantic_extra__ or {}).items()):
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                # sub_path: the formatter appends it to this validator's location (`stages`).
                raise PydanticCustomError(
                    "unknown_stage", "extra field not permitted{hint}", {"hint": hint, "sub_path": name}
                )
            if value is not None:
                try:
                    block = get_stage(name).config_type.model_validate(value)
                except ValidationError as err:
                    first = err.errors()[0]
                    where = ".".join(str(x) for x in (name, *first["loc"]))
                    raise PydanticCustomError(
                        "invalid_stage_block", "{message}", {"message": first["msg"], "sub_path": where}
                    ) from None
                self.__pydantic_extra__[name] = block  # type: ignore[index]
        return self

    def block(self, name: str) -> BaseModel | None:
        """The config block of stage ``name`` (None when it is not enabled)."""
        if name in type(self).model_fields:
            return getattr(self, name)
        return (self.__pydantic_extra__ or {}).get(name)

    def enabled(self) -> list[str]:
        """Enabled stage names in pipeline order."""
        return [name for name in stage_names() if self.block(name) is not None]


class ExecutionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ray_address: str | None = Field(None, description="join this Ray cluster; null starts a local instance")
    unit_size: PositiveInt = Field(256, description="records per work unit")
    seed: int = Field(0, description="seed for every sampler and shuffle")
    max_units_in_flight: PositiveInt | None = Field(None, description="backpressure bound; null = 2 x CPUs")


class CardConfig(BaseModel):
    """What the dataset card (``runs/<id>/README.md``) cannot infer from the run: the data's terms."""

    model_config = ConfigDict(extra="forbid")
    license: str = Field(
        "other", description="Hub license id of the generated data (apache-2.0, cc-by-4.0, ...); mind the inputs' terms"
    )
    description: str | None = Field(None, description="a paragraph for the card: what the data is for")
    source_datasets: list[str] = Field(
        default_factory=list, description="Hub ids or URLs the inputs came from (provenance)"
    )
    language: list[str] = Field(default_factory=lambda: ["en"], description="ISO 639-1 codes of the text")


class RunSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="human-readable run name")
    inputs: Inputs = Field(default_factory=Inputs)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    judge_llm: LLMConfig | None = Field(None, description="endpoint for judges; null = use llm")
    stages: StagesConfig = Field(default_factory=StagesConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    output_dir: str = Field("runs", description="runs are written under output_dir/<run_id>")
    card: CardConfig = Field(default_factory=CardConfig, description="dataset card metadata (license, provenance)")

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    @field_validator("output_dir")
    @classmethod
    def _output_dir_is_a_filesystem(cls, v: str) -> str:
        # Inputs may be remote (synth.inputs), outputs not: a unit commits by renaming its
        # manifest entry into place and fsyncing the directory, the request cache appends to
        # open files, and resume lists directories — none of which an object store offers
        # (issue 19). A bucket mounted as a filesystem (FUSE, NFS gateway) is a path and works.
        from synth.inputs import is_remote

        if is_remote(v):
            raise ValueError(
                f"{v!r} is an object-store URL; output_dir must be a local or mounted filesystem path "
                "(commits rely on atomic rename, directory fsync and appends, which object stores lack): "
                "write to a local or network filesystem and copy the run to the bucket afterwards"
            )
        return v

    @property
    def effective_judge_llm(self) -> LLMConfig:
        return self.judge_llm or self.llm


# ---------------------------------------------------------------------------
# Loading: every problem at once, each naming its field
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


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The spec model that the (string and index) path ``loc`` leads to, from ``RunSpec``."""
    model: type[BaseModel] = RunSpec
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        inner = _model_in(field.annotation) if field is not None else None
        if inner is None:
            return None
        model = inner
    return model


def did_you_mean(loc: tuple[Any, ...]) -> str | None:
    """The field name closest to the unknown key at the end of ``loc`` (a typo's fix), if any."""
    model = _model_at(loc[:-1])
    if model is None or not loc or not isinstance(loc[-1], str):
        return None
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return close[0] if close else None


def spec_errors_from_validation(err: ValidationError) -> list[SpecError]:
    """Every error of a pydantic ValidationError as a SpecError naming its field (one per field)."""
    out: dict[str, SpecError] = {}
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        sub_path = (e.get("ctx") or {}).get("sub_path")  # set by StagesConfig's own validator
        if sub_path:
            loc += tuple(str(sub_path).split("."))
        message = _PYDANTIC_MESSAGES.get(e["type"], e["msg"])
        if e["type"] == "extra_forbidden":
            fix = did_you_mean(loc)
            if fix is not None:
                message += f" (did you mean {fix!r}?)"
        elif e["type"] not in _PYDANTIC_MESSAGES and "input" in e and not isinstance(e["input"], dict | list):
            message = f"{message} (got {e['input']!r})"
        path = _loc_to_path(loc)
        out.setdefault(path, SpecError(path, message))  # a union reports one error per member
    return list(out.values())


def _endpoint_problems(data: dict[str, Any]) -> list[SpecError]:
    """``model`` is required for every endpoint but ``embedded``: no guessing from ``GET /models``.

    Checked on the raw mapping, so that it is reported together with type errors elsewhere.
    (On a multi-model gateway "the first listed model" is arbitrary.)
    """
    problems = []
    for block in ("llm", "judge_llm"):
        cfg = data.get(block)
        if not isinstance(cfg, dict):
            continue
        base_url = cfg.get("base_url", EMBEDDED)
        if base_url != EMBEDDED and not cfg.get("model"):
            problems.append(
                SpecError(
                    f"{block}.model",
                    f"required for base_url {base_url!r} (only 'embedded' picks its own model); "
                    "name the model the endpoint should run",
                )
            )
    return problems


def parse_spec(data: Any) -> RunSpec:
    """Validate a mapping as a RunSpec; raises SpecError (one problem) or SpecErrors (several)."""
    if not isinstance(data, dict):
        raise SpecError("", "a run spec must be a mapping of keys to values")
    problems: list[SpecError] = []
    spec: RunSpec | None = None
    try:
        spec = RunSpec.model_validate(data)
    except ValidationError as err:
        problems.extend(spec_errors_from_validation(err))
    named = {p.field for p in problems}
    problems.extend(p for p in _endpoint_problems(data) if p.field not in named)
    raise_problems(problems)
    assert spec is not None
    return spec


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


def spec_dir(path: str | Path) -> Path:
    """The directory relative input globs of the spec file at ``path`` resolve against."""
    return Path(path).resolve().parent


def dump_spec(spec: RunSpec) -> str:
    """The spec as YAML, as saved next to a run's output."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=False), sort_keys=False)


# ---------------------------------------------------------------------------
# Which setting caps a stage's replies (for truncated replies)
# ---------------------------------------------------------------------------


def completion_cap_settings(spec: RunSpec, stage: str) -> dict[str, tuple[int | None, str, int]]:
    """A stage's completion-cap settings: spec path -> (its value, the endpoint's path, that cap).

    A cap setting is a stage config field described as a "completion cap"; fields named
    ``judge_*`` are capped by ``judge_llm``, the others by ``llm``.
    """
    cfg = spec.stages.block(stage)
    out: dict[str, tuple[int | None, str, int]] = {}
    if cfg is None:
        return out
    for name, field in type(cfg).model_fields.items():
        if "completion cap" not in (field.description or ""):
            continue
        judge = name.startswith("judge")
        endpoint = spec.effective_judge_llm if judge else spec.llm
        endpoint_path = "judge_llm.max_tokens" if judge and spec.judge_llm is not None else "llm.max_tokens"
        out[f"stages.{stage}.{name}"] = (getattr(cfg, name), endpoint_path, endpoint.max_tokens)
    return out


def truncation_advice(spec: RunSpec, stage: str, messages: list[str]) -> str:
    """Which setting to raise for a stage whose replies were cut by the token cap.

    ``messages`` are the stage's ``truncated`` failure messages; the cap each names is
    matched against the stage's cap settings, so the advice names the one that bit.
    """
    caps = truncation_caps(messages)
    settings = completion_cap_settings(spec, stage)
    advice: list[str] = []
    # Settings held down by one endpoint cap: one piece of advice naming them all.
    capped_by: dict[tuple[str, int | None], list[str]] = {}
    for path, (value, endpoint_path, endpoint_cap) in settings.items():
        # Most stages send min(setting, endpoint cap); some send the setting as it is.
        sent = {endpoint_cap} if value is None else {value, completion_cap(value, endpoint_cap)}
        if caps and not caps & sent:
            continue
        if value is None:
            advice.append(f"set {path} (now {endpoint_path} = {endpoint_cap})")
        elif not caps or value in caps:
            advice.append(f"raise {path} (now {value})")
        else:
            capped_by.setdefault((endpoint_path, endpoint_cap), []).append(f"{path} = {value}")
    for (endpoint_path, endpoint_cap), held in capped_by.items():
        advice.append(f"raise {endpoint_path} (now {endpoint_cap}; it caps {' and '.join(held)})")
    if not advice:
        advice.append("raise llm.max_tokens")
    return " or ".join(dict.fromkeys(advice))
