"""``agentcpt export``: rollouts and decisions as OpenAI ``messages`` / ShareGPT that read back through
the project's own importers to the same steps, and a run folder ready for the Hub."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from agentcpt.cli import main
from synth.export import export_run, openai_messages, trajectory_turns
from synth.records import DecisionRecord, RolloutRecord, ToolAction, TrajectoryStep
from synth.render import tags
from synth.shards import ShardStore
from synth.trajectories import parse_trajectory

datasets.disable_progress_bars()


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def sharegpt_as_chatml(obj: dict) -> dict:
    """A ShareGPT line as the chat messages the ReAct importer reads."""
    roles = {"human": "user", "gpt": "assistant"}
    return {**obj, "messages": [{"role": roles[t["from"]], "content": t["value"]} for t in obj["conversations"]]}


def _steps(steps: list[TrajectoryStep]) -> list[tuple]:
    return [(s.thought, s.action, s.observation) for s in steps]


def test_a_cut_off_trajectory_keeps_its_unanswered_call_and_drops_only_the_trailing_thought() -> None:
    steps = [
        TrajectoryStep(thought="look", action=ToolAction(tool="search", arguments={"query": ["a"]}), observation="r"),
        TrajectoryStep(thought="again", action=ToolAction(tool="visit", arguments={"url": "u", "goal": "g"})),
        TrajectoryStep(thought="out of steps"),
    ]
    messages = openai_messages("Q?", trajectory_turns(steps, None))
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    back = parse_trajectory({"messages": messages})
    assert _steps(back.steps) == _steps(steps[:2]) and back.final_answer is None


@pytest.mark.slow
def test_messages_of_the_200_webdancer_trajectories_reimport_to_the_same_steps(
    webdancer_run: Path, tmp_path: Path
) -> None:
    records = {r.id: r for r in ShardStore(webdancer_run).read_records("rollouts")}
    assert len(records) == 200
    result = export_run(webdancer_run, tmp_path / "out", "messages")
    assert result.files == {"rollouts.jsonl": 200}
    exported = lines(tmp_path / "out" / "rollouts.jsonl")
    calls = 0
    for obj in exported:
        record = records[obj["id"]]
        assert isinstance(record, RolloutRecord)
        for m in obj["messages"]:
            for call in m.get("tool_calls") or []:
                json.loads(call["function"]["arguments"])  # arguments are a JSON string, as OpenAI sends them
                calls += 1
        used = {c["function"]["name"] for m in obj["messages"] for c in m.get("tool_calls") or []}
        assert {t["function"]["name"] for t in obj["tools"]} == used
        back = parse_trajectory(obj)
        assert back.format == "openai_tools"
        assert len(back.steps) == len(record.steps)
        assert [s.action for s in back.steps] == [s.action for s in record.steps]
        assert _steps(back.steps) == _steps(record.steps)
        assert (back.question, back.final_answer) == (record.question, record.final_answer)
    assert calls == sum(1 for r in records.values() for s in r.steps if s.action is not None) > 200


@pytest.mark.slow
def test_sharegpt_of_the_200_webdancer_trajectories_reimports_to_the_same_steps(
    webdancer_run: Path, tmp_path: Path
) -> None:
    records = {r.id: r for r in ShardStore(webdancer_run).read_records("rollouts")}
    export_run(webdancer_run, tmp_path / "out", "sharegpt")
    exported = lines(tmp_path / "out" / "rollouts.jsonl")
    assert len(exported) == 200
    for obj in exported:
        turns = obj["conversations"]
        assert turns[0]["from"] == "human" and turns[-1]["from"] == "gpt"
        assert all(a["from"] != b["from"] for a, b in zip(turns, turns[1:], strict=False))  # alternating
        back = parse_trajectory(sharegpt_as_chatml(obj))
        assert back.format == "react_chatml"
        record = records[obj["id"]]
        assert _steps(back.steps) == _steps(record.steps)  # type: ignore[attr-defined]
        assert back.final_answer == record.final_answer  # type: ignore[attr-defined]


@pytest.mark.slow
def test_decisions_export_as_the_trajectory_with_each_choice_deliberated(full_run: Path, tmp_path: Path) -> None:
    store = ShardStore(full_run)
    decisions = {r.id: r for r in store.read_records("decisions")}
    rollouts = {r.id: r for r in store.read_records("rollouts")}
    result = export_run(full_run, tmp_path / "out", "messages")
    assert result.files == {"rollouts.jsonl": len(rollouts), "decisions.jsonl": len(decisions)}
    for obj in lines(tmp_path / "out" / "decisions.jsonl"):
        record = decisions[obj["id"]]
        assert isinstance(record, DecisionRecord)
        back = parse_trajectory(obj)
        assert back.question == rollouts[record.trajectory_id].question  # type: ignore[attr-defined]
        assert back.label == (record.outcome if record.outcome != "unknown" else None)
        assert len(back.steps) == len(record.steps)
        for step, got in zip(record.steps, back.steps, strict=True):
            chosen = step.options[step.chosen]
            calls = tags.find_tool_calls(chosen)
            assert got.action == (tags.parse_tool_call(calls[0]) if calls else None)
            assert got.observation == step.observation
            assert f"I will choose option {step.chosen + 1}." in got.thought
            assert got.thought.count("Option ") == len(step.options)


@pytest.mark.slow
def test_hf_export_is_a_folder_datasets_loads_offline(
    full_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    out = tmp_path / "hub"
    assert main(["export", full_run.name, "--to", str(out), "--format", "hf", "--output-dir", str(full_run.parent)]) == 0
    store = ShardStore(full_run)
    copied = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert copied == sorted(r.path for r in store.manifest_rows() if r.rows > 0)
    rollouts = datasets.load_dataset(str(out), "rollouts", split="train")
    assert rollouts.num_rows == len(store.read_records("rollouts"))
    assert datasets.load_dataset(str(out), "corpus", split="train").num_rows > 0
    stale = out / "shards" / "rollouts" / "part-99999.parquet"  # left by an earlier export
    stale.write_bytes((out / copied[0]).read_bytes())
    export_run(full_run, out, "hf")
    assert not stale.exists()


@pytest.mark.slow
def test_cli_export_writes_jsonl_and_push_without_a_token_is_a_usage_error(
    full_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["export", full_run.name, "--output-dir", str(full_run.parent), "--to", str(tmp_path / "chat")]
    assert main([*args, "--format", "sharegpt"]) == 0
    assert "rollouts.jsonl:" in capsys.readouterr().out
    assert lines(tmp_path / "chat" / "decisions.jsonl")[0]["conversations"][0]["from"] == "human"
    # --push asks the Hub only with a token; without one it stops before any upload.
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main([*args, "--format", "hf", "--push", "someone/data"]) == 2
    assert "needs a Hugging Face token" in capsys.readouterr().err


def test_an_unknown_run_a_bad_format_or_a_folder_inside_the_run_is_bad_input(tmp_path: Path) -> None:
    assert main(["export", "nope", "--to", str(tmp_path / "x"), "--format", "messages", "--output-dir", str(tmp_path)]) == 2
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "spec.yaml").write_text("name: r1\n", encoding="utf-8")
    inside = str(tmp_path / "r1" / "hub")
    assert main(["export", "r1", "--to", inside, "--format", "hf", "--output-dir", str(tmp_path)]) == 2
    assert not (tmp_path / "r1" / "hub").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "nope", "--to", str(tmp_path / "x"), "--format", "alpaca"])
    assert exit_info.value.code == 2
