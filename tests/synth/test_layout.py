"""RunLayout is the one place that knows a run directory's paths and makes run ids."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from synth.errors import SpecError
from synth.layout import RunLayout, new_run_id, validate_run_id


def test_new_run_id_is_name_utc_stamp_and_six_hex_digits() -> None:
    run_id = new_run_id("My run/β", now=datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC))
    assert re.fullmatch(r"My-run-20250304-050607-[0-9a-f]{6}", run_id)
    assert validate_run_id(run_id) == run_id


@pytest.mark.parametrize("bad", ["../x", "", "a/b", ".hidden", "x" * 129])
def test_run_ids_that_could_escape_the_output_dir_are_refused(bad: str) -> None:
    with pytest.raises(SpecError, match="run_id"):
        RunLayout.of("runs", bad)


def test_layout_names_every_design_path(tmp_path: Path) -> None:
    layout = RunLayout.of(tmp_path, "r1")
    rel = {k: str(getattr(layout, k).relative_to(layout.root)) for k in ("spec", "manifest", "catalog", "quality")}
    assert rel == {"spec": "spec.yaml", "manifest": "manifest.parquet", "catalog": "catalog.duckdb", "quality": "quality.json"}
    assert layout.shard("planning", "00003").relative_to(layout.root) == Path("shards/planning/part-00003.parquet")
    assert layout.shard("planning", "00003", "failed").relative_to(layout.root) == Path("failed/planning/part-00003.parquet")
    assert layout.blend(2).relative_to(layout.root) == Path("megatron/blend_cpt2.json")
    assert not layout.is_run()
    layout.root.mkdir(parents=True)
    layout.spec.write_text("name: x\n")
    assert layout.is_run()
