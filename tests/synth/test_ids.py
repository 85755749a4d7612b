"""Record ids are content hashes: identical across processes, sensitive to every input."""

from __future__ import annotations

import subprocess
import sys

from synth.ids import record_id

ARGS = ("planning", ["q1", "q2"], {"prompt": "v1", "temperature": 0.8}, {"text": "héllo", "n": 3})


def test_ids_are_identical_across_processes() -> None:
    code = (
        "from synth.ids import record_id;"
        f"print(record_id(*{ARGS!r}))"
    )
    # Different hash seeds: Python's salted hash() must play no part.
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONHASHSEED": seed}, check=True
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert outs == {record_id(*ARGS)}


def test_ids_change_with_stage_parents_params_and_content() -> None:
    base = record_id(*ARGS)
    assert record_id("reasoning", *ARGS[1:]) != base
    assert record_id(ARGS[0], ["q2", "q1"], *ARGS[2:]) != base
    assert record_id(ARGS[0], ARGS[1], {"prompt": "v2", "temperature": 0.8}, ARGS[3]) != base
    assert record_id(*ARGS[:3], {"text": "hello", "n": 3}) != base


def test_key_order_does_not_change_ids() -> None:
    assert record_id("s", [], {"a": 1, "b": 2}, {"x": 1, "y": 2}) == record_id("s", [], {"b": 2, "a": 1}, {"y": 2, "x": 1})
