"""Adding a ninth stage is one module, one record class and one registry line (issue 14):
the toy ``reviews`` stage of ``testing.ninth_stage`` runs through the scheduler, its spec
block validates, and the catalog counts its verdicts, with no other code touched."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines.progress import LogDisplay
from pipelines.runner import run_session
from synth import stages as registry
from synth.catalog import connect_run, run_stats
from synth.spec import SpecError, parse_spec
from testing import ninth_stage
from testing.toy_stages import toy_pipeline


@pytest.fixture
def reviews_registered() -> Iterator[None]:
    registry.register(ninth_stage.STAGE, before="corpus")
    try:
        yield
    finally:
        registry.unregister("reviews")


def test_an_unregistered_stage_is_not_a_spec_key() -> None:
    with pytest.raises(SpecError, match="reviews"):
        parse_spec({"name": "x", "stages": {"reviews": {}}})


def test_registered_stage_sits_in_pipeline_order_and_validates_its_block(reviews_registered: None) -> None:
    assert registry.stage_names()[-2:] == ("reviews", "corpus")
    spec = parse_spec({"name": "x", "stages": {"planning": {}, "reviews": {"min_chars": 3}}})
    assert spec.stages.enabled() == ["planning", "reviews"]
    assert ninth_stage.STAGE.config(spec).min_chars == 3
    with pytest.raises(SpecError, match="reviews.min_charz"):
        parse_spec({"name": "x", "stages": {"reviews": {"min_charz": 3}}})  # stages.reviews.min_charz


def test_ninth_stage_runs_through_the_scheduler_and_the_catalog(
    tmp_path: Path, reviews_registered: None, ray_cluster: Any
) -> None:
    spec = parse_spec(
        {
            "name": "ninth",
            "stages": {"questions": {}, "planning": {}, "reviews": {"min_chars": 1}},
            "execution": {"unit_size": 4},
            "output_dir": "runs",
        }
    )
    stages = {**toy_pipeline(10, corpus=False), "reviews": ninth_stage.STAGE}
    buf = io.StringIO()
    result = run_session(
        spec, base_dir=tmp_path, stages=stages, display=LogDisplay(buf), out=buf, print_summary=False
    )
    assert result.outcome.state == "succeeded", result.outcome.error
    stats = {s.stage: s for s in run_stats(result.run_dir).stages}
    assert stats["reviews"].rows == stats["planning"].rows == 10
    assert stats["reviews"].accepted == 10 and stats["reviews"].acceptance_rate == 1.0
    con = connect_run(result.run_dir)
    fingerprints = {fp for (fp,) in con.execute("select distinct prompt_fingerprint from reviews").fetchall()}
    assert fingerprints == {ninth_stage.STAGE.prompt_fingerprint}
