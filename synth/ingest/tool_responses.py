"""The data flywheel: tool responses of agent trajectories become documents.

AgentFounder's open-world memory is fed by the agent's own trajectories and tool responses
as well as by documents: what a search returned or a visited page said is knowledge the
next round of synthesis can build on. With ``stages.documents.tool_responses`` set, the
documents stage also ingests, as ``source_type: tool_response`` documents:

* the tool responses of the run's imported trajectories (``inputs.trajectories``), and
* those of the rollouts of earlier runs (``runs``: run ids under ``output_dir``, or run
  directories) — the flywheel's next turn is a later run over the last one's trajectories.

One document per tool response of the chosen tools (``search``, ``visit`` by default:
``python`` output is a computation, not knowledge about the world). Its URL says where the
text came from: the visited page's URL, or ``search:<query>`` for a results page. Empty
and error responses are dropped with a reason, like any document; the documents stage's
size, prose and language filters apply as for web pages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from synth.ingest.inline import InlineDocument
from synth.records import Failure, RolloutRecord, TrajectoryStep

SEARCH_URL_PREFIX = "search:"
# The agent's own error replies (rollouts write "Error: ..." for a malformed call) and the
# released visit tool's "could not be accessed" pages are no knowledge.
_ERROR_PREFIXES = ("error:", "[visit] failed", "[search] failed")
_UNAVAILABLE_MARKERS = ("could not be accessed", "no results found for")


class ToolResponsesConfig(BaseModel):
    """Where the documents stage finds tool responses to ingest (the data flywheel)."""

    model_config = ConfigDict(extra="forbid")
    trajectories: bool = Field(True, description="ingest the tool responses of inputs.trajectories")
    runs: list[str] = Field(
        default_factory=list,
        description="earlier runs whose rollouts' tool responses are ingested: run ids under output_dir, "
        "or run directories",
    )
    tools: list[str] = Field(
        default_factory=lambda: ["search", "visit"], min_length=1, description="tools whose responses are kept"
    )


def _first(value: Any) -> str | None:
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str) and v.strip()), None)
    return value.strip() if isinstance(value, str) and value.strip() else None


def response_document(step: TrajectoryStep, ref: str, tools: Sequence[str]) -> InlineDocument | Failure | None:
    """A step's tool response as a document; a Failure when it holds no knowledge; None for
    steps that call no kept tool (answers, python)."""
    if step.action is None or step.action.tool not in tools:
        return None
    # A rollout keeps the raw page next to the goal-conditioned observation when it has one.
    text = (step.raw or step.observation or "").strip()
    low = text[:200].casefold()
    if not text or low.startswith(_ERROR_PREFIXES) or (
        len(text) < 400 and any(m in low for m in _UNAVAILABLE_MARKERS)
    ):
        return Failure(
            input_ids=[ref],
            error_kind="dropped_empty_tool_response",
            message=f"{ref}: the {step.action.tool} response is empty or an error",
        )
    args = step.action.arguments
    if step.action.tool == "visit":
        url = _first(args.get("url")) or f"visit:{ref}"
        title = _first(args.get("goal"))
    else:
        query = _first(args.get("query")) or ""
        url = f"{SEARCH_URL_PREFIX}{quote(query, safe='')}" if query else f"{step.action.tool}:{ref}"
        title = f"Search results for {query}" if query else None
    return InlineDocument(ref=ref, url=url, title=title, text=text, source_type="tool_response")


def documents_from_steps(
    steps: Iterable[TrajectoryStep], ref: str, tools: Sequence[str]
) -> tuple[list[InlineDocument], list[Failure]]:
    """Every kept tool response of one trajectory (refs ``<ref>/t<step>``)."""
    docs: list[InlineDocument] = []
    dropped: list[Failure] = []
    for k, step in enumerate(steps):
        result = response_document(step, f"{ref}/t{k}", tools)
        if isinstance(result, InlineDocument):
            docs.append(result)
        elif isinstance(result, Failure):
            dropped.append(result)
    return docs, dropped


def from_trajectory_files(
    paths: Sequence[Path], base_dir: Path | None, tools: Sequence[str]
) -> tuple[list[InlineDocument], list[Failure]]:
    """Tool responses of imported trajectories, in file and line order."""
    from synth.trajectories import TrajectoryFormatError, load_trajectory, scan_trajectory_files

    docs: list[InlineDocument] = []
    dropped: list[Failure] = []
    for ref in scan_trajectory_files(paths, base_dir):
        try:
            trajectory = load_trajectory(ref)
        except TrajectoryFormatError as err:
            dropped.append(Failure(input_ids=[ref.where], error_kind=err.kind, message=str(err)))
            continue
        d, f = documents_from_steps(trajectory.steps, ref.where, tools)
        docs.extend(d)
        dropped.extend(f)
    return docs, dropped


def resolve_run_dir(run: str, output_dir: Path) -> Path:
    """A run named in ``tool_responses.runs``: an existing run directory, else a run id under ``output_dir``."""
    from synth.layout import RunLayout

    as_path = Path(run)
    if ("/" in run or as_path.is_absolute()) and as_path.is_dir():
        return as_path
    return RunLayout.of(output_dir, run).root


def from_runs(
    runs: Sequence[str], output_dir: Path, tools: Sequence[str]
) -> tuple[list[InlineDocument], list[Failure]]:
    """Tool responses of the committed rollouts of earlier runs, by run, then rollout id."""
    from synth.shards import ShardStore

    docs: list[InlineDocument] = []
    dropped: list[Failure] = []
    for run in runs:
        run_dir = resolve_run_dir(run, output_dir)
        store = ShardStore(run_dir)
        if not store.committed_units("rollouts"):
            dropped.append(
                Failure(
                    input_ids=[run],
                    error_kind="no_rollouts",
                    message=f"stages.documents.tool_responses.runs: {run_dir} has no committed rollouts",
                )
            )
            continue
        rollouts = sorted(
            (r for r in store.read_records("rollouts") if isinstance(r, RolloutRecord)), key=lambda r: r.id
        )
        for rollout in rollouts:
            d, f = documents_from_steps(rollout.steps, f"{run_dir.name}/{rollout.id}", tools)
            docs.extend(d)
            dropped.extend(f)
    return docs, dropped
