"""A stand-in for ``agentcpt run`` that follows the driver's on-disk contract.

API unit tests launch this through ``LocalProcessLauncher(command=...)`` so that they
exercise process launch, reconciliation, cancel and resume in well under a second, without
Ray or an LLM. The real driver is exercised by the end-to-end tests.

    python fake_driver.py SPEC RUN_ID MODE

MODE: ``succeed`` (commit one documents unit + a planning unit, then succeed),
``wait`` (run until the CANCEL marker appears, then stop as cancelled), ``slow-start``
(``wait`` after a second of still being queued), ``crash`` (die
with exit code 3 and no final state), ``crash-once`` (crash on attempt 1, succeed after).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from synth.ids import record_id
from synth.llm.accounting import UsageTracker
from synth.records import DocumentRecord, Failure, PlanningRecord, ToolAction
from synth.runstate import LLMUsage, RunDir, RunProgress, StageProgress
from synth.shards import ShardStore


def _commit_units(run_dir: Path, run_id: str) -> None:
    store = ShardStore(run_dir)
    docs = [
        DocumentRecord(
            id=record_id("documents", [], {}, f"doc {i}"),
            run_id=run_id,
            url=f"https://example.org/{i}",
            title=f"Page {i}",
            text=f"Document number {i} about <b>tags</b> & entities.",
            n_chars=40,
        )
        for i in range(7)
    ]
    if not store.is_committed("documents", "00000"):
        store.write_unit(
            "documents",
            "00000",
            docs[:4],
            [Failure(input_ids=["x"], error_kind="dropped_too_short", message="short")],
            run_id=run_id,
        )
    if not store.is_committed("documents", "00001"):
        store.write_unit("documents", "00001", docs[4:], run_id=run_id)
    plans = [
        PlanningRecord(
            id=record_id("planning", [docs[i].id], {}, f"plan {i}"),
            run_id=run_id,
            question_id=docs[i].id,
            analysis="Look it up.",
            action=ToolAction(tool="search", arguments={"query": f"q{i}"}),
            accepted=i % 2 == 0,
            reason="accepted" if i % 2 == 0 else "logic_discontinuity",
            text=f'<think>plan {i}</think>\n<tool_call>{{"name": "search"}}</tool_call>',
        )
        for i in range(4)
    ]
    if not store.is_committed("planning", "00000"):
        store.write_unit("planning", "00000", plans, run_id=run_id)


# Latencies of the fake planning stage's 8 LLM attempts, as two workers would record them:
# the driver merges their histograms, as pipelines.progress does.
PLANNING_LATENCIES_S = ((0.12, 0.12, 0.12, 0.12), (0.45, 0.45, 0.45, 0.45))


def planning_usage() -> LLMUsage:
    """8 requests, 1200 prompt + 300 completion tokens, latency from two workers' trackers."""
    merged = UsageTracker()
    for worker_latencies in PLANNING_LATENCIES_S:
        tracker = UsageTracker()
        for latency_s in worker_latencies:
            tracker.record_attempt("planning", ok=True, latency_s=latency_s, prompt_tokens=150)
        merged.merge(tracker.snapshot())
    usage = merged.usage("planning")
    return usage.model_copy(update={"completion_tokens": 300})


def _progress(rd: RunDir, done: bool) -> None:
    rd.write_progress(
        RunProgress(
            stages={
                "documents": StageProgress(units_done=2, units_total=2, records=7, failed=1),
                "planning": StageProgress(
                    units_done=1 if done else 0,
                    units_total=1,
                    records=4 if done else 0,
                    llm=planning_usage(),
                ),
            }
        )
    )


def main(spec_path: str, run_id: str, mode: str) -> int:
    run_dir = Path(spec_path).parent
    assert run_dir.name == run_id, (run_dir, run_id)
    rd = RunDir(run_dir)
    attempt_file = run_dir / "fake-attempts"
    attempt = int(attempt_file.read_text()) + 1 if attempt_file.exists() else 1
    attempt_file.write_text(str(attempt))
    if mode == "slow-start":
        time.sleep(1.0)  # still queued: a cancel sent now lands before the driver starts
    rd.clear_cancel()  # as the real driver does when a session starts
    rd.mark("running")
    _progress(rd, done=False)
    if mode == "crash" or (mode == "crash-once" and attempt == 1):
        print("fake driver: something broke", file=sys.stderr, flush=True)
        return 3
    if mode in ("wait", "slow-start"):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if rd.cancel_requested():
                rd.mark("cancelled")
                return 1
            time.sleep(0.05)
        rd.mark("failed", error="fake driver: never cancelled")
        return 1
    _commit_units(run_dir, run_id)
    _progress(rd, done=True)
    rd.mark("succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
