"""Where everything of a run lives: the one module that knows the layout of ``runs/<id>/``
(DESIGN §6) and how run ids are made. Every other module asks a ``RunLayout``.

::

    runs/<run_id>/spec.yaml                       the spec the run was started with
    runs/<run_id>/status.json, progress.json      run state and per-stage progress (driver)
    runs/<run_id>/progress.jsonl                  progress time series (one line per tick)
    runs/<run_id>/CANCEL                          a cancel request
    runs/<run_id>/prompts.json                    prompt fingerprint per stage (resume check)
    runs/<run_id>/shards/<stage>/part-<unit>.parquet
    runs/<run_id>/failed/<stage>/part-<unit>.parquet
    runs/<run_id>/manifest.d/<stage>/part-<unit>.json   commit entries (the commit point)
    runs/<run_id>/manifest.parquet                compacted manifest
    runs/<run_id>/plan/<stage>.json               a barrier stage's unit plan
    runs/<run_id>/cache/llm/                      the LLM request cache (segment files)
    runs/<run_id>/signatures/<stage>/part-<unit>.parquet   MinHash side file of a unit (dedup)
    runs/<run_id>/workers.jsonl                   worker registry (fencing)
    runs/<run_id>/driver.log                      the driver's log (API-launched runs)
    runs/<run_id>/catalog.duckdb, quality.json, README.md (dataset card)
    runs/<run_id>/megatron/                       tokenize output (.bin/.idx, blend_cptN.json)
    runs/<run_id>/cpt-smoke/                      make cpt-smoke output
    runs/<run_id>/cpt/<stage>/metrics.jsonl       a CPT run's log, when its checkpoint.dir is runs/<run_id>/cpt
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from synth.errors import SpecError

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ShardKind = Literal["records", "failed"]


def validate_run_id(run_id: str) -> str:
    """``run_id`` itself, or SpecError naming ``run_id`` when it could escape the output dir."""
    if not RUN_ID_RE.match(run_id):
        raise SpecError("run_id", f"{run_id!r} is not a valid run id (letters, digits, '.', '_', '-'; max 128)")
    return run_id


def new_run_id(name: str, now: datetime | None = None) -> str:
    """``<name>-<UTC yyyymmdd-HHMMSS>-<6 hex>``; characters a run id cannot hold become ``-``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    slug = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in name.strip())
    slug = slug.strip("-._")[:100] or "run"
    return validate_run_id(f"{slug}-{stamp}-{secrets.token_hex(3)}")


PREVIEW_SUFFIX = "-preview"


def preview_run_id(name: str) -> str:
    """The id of an ``agentcpt run --preview`` run: a new run id with ``-preview`` appended."""
    return validate_run_id(new_run_id(name) + PREVIEW_SUFFIX)


def is_preview_run(run_id: str) -> bool:
    """Whether ``run_id`` names a preview (a sample of a run, never a corpus to train on)."""
    return run_id.endswith(PREVIEW_SUFFIX)


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory (``root`` is ``runs/<run_id>``)."""

    root: Path

    @classmethod
    def of(cls, output_dir: str | Path, run_id: str) -> RunLayout:
        return cls(Path(output_dir) / validate_run_id(run_id))

    @property
    def run_id(self) -> str:
        return self.root.name

    # -- run state ---------------------------------------------------------------
    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def progress(self) -> Path:
        return self.root / "progress.json"

    @property
    def progress_series(self) -> Path:
        return self.root / "progress.jsonl"

    @property
    def cancel(self) -> Path:
        return self.root / "CANCEL"

    @property
    def prompts(self) -> Path:
        return self.root / "prompts.json"

    @property
    def workers(self) -> Path:
        return self.root / "workers.jsonl"

    @property
    def driver_log(self) -> Path:
        return self.root / "driver.log"

    # -- shards and manifest -------------------------------------------------------
    def shard_dir(self, stage: str, kind: ShardKind = "records") -> Path:
        return self.root / ("shards" if kind == "records" else "failed") / stage

    def shard(self, stage: str, unit: str, kind: ShardKind = "records") -> Path:
        return self.shard_dir(stage, kind) / f"part-{unit}.parquet"

    @property
    def data_dirs(self) -> tuple[Path, Path]:
        """The folders that hold shard files (records, failed ledger)."""
        return self.root / "shards", self.root / "failed"

    @property
    def manifest_entries(self) -> Path:
        return self.root / "manifest.d"

    def manifest_entry(self, stage: str, unit: str) -> Path:
        return self.manifest_entries / stage / f"part-{unit}.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    def plan(self, stage: str) -> Path:
        return self.root / "plan" / f"{stage}.json"

    def unit_items(self, stage: str, unit: str) -> Path:
        """A barrier unit's work items, written by ``prepare`` on a worker and read by the
        worker that runs the unit (so the driver never holds a stage's items)."""
        return self.root / "plan" / stage / f"{unit}.items.pkl"

    @property
    def llm_cache(self) -> Path:
        return self.root / "cache" / "llm"

    def signatures(self, stage: str, unit: str) -> Path:
        """A unit's MinHash side file (``synth.dedup``): written before the unit commits."""
        return self.root / "signatures" / stage / f"part-{unit}.parquet"

    # -- products ------------------------------------------------------------------
    @property
    def catalog(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def quality(self) -> Path:
        return self.root / "quality.json"

    @property
    def dataset_card(self) -> Path:
        return self.root / "README.md"

    @property
    def megatron(self) -> Path:
        return self.root / "megatron"

    def blend(self, cpt_stage: int) -> Path:
        return self.megatron / f"blend_cpt{cpt_stage}.json"

    @property
    def cpt_smoke(self) -> Path:
        return self.root / "cpt-smoke"

    @property
    def cpt(self) -> Path:
        """Where a CPT config may put its ``checkpoint.dir`` so the dashboard shows its curves."""
        return self.root / "cpt"

    def cpt_metrics(self) -> list[Path]:
        """The trainer's ``<checkpoint.dir>/<stage>/metrics.jsonl`` of every CPT stage trained into
        this run's folder (``cpt-smoke/`` or ``cpt/``), in path order."""
        return sorted(p for d in (self.cpt_smoke, self.cpt) for p in d.glob("*/metrics.jsonl"))

    def is_run(self) -> bool:
        """Whether the folder holds a run (a spec, a status or committed units)."""
        return self.spec.exists() or self.status.exists() or self.manifest_entries.exists()
