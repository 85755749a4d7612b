"""``agentcpt run SPEC --preview [N]``: every enabled stage on N items, samples, and an
estimate of the full run — before a cent is spent on it.

The preview is a real run (same stages, endpoint, ledger) under ``<run_id>-preview``,
except that each barrier stage works on the first N items ``prepare`` returns. Each
barrier stage's plan records how many items it had (``items_available``) and used
(``items``), so a stage's *scale factor* to the full run is

    factor(stage) = factor(item source) × items_available / items

where the item source is its first upstream stage (1 for a stage that reads inputs); a
map stage has its upstream's factor. Requests and tokens measured per stage in the
preview, times the factor, estimate the full run. The ± range is a 95 % interval from
the spread between the preview's records (the coefficient of variation of their sizes
over √n), plus the whole estimate when fewer than two records came out.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, Field

from pipelines.runner import _sigterm_as_exception, run_session
from pipelines.units import read_plan
from synth.layout import preview_run_id
from synth.records import Record
from synth.runstate import RunDir
from synth.shards import ShardStore
from synth.spec import load_spec, spec_dir
from synth.stages import get_stage

SAMPLES_PER_STAGE = 2
SAMPLE_CHARS = 600


class StageEstimate(BaseModel):
    stage: str
    preview_records: int
    preview_failed: int
    factor: float = Field(description="full run / preview, from the plans' item counts")
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None = None
    relative_range: float = Field(description="± share of the estimate (95 %)")


class RunEstimate(BaseModel):
    preview_run_id: str
    stages: list[StageEstimate]

    @property
    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for s in self.stages:
            out["requests"] += s.requests
            out["prompt_tokens"] += s.prompt_tokens
            out["completion_tokens"] += s.completion_tokens
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


def estimate_full_run(run_dir: Path, stage_names: list[str]) -> RunEstimate:
    """Scale the preview's per-stage usage by each stage's factor (see the module docstring)."""
    progress = RunDir(run_dir).read_progress()
    store = ShardStore(run_dir)
    factors: dict[str, float] = {}
    out: list[StageEstimate] = []
    for name in stage_names:
        stage = get_stage(name)
        source = stage.upstream[0] if stage.upstream else None
        factor = factors.get(source, 1.0) if source else 1.0
        plan = read_plan(run_dir, name)
        if stage.barrier and plan is not None and plan.items and plan.items_available is not None:
            factor *= plan.items_available / plan.items
        factors[name] = factor
        usage = progress.stages[name].llm if name in progress.stages else None
        records = store.read_records(name)
        failed = store.read_table(name, kind="failed").num_rows
        out.append(
            StageEstimate(
                stage=name,
                preview_records=len(records),
                preview_failed=failed,
                factor=round(factor, 3),
                requests=round((usage.requests if usage else 0) * factor),
                prompt_tokens=round((usage.prompt_tokens if usage else 0) * factor),
                completion_tokens=round((usage.completion_tokens if usage else 0) * factor),
                cost_usd=round(usage.cost_usd * factor, 4) if usage and usage.cost_usd is not None else None,
                relative_range=_relative_range(records),
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


def print_estimate(estimate: RunEstimate, out: IO[str]) -> None:
    header = f"{'stage':<10} {'factor':>8} {'requests':>10} {'prompt tok':>12} {'compl. tok':>12} {'cost $':>9} {'±':>6}"
    print("\nestimate for the full run (preview × factor):", file=out)
    print(header, file=out)
    for s in estimate.stages:
        cost = f"{s.cost_usd:.2f}" if s.cost_usd is not None else "-"
        print(
            f"{s.stage:<10} {s.factor:>8.2f} {s.requests:>10,} {s.prompt_tokens:>12,} "
            f"{s.completion_tokens:>12,} {cost:>9} {s.relative_range:>6.0%}",
            file=out,
        )
    t = estimate.totals
    print(
        f"{'total':<10} {'':>8} {int(t['requests']):>10,} {int(t['prompt_tokens']):>12,} "
        f"{int(t['completion_tokens']):>12,}",
        file=out,
    )


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
