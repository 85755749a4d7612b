"""``agentcpt run SPEC --preview [N]``: every enabled stage on N items, samples, and an
estimate of the full run — before a cent is spent on it.

The preview is a real run (same stages, endpoint, ledger) under ``<run_id>-preview``,
except that each barrier stage works on the first N items ``prepare`` returns. The
estimate scales what each stage spent per item in the preview to its items in the full
run:

    usage(stage) = preview usage × factor,   factor = full-run items / preview items

A barrier stage's plan counts every item ``prepare`` returned per *source*
(``Stage.item_sources``): the upstream stage it was made from (``follows``) — the preview
saw only a sample of that stage's records — or the spec's input files, which a preview
lists in full (imported trajectories, a root stage's inputs). Its full-run items are

    Σ over sources  min(cap, inputs × factor(follows)) × items / inputs

with factor 1 for input files and for stages this run does not execute. ``inputs`` are
what the stage's ``max_*`` setting counts (``Stage.input_cap_field``: memory's documents,
whose chunks are its items; questions' clusters; rollouts' questions): the preview's
sample seldom reaches a cap, the full run often does. A map stage works on its upstream's
records, so its factor is its upstream's.

A preview that gave a stage nothing to work on measured nothing: that stage is "no
sample" (unknown, not 0), and so is a map stage downstream of it; a barrier stage with
other sources counts only those and, like every stage it feeds, is marked a lower bound
(``≥``), as is the total. The ± range is a 95 % interval from the spread between the
preview's records (the coefficient of variation of their sizes over √n), plus the whole
estimate when fewer than two records came out.

A preview samples the *first* N items, so a source listed after them (the triples after
the web pages) may go unsampled, and its downstream effects with it; a larger N reaches it.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import IO, Any, NamedTuple

from pydantic import BaseModel, Field

from pipelines.runner import _sigterm_as_exception, run_session
from pipelines.units import StagePlan, read_plan
from synth.layout import preview_run_id
from synth.records import Record
from synth.runstate import RunDir
from synth.shards import ShardStore
from synth.spec import load_spec, spec_dir
from synth.stage import INPUT_FILES, ItemSource, Stage
from synth.stages import get_stage

SAMPLES_PER_STAGE = 2
SAMPLE_CHARS = 600


class StageEstimate(BaseModel):
    stage: str
    preview_items: int = Field(
        description="work items of the preview (a map stage's: its upstream's records)"
    )
    preview_records: int
    preview_failed: int
    items: float | None = Field(description="estimated work items of the full run; null: no sample")
    factor: float | None = Field(description="full-run items / preview items; null: no sample")
    requests: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None = None
    relative_range: float = Field(description="± share of the estimate (95 %)")
    lower_bound: bool = Field(
        False,
        description="leaves out items from an upstream stage the preview had no sample of (or upstream of it)",
    )
    unsampled: list[str] = Field(
        default_factory=list, description="upstream stages without a sample in the preview"
    )

    @property
    def known(self) -> bool:
        return self.factor is not None


class RunEstimate(BaseModel):
    preview_run_id: str
    stages: list[StageEstimate]

    @property
    def lower_bound(self) -> bool:
        """The totals leave out stages (or sources) the preview had no sample of."""
        return any(not s.known or s.lower_bound for s in self.stages)

    @property
    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for s in self.stages:
            out["requests"] += s.requests or 0
            out["prompt_tokens"] += s.prompt_tokens or 0
            out["completion_tokens"] += s.completion_tokens or 0
        return out


def _record_size(record: Record) -> int:
    text = getattr(record, "text", None)
    return len(text) if isinstance(text, str) else len(record.model_dump_json())


def _relative_range(records: list[Record]) -> float:
    sizes = [_record_size(r) for r in records]
    if len(sizes) < 2 or not statistics.fmean(sizes):
        return 1.0
    cv = statistics.stdev(sizes) / statistics.fmean(sizes)
    return round(1.96 * cv / math.sqrt(len(sizes)), 3)


class _Scale(NamedTuple):
    """A stage's full-run items over its preview items; None when the preview had no sample.

    ``usage_factor`` scales its LLM usage: the same, unless some of its sources make no LLM
    call (memory's triples), whose items then count for the records but not the requests.
    """

    factor: float | None
    lower_bound: bool = False
    usage_factor: float | None = None

    @property
    def usage(self) -> float | None:
        return self.factor if self.usage_factor is None else self.usage_factor


def _plan_sources(plan: StagePlan, stage: Stage[Any, Any]) -> list[ItemSource]:
    """The plan's item sources; a plan written before they were counted is read as one
    source following the first upstream (what the estimate assumed then)."""
    if plan.sources:
        return plan.sources
    n = plan.items_available if plan.items_available is not None else plan.items or 0
    follows = stage.upstream[0] if stage.upstream else None
    return [ItemSource(source=follows or INPUT_FILES, follows=follows, items=n, inputs=n)] if n else []


def _source_items(source: ItemSource, scales: dict[str, _Scale]) -> float | None:
    """Full-run items from one source; None when the stage it follows had no sample."""
    # Input files, and stages this run does not execute, are the same in the full run.
    scale = scales.get(source.follows) if source.follows is not None else None
    factor = 1.0 if scale is None else scale.factor
    if factor is None:
        return None
    if not source.inputs:
        return 0.0
    inputs = source.inputs * factor
    if source.cap is not None:
        inputs = min(inputs, float(source.cap))
    return inputs * source.items / source.inputs


def _barrier_scale(plan: StagePlan, stage: Stage[Any, Any], scales: dict[str, _Scale]) -> _Scale:
    upstream = [scales[u] for u in stage.upstream if u in scales]
    # An upstream without a sample may feed this stage in the full run (a source with no item
    # in the preview is not in the plan at all), and one that is a lower bound makes it one.
    lower = any(u.factor is None or u.lower_bound for u in upstream)
    if not plan.items:
        # Nothing ran, so no usage per item was measured: only a stage whose items come from
        # nothing this preview sampled (a root stage's input files) is known to have none.
        return _Scale(0.0) if not upstream else _Scale(None)
    sources = _plan_sources(plan, stage)
    full = sum(n for source in sources if (n := _source_items(source, scales)) is not None)
    return _Scale(full / plan.items, lower, _usage_factor(sources, scales))


def _usage_factor(sources: list[ItemSource], scales: dict[str, _Scale]) -> float | None:
    """Full-run over preview items of the sources that call the LLM, when the plan says what the
    preview sampled of each and some source makes no call; else None (the items' factor)."""
    calling = [s for s in sources if s.calls_llm]
    if len(calling) == len(sources) or any(s.sampled is None for s in sources):
        return None
    sampled = sum(s.sampled or 0 for s in calling)
    if not sampled:
        return 0.0 if not calling else None
    full = sum(n for s in calling if (n := _source_items(s, scales)) is not None)
    return full / sampled


def _scaled(value: float | None, factor: float | None) -> int | None:
    return None if factor is None else round((value or 0) * factor)


def estimate_full_run(run_dir: Path, stage_names: list[str]) -> RunEstimate:
    """Scale the preview's per-stage usage to the full run (see the module docstring)."""
    progress = RunDir(run_dir).read_progress()
    store = ShardStore(run_dir)
    scales: dict[str, _Scale] = {}
    n_records: dict[str, int] = {}
    out: list[StageEstimate] = []
    for name in stage_names:
        stage = get_stage(name)
        records = store.read_records(name)
        n_records[name] = len(records)
        plan = read_plan(run_dir, name)
        if plan is not None and plan.items is not None:  # a barrier stage: scale each source
            preview_items = plan.items
            scale = _barrier_scale(plan, stage, scales)
        else:  # a map stage: its items are its upstream's records
            source = stage.upstream[0] if stage.upstream else ""
            preview_items = n_records.get(source, 0)
            if source not in scales:
                scale = _Scale(1.0)  # its upstream is not run here: its records are final
            elif scales[source].factor is None or not preview_items:
                scale = _Scale(None)
            else:
                scale = scales[source]
        scales[name] = scale
        usage = progress.stages[name].llm if name in progress.stages else None
        f, uf = scale.factor, scale.usage
        out.append(
            StageEstimate(
                stage=name,
                preview_items=preview_items,
                preview_records=len(records),
                preview_failed=store.read_table(name, kind="failed").num_rows,
                items=None if f is None else round(preview_items * f, 1),
                factor=None if f is None else round(f, 3),
                requests=_scaled(usage.requests if usage else 0, uf),
                prompt_tokens=_scaled(usage.prompt_tokens if usage else 0, uf),
                completion_tokens=_scaled(usage.completion_tokens if usage else 0, uf),
                cost_usd=round(usage.cost_usd * uf, 4)
                if uf is not None and usage and usage.cost_usd is not None
                else None,
                relative_range=_relative_range(records),
                lower_bound=f is not None and scale.lower_bound,
                unsampled=[u for u in stage.upstream if u in scales and scales[u].factor is None],
            )
        )
    return RunEstimate(preview_run_id=run_dir.name, stages=out)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"


def print_samples(run_dir: Path, stage_names: list[str], out: IO[str]) -> None:
    store = ShardStore(run_dir)
    for name in stage_names:
        stage = get_stage(name)
        records = store.read_records(name)[:SAMPLES_PER_STAGE]
        print(f"\n== {name}: {len(store.read_records(name))} records", file=out)
        for record in records:
            summary = {f: getattr(record, f, None) for f in stage.summary_fields}
            print(f"  - {record.id} {json.dumps(summary, default=str)}", file=out)
            text = getattr(record, "text", None)
            if isinstance(text, str) and text:
                print(f"    {_clip(text)}", file=out)
        failed = store.read_table(name, kind="failed").to_pylist()[:SAMPLES_PER_STAGE]
        for row in failed:
            print(f"  ! failed {row['error_kind']}: {_clip(row['message'] or '')}", file=out)


def _n(value: float | None, mark: str) -> str:
    return mark + format(round(value or 0), ",")


def print_estimate(estimate: RunEstimate, out: IO[str]) -> None:
    header = (
        f"{'stage':<10} {'items':>9} {'factor':>8} {'requests':>10} {'prompt tok':>12} "
        f"{'compl. tok':>12} {'cost $':>9} {'±':>6}"
    )
    print("\nestimate for the full run (preview × factor; ≥: a lower bound):", file=out)
    print(header, file=out)
    for s in estimate.stages:
        if not s.known:
            print(f"{s.stage:<10} {'no sample':>9}  (the preview gave it no item: unknown, not 0)", file=out)
            continue
        m = "≥" if s.lower_bound else ""
        cost = f"{s.cost_usd:.2f}" if s.cost_usd is not None else "-"
        print(
            f"{s.stage:<10} {_n(s.items, m):>9} {s.factor or 0:>8.2f} {_n(s.requests, m):>10} "
            f"{_n(s.prompt_tokens, m):>12} {_n(s.completion_tokens, m):>12} {cost:>9} {s.relative_range:>6.0%}",
            file=out,
        )
    t = estimate.totals
    m = "≥" if estimate.lower_bound else ""
    print(
        f"{'total':<10} {'':>9} {'':>8} {_n(t['requests'], m):>10} "
        f"{_n(t['prompt_tokens'], m):>12} {_n(t['completion_tokens'], m):>12}",
        file=out,
    )
    if estimate.lower_bound:
        unknown = [s.stage for s in estimate.stages if not s.known]
        partial = [
            s.stage + (f" (no sample of {', '.join(s.unsampled)})" if s.unsampled else "")
            for s in estimate.stages
            if s.known and s.lower_bound
        ]
        parts = [f"no sample for {', '.join(unknown)}"] if unknown else []
        parts += [f"partly sampled: {', '.join(partial)}"] if partial else []
        print(f"total is a lower bound: {'; '.join(parts)}. A larger --preview N samples more.", file=out)


def preview_command(spec: str, n: int = 5, ray_address: str | None = None, out: IO[str] | None = None) -> int:
    """Run every enabled stage on ``n`` items into ``<run_id>-preview``; print samples and an estimate."""
    out = out or sys.stdout
    loaded = load_spec(spec)
    run_id = preview_run_id(loaded.name)
    with _sigterm_as_exception():
        result = run_session(
            loaded,
            run_id=run_id,
            ray_address=ray_address,
            base_dir=Path.cwd(),
            inputs_dir=spec_dir(spec),
            preview_items=n,
            out=out,
        )
    stage_names = loaded.stages.enabled()
    print_samples(result.run_dir, stage_names, out)
    print_estimate(estimate_full_run(result.run_dir, stage_names), out)
    return result.exit_code


def estimate_as_json(estimate: RunEstimate) -> dict[str, Any]:
    return estimate.model_dump(mode="json")
