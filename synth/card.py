"""The dataset card of a run (``runs/<id>/README.md``): the run folder as a Hugging Face dataset.

A run folder holds Parquet files of several schemas (each stage's records, each stage's
failed ledger, the manifest), so neither ``datasets`` nor the Hub viewer can guess how to
read it. The card's YAML header says it, the way the Hub documents it
(https://huggingface.co/docs/hub/datasets-manual-configuration): one ``configs`` entry per
stage (``shards/<stage>/*.parquet``) and one per failed ledger (``<stage>_failed`` →
``failed/<stage>/*.parquet``), so ``datasets.load_dataset("runs/<id>", "rollouts")`` works
offline and the folder can be uploaded as it is (``agentcpt export --format hf``).

License and sources come from the spec's ``card`` block (a run cannot infer the terms of its
inputs); provenance (inputs, models, seed, stage settings) and the figures (records, failures,
verdicts, tokens, LLM usage) come from the run itself. Only committed files are described;
a stage without files has no config (a config whose files match nothing fails to load).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from synth.catalog import RunStats, run_stats
from synth.errors import SpecError
from synth.layout import RunLayout
from synth.runstate import LLMUsage, RunDir
from synth.shards import ShardStore, atomic_write_bytes
from synth.spec import CardConfig, RunSpec, load_spec
from synth.stages import get_stage, stage_names

TAGS = ["agentcpt", "synthetic", "agentic-continual-pretraining", "agent-trajectories"]


class CardConfigEntry(BaseModel):
    """One ``configs:`` entry of the card header."""

    model_config = ConfigDict(extra="forbid")
    config_name: str
    path: str  # glob relative to the run folder
    stage: str
    kind: str  # records | failed


def _agentcpt_version() -> str:
    try:
        return version("agentcpt")
    except PackageNotFoundError:
        return "unknown"


def card_configs(layout: RunLayout) -> list[CardConfigEntry]:
    """A config per stage with committed records, and per stage with committed failures, in stage order.

    A stage whose files hold no row gets no config: there is nothing to load, and ``datasets``
    cannot tell the features of a config without a row group."""
    present = {(r.stage, r.kind) for r in ShardStore(layout.root).manifest_rows() if r.rows > 0}
    out: list[CardConfigEntry] = []
    for stage in stage_names():
        for kind, folder, suffix in (("records", "shards", ""), ("failed", "failed", "_failed")):
            if (stage, kind) in present:
                out.append(
                    CardConfigEntry(
                        config_name=f"{stage}{suffix}", path=f"{folder}/{stage}/*.parquet", stage=stage, kind=kind
                    )
                )
    return out


def _size_category(rows: int) -> str:
    # The Hub's size_categories buckets.
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "1M<n<10M" if rows < 10_000_000 else "n>10M"


def card_header(spec: RunSpec | None, configs: list[CardConfigEntry], total_rows: int) -> dict[str, Any]:
    """The YAML metadata block as a mapping."""
    card = spec.card if spec is not None else CardConfig()
    default = next((c.config_name for c in configs if c.config_name == "corpus"), None)
    header: dict[str, Any] = {
        "pretty_name": spec.name if spec is not None else None,
        "license": card.license,
        "language": list(card.language),
        "tags": TAGS,
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(total_rows)],
    }
    if card.source_datasets:
        header["source_datasets"] = list(card.source_datasets)
    header["configs"] = [
        {
            "config_name": c.config_name,
            **({"default": True} if c.config_name == default else {}),
            "data_files": [{"split": "train", "path": c.path}],
        }
        for c in configs
    ]
    return {k: v for k, v in header.items() if v is not None}


def _provenance(spec: RunSpec | None, layout: RunLayout) -> list[str]:
    status = RunDir(layout.root).read_status()
    lines = [f"- run id: `{layout.run_id}`"]
    if status is not None:
        when = status.started_at or status.created_at
        lines.append(f"- state: {status.state}; started {when:%Y-%m-%d %H:%M:%S} UTC" if when else f"- state: {status.state}")
    lines.append(f"- written by agentcpt {_agentcpt_version()}")
    if spec is None:
        lines.append("- the run's `spec.yaml` is missing or unreadable: inputs and models are unknown")
        return lines
    web, traj = spec.inputs.web, spec.inputs.trajectories
    lines.append(f"- web inputs: {', '.join(f'`{g}`' for g in web) if web else 'none'}")
    lines.append(f"- trajectory inputs: {', '.join(f'`{g}`' for g in traj) if traj else 'none'}")
    if spec.card.source_datasets:
        lines.append(f"- source datasets: {', '.join(spec.card.source_datasets)}")
    model = spec.llm.model or ("SmolLM2-135M-Instruct (embedded)" if spec.llm.base_url == "embedded" else "?")
    lines.append(f"- generator model: `{model}`")
    judge = spec.effective_judge_llm.model or model
    lines.append(f"- judge model: `{judge}`")
    lines.append(f"- seed: {spec.execution.seed}; temperature {spec.llm.temperature}")
    return lines


def _stats_table(stats: RunStats) -> list[str]:
    lines = [
        "| stage | records | failed | accepted | rejected | LLM requests | LLM tokens |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in stats.stages:
        usage = stats.llm.get(s.stage, LLMUsage())
        if not (s.rows or s.failed or usage.requests):
            continue
        accepted = "" if s.accepted is None else str(s.accepted)
        rejected = "" if s.rejected is None else str(s.rejected)
        tokens = usage.prompt_tokens + usage.completion_tokens
        lines.append(f"| {s.stage} | {s.rows} | {s.failed} | {accepted} | {rejected} | {usage.requests} | {tokens} |")
    return lines


def _corpus_table(stats: RunStats) -> list[str]:
    if not stats.corpus_tokens:
        return []
    lines = ["", "Corpus tokens per kind and CPT stage:", "", "| kind | CPT stage | records | tokens |", "|---|---:|---:|---:|"]
    lines += [f"| {r['kind']} | {r['cpt_stage']} | {r['records']} | {r['tokens']} |" for r in stats.corpus_tokens]
    return lines


def _llm_totals(stats: RunStats) -> list[str]:
    usage = list(stats.llm.values())
    if not usage:
        return []
    requests = sum(u.requests for u in usage)
    prompt = sum(u.prompt_tokens for u in usage)
    completion = sum(u.completion_tokens for u in usage)
    costs = [u.cost_usd for u in usage if u.cost_usd is not None]
    line = f"LLM usage: {requests} requests, {prompt} prompt + {completion} completion tokens"
    return ["", line + (f", ${sum(costs):.4f}." if costs else ".")]


def _configs_section(configs: list[CardConfigEntry]) -> list[str]:
    lines = ["| config | files | what |", "|---|---|---|"]
    for c in configs:
        if c.kind == "records":
            fields = ", ".join(get_stage(c.stage).record_type.arrow_schema().names)
            what = f"`{c.stage}` records: {fields}"
        else:
            what = f"inputs of `{c.stage}` that yielded no record: input_ids, error_kind, message, raw_output"
        lines.append(f"| `{c.config_name}` | `{c.path}` | {what} |")
    return lines


def render_card(layout: RunLayout, spec: RunSpec | None = None) -> str:
    """The card's text for the run in ``layout`` (``spec``: the session's, else the stored one)."""
    if spec is None:
        try:
            spec = load_spec(layout.spec)
        except SpecError:
            spec = None
    configs = card_configs(layout)
    stats = run_stats(layout.root)
    total_rows = sum(s.rows for s in stats.stages)
    header = yaml.safe_dump(card_header(spec, configs, total_rows), sort_keys=False, allow_unicode=True)
    title = spec.name if spec is not None else layout.run_id
    first = configs[0].config_name if configs else "corpus"
    body = [
        f"# {title}",
        "",
        "Agentic continual-pre-training data made by agentcpt, following the "
        "AgentFounder recipe: FAS planning and reasoning samples, ReAct rollouts, HAS decision samples, "
        "and the CPT corpus rendered from them.",
    ]
    if spec is not None and spec.card.description:
        body += ["", spec.card.description.strip()]
    body += ["", "## Load it", "", "```python", "from datasets import load_dataset", "",
             f'ds = load_dataset("path/to/this/folder", "{first}")', "```", ""]  # fmt: skip
    body += ["## Configs", "", *_configs_section(configs), ""]
    body += ["## The run", "", *_stats_table(stats), *_corpus_table(stats), *_llm_totals(stats), ""]
    body += ["## Provenance", "", *_provenance(spec, layout), ""]
    if spec is not None:
        settings = yaml.safe_dump(
            {name: spec.stages.block(name).model_dump(mode="json") for name in spec.stages.enabled()},  # type: ignore[union-attr]
            sort_keys=False,
        )
        body += ["Stage settings:", "", "```yaml", settings.rstrip(), "```", ""]
    body += [
        "## License",
        "",
        f"`{spec.card.license if spec is not None else 'other'}` (set in the run spec's `card.license`). "
        "The text derives from the inputs listed above; their own terms apply too.",
        "",
    ]
    return f"---\n{header}---\n\n" + "\n".join(body)


def write_dataset_card(run_dir: str | Path, spec: RunSpec | None = None) -> Path:
    """Write ``runs/<id>/README.md`` atomically (a reader never sees half a card); returns its path."""
    layout = RunLayout(Path(run_dir))
    atomic_write_bytes(layout.dataset_card, render_card(layout, spec).encode("utf-8"))
    return layout.dataset_card
