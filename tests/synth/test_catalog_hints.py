"""``agentcpt stats`` tells what to do: which cap to raise, which views there are."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from synth.catalog import print_stats, truncation_hints
from synth.records import Failure
from synth.shards import ShardStore

REPO = Path(__file__).resolve().parents[2]
CUT = "reply cut by the {}-token cap (finish_reason: length)"


def make_run(root: Path) -> Path:
    run = root / "runs" / "cut-1"
    run.mkdir(parents=True)
    spec = {"name": "cut", "llm": {"max_tokens": 96}, "stages": {"memory": {}, "planning": {"judge_max_tokens": 48}}}
    (run / "spec.yaml").write_text(yaml.safe_dump(spec))
    store = ShardStore(run)
    store.write_unit("memory", "00000", [], [
        Failure(input_ids=[f"c{i}"], error_kind="truncated", message=CUT.format(96), raw_output='{"statements": ["a') for i in range(3)
    ] + [Failure(input_ids=["c9"], error_kind="invalid_output", message="no JSON object in the reply")], run_id="cut-1")  # fmt: skip
    store.write_unit("planning", "00000", [], [
        Failure(input_ids=["q1"], error_kind="truncated", message=CUT.format(48))
    ], run_id="cut-1")  # fmt: skip
    return run


def test_stats_name_the_setting_that_cut_each_stages_replies(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    memory, planning = truncation_hints(run)
    # The memory call's cap is the endpoint's; the advice starts with the setting that raises it.
    assert memory.startswith(
        "memory: 3 replies cut by the token cap (truncated): set stages.memory.max_tokens (now llm.max_tokens = 96)"
    )
    assert planning == "planning: 1 replies cut by the token cap (truncated): raise stages.planning.judge_max_tokens (now 48)"
    out = tmp_path / "stats.txt"
    with open(out, "w") as fh:
        print_stats(run, file=fh)
    assert "set stages.memory.max_tokens" in out.read_text()


def test_a_query_on_an_unknown_view_lists_the_views(tmp_path: Path) -> None:
    make_run(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "agentcpt.cli", "stats", "cut-1", "--output-dir", str(tmp_path / "runs"),
         "--sql", "select * from memory_failures"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "; the views are: " in proc.stderr
    views = proc.stderr.split("; the views are: ")[1].strip().split(", ")
    assert {"memory", "memory_failed", "planning_failed", "corpus", "manifest"} <= set(views)
