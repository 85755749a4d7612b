"""``agentcpt export RUN --to DIR --format messages|sharegpt|hf [--push REPO]``: a run's data in the
formats SFT and the Hub expect.

* ``messages`` — one JSON object a line per rollout and per decision record (``rollouts.jsonl``,
  ``decisions.jsonl``): OpenAI chat ``messages`` (a user question, assistant turns with
  ``tool_calls`` answered by ``tool`` messages, a final assistant answer) plus the
  ``tools`` the trajectory uses as OpenAI function schemas. Reasoning sits in
  ``<think>…</think>`` at the start of an assistant turn and the final answer in
  ``<answer>…</answer>``, the Tongyi DeepResearch dialect the corpus uses. The file reads
  back through ``synth.trajectories`` (the ``openai_tools`` importer) to the same steps.
  A decision record becomes the trajectory it was built from, each assistant turn
  deliberating over the step's N+1 options before it makes the chosen (original) call.
* ``sharegpt`` — the same conversations as ``{"conversations": [{"from", "value"}]}``: ``gpt``
  turns hold the ReAct tags (``<think>``, ``<tool_call>``, ``<answer>``), tool responses come
  back in ``human`` turns as ``<tool_response>`` (how WebDancer's own SFT data is written; it
  reads back through the ``react_chatml`` importer).
* ``hf`` — the run's committed Parquet files (``shards/``, ``failed/``) and its dataset card
  (``synth.card``): a folder ``datasets.load_dataset(DIR, "<stage>")`` reads and
  ``huggingface-cli upload REPO DIR --repo-type dataset`` publishes.

``--push REPO`` uploads DIR to the Hub dataset repo REPO with ``huggingface_hub`` (creating it
private if missing); it needs a token (``HF_TOKEN`` or ``huggingface-cli login``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from synth.card import render_card
from synth.catalog import run_dir_for
from synth.errors import UsageError
from synth.layout import RunLayout
from synth.records import DecisionRecord, RolloutRecord, ToolAction, TrajectoryStep, table_to_records
from synth.render import tags
from synth.render.traces import step_answer
from synth.shards import ShardStore, atomic_write_bytes
from synth.toolset import TOOL_DESCRIPTIONS, TOOLS

ExportFormat = Literal["messages", "sharegpt", "hf"]
FORMATS: tuple[str, ...] = ("messages", "sharegpt", "hf")
CHAT_STAGES = ("rollouts", "decisions")


class ExportResult(BaseModel):
    """What an export wrote: files (relative to the export folder) and rows per file."""

    to: str
    format: str
    files: dict[str, int]
    pushed_to: str | None = None


# ---------------------------------------------------------------------------
# Turns: one neutral form, two dialects
# ---------------------------------------------------------------------------


class Turn(BaseModel):
    """One assistant turn: its reasoning, and a tool call (with what came back) or an answer."""

    thought: str = ""
    action: ToolAction | None = None
    observation: str | None = None
    answer: str | None = None


def trajectory_turns(steps: list[TrajectoryStep], final_answer: str | None) -> list[Turn]:
    """A rollout's steps as turns. A last step with neither a call nor an answer (a cut-off
    trajectory's trailing thought) is left out: no chat format can hold it as a turn."""
    turns = []
    for k, step in enumerate(steps):
        answer = step_answer(steps, k, final_answer)
        if step.action is None and answer is None:
            continue
        turns.append(Turn(thought=step.thought, action=step.action, observation=step.observation, answer=answer))
    return turns


def _option_line(n: int, option: str) -> str:
    """An option as one plain line (its own tags would nest inside the turn's ``<think>``)."""
    thoughts = tags.find_thoughts(option)
    calls = tags.find_tool_calls(option)
    answers = tags.find_answers(option)
    thought = " ".join(" ".join(t.split()) for t in thoughts)
    if calls:
        try:
            action = tags.parse_tool_call(calls[0])
            act = f"call {action.tool} {json.dumps(action.arguments, ensure_ascii=False)}"
        except ValueError:
            act = f"call {calls[0]}"
    elif answers:
        act = f"answer {answers[0]!r}"
    else:
        act = "no action"
    return f"Option {n}: {thought + ' → ' if thought else ''}{act}"


def decision_turns(record: DecisionRecord) -> list[Turn]:
    """A decision record as turns: each deliberates over the options, then takes the chosen one."""
    turns = []
    for k, step in enumerate(record.steps, 1):
        chosen = step.options[step.chosen]
        lines = [f"Step {k}. The candidate next actions are:"]
        lines += [_option_line(n, o) for n, o in enumerate(step.options, 1)]
        lines.append(f"I will choose option {step.chosen + 1}.")
        calls, answers = tags.find_tool_calls(chosen), tags.find_answers(chosen)
        action = tags.parse_tool_call(calls[0]) if calls else None
        answer = answers[-1] if answers and action is None else None
        turns.append(Turn(thought="\n".join(lines), action=action, observation=step.observation, answer=answer))
    return turns


def tool_schemas(turns: list[Turn]) -> list[dict[str, Any]]:
    """OpenAI function schemas of the tools the turns call, in first-use order."""
    out: list[dict[str, Any]] = []
    for name in dict.fromkeys(t.action.tool for t in turns if t.action is not None):
        model = TOOLS.get(name)
        parameters = model.model_json_schema() if model is not None else {"type": "object"}
        parameters.pop("title", None)
        description = TOOL_DESCRIPTIONS.get(name, f"the {name} tool").split(". Arguments:")[0]
        out.append({"type": "function", "function": {"name": name, "description": description, "parameters": parameters}})
    return out


def openai_messages(question: str, turns: list[Turn]) -> list[dict[str, Any]]:
    """OpenAI chat messages: user question; assistant ``tool_calls`` + ``tool`` replies; final answer."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    for i, turn in enumerate(turns):
        think = tags.think(turn.thought) if turn.thought.strip() else ""
        if turn.action is not None:
            call_id = f"call_{i}"
            messages.append(
                {
                    "role": "assistant",
                    "content": think or None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {
                                "name": turn.action.tool,
                                "arguments": json.dumps(turn.action.arguments, ensure_ascii=False),
                            },
                        }
                    ],
                }
            )
            # An unanswered call (a cut-off trajectory) has no tool message: nothing came back.
            if turn.observation is not None:
                messages.append(
                    {"role": "tool", "tool_call_id": call_id, "name": turn.action.tool, "content": turn.observation}
                )
        elif turn.answer is not None:
            messages.append({"role": "assistant", "content": "\n".join(p for p in (think, tags.answer(turn.answer)) if p)})
    return messages


def sharegpt_conversation(question: str, turns: list[Turn]) -> list[dict[str, str]]:
    """ShareGPT turns in the ReAct dialect: ``gpt`` acts with tags, ``human`` brings tool responses."""
    conversation = [{"from": "human", "value": question}]
    for turn in turns:
        parts = [tags.think(turn.thought)] if turn.thought.strip() else []
        if turn.action is not None:
            parts.append(tags.tool_call(turn.action))
        elif turn.answer is not None:
            parts.append(tags.answer(turn.answer))
        conversation.append({"from": "gpt", "value": "\n".join(parts)})
        if turn.action is not None and turn.observation is not None:
            conversation.append({"from": "human", "value": tags.tool_response(turn.observation)})
    return conversation


# ---------------------------------------------------------------------------
# Records → lines
# ---------------------------------------------------------------------------


def _line(fmt: ExportFormat, question: str, turns: list[Turn], meta: dict[str, Any]) -> dict[str, Any]:
    if fmt == "messages":
        return {**meta, "messages": openai_messages(question, turns), "tools": tool_schemas(turns)}
    return {
        **meta,
        "conversations": sharegpt_conversation(question, turns),
        "tools": json.dumps(tool_schemas(turns), ensure_ascii=False),
    }


def rollout_line(record: RolloutRecord, fmt: ExportFormat) -> dict[str, Any]:
    """One export line of a rollout record (``outcome`` and ``gold_answer`` are what the importer reads back)."""
    meta = {
        "id": record.id,
        "run_id": record.run_id,
        "stage": "rollouts",
        "question_id": record.question_id,
        "source": record.source,
        "outcome": record.outcome,
        "gold_answer": record.gold_answer,
    }
    return _line(fmt, record.question, trajectory_turns(record.steps, record.final_answer), meta)


def decision_line(record: DecisionRecord, question: str, fmt: ExportFormat) -> dict[str, Any]:
    meta = {
        "id": record.id,
        "run_id": record.run_id,
        "stage": "decisions",
        "trajectory_id": record.trajectory_id,
        "outcome": record.outcome,
    }
    return _line(fmt, question, decision_turns(record), meta)


def _records(store: ShardStore, stage: str, record_type: type) -> Iterator[Any]:
    """A stage's records, one committed file at a time (a large stage never sits in memory whole)."""
    import pyarrow.parquet as pq

    schema = record_type.arrow_schema()
    for path in store.files(stage):
        yield from table_to_records(pq.read_table(path, schema=schema), record_type)


def _questions_by_rollout(store: ShardStore) -> dict[str, str]:
    import pyarrow.parquet as pq

    out: dict[str, str] = {}
    for path in store.files("rollouts"):
        table = pq.read_table(path, columns=["id", "question"])
        out.update(zip(table.column("id").to_pylist(), table.column("question").to_pylist(), strict=True))
    return out


def _question_from_text(text: str) -> str:
    """The question of a decision text (``Question: …`` opens it; see ``render_decisions``)."""
    first = text.split("\n\nStep 1.", 1)[0]
    return first.removeprefix("Question:").strip()


def export_chat(layout: RunLayout, to: Path, fmt: ExportFormat) -> dict[str, int]:
    """``rollouts.jsonl`` and ``decisions.jsonl`` (for stages with records) in ``to``; rows per file."""
    store = ShardStore(layout.root)
    written: dict[str, int] = {}
    questions: dict[str, str] | None = None
    for stage in CHAT_STAGES:
        if not store.files(stage):
            continue
        path = to / f"{stage}.jsonl"
        tmp = path.with_name(f".{path.name}.tmp")
        n = 0
        with open(tmp, "w", encoding="utf-8") as f:
            if stage == "rollouts":
                for record in _records(store, stage, RolloutRecord):
                    f.write(json.dumps(rollout_line(record, fmt), ensure_ascii=False) + "\n")
                    n += 1
            else:
                questions = questions if questions is not None else _questions_by_rollout(store)
                for record in _records(store, stage, DecisionRecord):
                    question = questions.get(record.trajectory_id) or _question_from_text(record.text)
                    f.write(json.dumps(decision_line(record, question, fmt), ensure_ascii=False) + "\n")
                    n += 1
        tmp.replace(path)
        written[path.name] = n
    return written


def export_hf(layout: RunLayout, to: Path) -> dict[str, int]:
    """The committed, non-empty Parquet files under their run-relative paths, and the card.

    Parquet files under ``to/shards`` and ``to/failed`` that this export did not write (an
    earlier export's) are removed: the card's globs would read them as part of this run."""
    store = ShardStore(layout.root)
    written: dict[str, int] = {}
    for row in store.manifest_rows():
        if row.rows == 0:
            continue  # nothing to load, and a file without row groups only costs the viewer a read
        source = store.verified_path(row)
        target = to / row.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written[row.path] = row.rows
    for folder in ("shards", "failed"):
        for stale in (to / folder).rglob("*.parquet"):
            if stale.relative_to(to).as_posix() not in written:
                stale.unlink()
    # The card describes the run's committed files, which are exactly what was copied.
    atomic_write_bytes(to / "README.md", render_card(layout).encode("utf-8"))
    written["README.md"] = 0
    return written


def push_to_hub(folder: Path, repo: str) -> str:
    """Upload ``folder`` to the Hub dataset repo ``repo``; needs a token. Returns the repo URL."""
    from huggingface_hub import HfApi, get_token

    if not get_token():
        raise UsageError("--push needs a Hugging Face token: set HF_TOKEN or run `huggingface-cli login`")
    api = HfApi()
    url = api.create_repo(repo, repo_type="dataset", private=True, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="dataset")
    return str(url)


def export_run(run_dir: Path, to: Path, fmt: ExportFormat, push: str | None = None) -> ExportResult:
    """Export the run in ``run_dir`` to ``to`` (created; files of the same names are replaced)."""
    layout = RunLayout(run_dir)
    if not layout.is_run():
        raise UsageError(f"{run_dir} is not a run directory")
    root, target = run_dir.resolve(), to.resolve()
    if target == root or root in target.parents:
        raise UsageError(f"--to: {to} is inside the run directory; export to a folder of its own")
    to.mkdir(parents=True, exist_ok=True)
    files = export_hf(layout, to) if fmt == "hf" else export_chat(layout, to, fmt)
    pushed = push_to_hub(to, push) if push else None
    return ExportResult(to=str(to), format=fmt, files=files, pushed_to=pushed)


def export_command(run_id: str, to: str, format: str, push: str | None = None, output_dir: str = "runs") -> int:
    """The ``agentcpt export`` entry point; prints what it wrote."""
    if format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    result = export_run(run_dir_for(run_id, output_dir), Path(to), format, push)  # type: ignore[arg-type]
    if not result.files:
        print(f"run {run_id} has no rollouts or decisions records: nothing to export as {format}")
    for name, rows in result.files.items():
        if name.endswith(".jsonl"):
            print(f"{Path(result.to) / name}: {rows} lines")
    if format == "hf":
        parquet = [n for n in result.files if n.endswith(".parquet")]
        print(f"{result.to}: README.md and {len(parquet)} Parquet files; publish with "
              f"`huggingface-cli upload <repo> {result.to} --repo-type dataset` or --push <repo>")  # fmt: skip
    if result.pushed_to:
        print(f"pushed to {result.pushed_to}")
    return 0
