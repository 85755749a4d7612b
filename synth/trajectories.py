"""Import of agent trajectories from JSONL, in the two formats agents write (DESIGN §5 inputs.trajectories).

* ``react_chatml`` — the Tongyi DeepResearch / WebDancer format: chat messages whose text
  holds ``<think>``, ``<tool_call>{…}</tool_call>`` and ``<answer>`` (assistant) and
  ``<tool_response>`` (user turns). The tool list may sit in the first user message before
  ``User: <question>``, as in WebDancer's sample trajectories.
* ``openai_tools`` — OpenAI chat messages: assistant messages with ``tool_calls``
  (``function.arguments`` a JSON string), answered by ``role: "tool"`` messages.

Each non-blank line is one work item (``TrajectoryRef``: file, line number, byte range and
hash), so a unit re-reads only its own lines and a resumed run notices a file that changed.
A line that cannot be imported raises ``TrajectoryFormatError`` whose message starts with
``file:line``; the stage turns it into a failed-ledger row and the other lines still run.
Lines are bounded (``synth.ingest.limits``): one over ``MAX_LINE_BYTES`` is listed but never
read (kind ``too_large``), and JSON nested too deep or with a huge number is refused.

Steps: one ``TrajectoryStep`` per tool call (with the tool response that answered it), plus
a last step without an action when the trajectory ends with an answer. Assistant text that
neither calls a tool nor answers is reasoning: it joins the next step's thought.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from synth.ingest.limits import MAX_LINE_BYTES, InputLimitError, iter_lines, loads_bounded, too_large
from synth.records import Outcome, ToolAction, TrajectoryStep
from synth.render import tags

TrajectoryFormat = Literal["react_chatml", "openai_tools"]

_TOOL_RESPONSE_RE = re.compile(r"<tool_response>\s*(.*?)\s*</tool_response>", re.S)
_USER_MARKER_RE = re.compile(r"(?:^|\n)\s*User:\s*")
_TAG_START_RE = re.compile(r"<(?:tool_call|answer)>")


class TrajectoryFormatError(ValueError):
    """A trajectory line that cannot be imported; the message says where and what, ``kind`` the ledger kind."""

    def __init__(self, message: str, kind: str = "invalid_trajectory") -> None:
        super().__init__(message)
        self.kind = kind


class TrajectoryRef(BaseModel):
    """One line of a trajectory file: a work item of the rollouts stage."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["trajectory"] = "trajectory"
    path: str = Field(description="absolute path of the JSONL file")
    display: str = Field(
        description="the file as messages name it (relative to the spec's base dir when possible)"
    )
    line_no: int = Field(description="1-based line number")
    offset: int = Field(description="byte offset of the line")
    length: int = Field(description="byte length of the line, newline included")
    sha256: str = Field(description="hash of the line's bytes, checked when it is read again")

    @property
    def where(self) -> str:
        return f"{self.display}:{self.line_no}"


class ImportedTrajectory(BaseModel):
    """A trajectory in the record's terms, before it becomes a RolloutRecord."""

    model_config = ConfigDict(extra="forbid")
    format: TrajectoryFormat
    question: str
    gold_answers: list[str] = Field(
        default_factory=list, description="acceptable answers, if the line has any"
    )
    steps: list[TrajectoryStep]
    final_answer: str | None = None
    label: Outcome | None = Field(
        None, description="outcome given by the file itself (outcome/correct/is_correct/label)"
    )


# ---------------------------------------------------------------------------
# Files → refs → lines
# ---------------------------------------------------------------------------


def _display_name(path: Path, base_dir: Path | None) -> str:
    if base_dir is not None:
        try:
            return str(path.resolve().relative_to(Path(base_dir).resolve()))
        except ValueError:
            pass
    return str(path)


def scan_trajectory_files(paths: Iterable[Path], base_dir: Path | None = None) -> list[TrajectoryRef]:
    """One ref per non-blank line of each file, in file then line order (deterministic)."""
    refs: list[TrajectoryRef] = []
    for path in paths:
        display = _display_name(path, base_dir)
        with open(path, "rb") as f:
            # A line over the limit is still listed (hashed as it streams past), so the
            # stage gives it its own ledger row when it comes to read it.
            for line in iter_lines(f, MAX_LINE_BYTES):
                if not line.blank:
                    refs.append(
                        TrajectoryRef(
                            path=str(Path(path).resolve()),
                            display=display,
                            line_no=line.number,
                            offset=line.offset,
                            length=line.length,
                            sha256=line.sha256[:32],
                        )
                    )
    return refs


def read_trajectory_line(ref: TrajectoryRef) -> str:
    """The text of the line ``ref`` points to; raises TrajectoryFormatError if it changed, is too large
    or is not UTF-8."""
    if ref.length > MAX_LINE_BYTES:
        raise TrajectoryFormatError(
            f"{ref.where}: {too_large('the line', ref.length, MAX_LINE_BYTES)}", "too_large"
        )
    try:
        with open(ref.path, "rb") as f:
            f.seek(ref.offset)
            raw = f.read(ref.length)
    except OSError as err:
        raise TrajectoryFormatError(f"{ref.where}: cannot read the file: {err.strerror}") from None
    if hashlib.sha256(raw).hexdigest()[:32] != ref.sha256:
        raise TrajectoryFormatError(f"{ref.where}: the file changed since the run listed its lines")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TrajectoryFormatError(f"{ref.where}: not UTF-8 (byte {err.start})") from None


def load_trajectory(ref: TrajectoryRef) -> ImportedTrajectory:
    """Read and parse one line; every error message starts with ``file:line``."""
    text = read_trajectory_line(ref)
    try:
        obj = loads_bounded(text)
    except InputLimitError as err:
        raise TrajectoryFormatError(f"{ref.where}: {err}") from None
    try:
        return parse_trajectory(obj)
    except TrajectoryFormatError as err:
        raise TrajectoryFormatError(f"{ref.where}: {err}") from None


# ---------------------------------------------------------------------------
# One JSON object → ImportedTrajectory
# ---------------------------------------------------------------------------


def _text(content: Any, where: str) -> str:
    """Message content as text: a string, null, or a list of {"type": "text", "text": …} parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    raise TrajectoryFormatError(f"{where}: content must be text or a list of text parts")


def _messages(obj: Any) -> list[dict[str, Any]]:
    if not isinstance(obj, dict):
        raise TrajectoryFormatError("a trajectory line must be a JSON object")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise TrajectoryFormatError('no "messages" list')
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise TrajectoryFormatError(f'messages[{i}] is not an object with a "role"')
    return messages


def detect_format(messages: list[dict[str, Any]]) -> TrajectoryFormat:
    """openai_tools when any message has ``tool_calls`` or role ``tool``; react_chatml when tags are present."""
    if any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        return "openai_tools"
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and _TAG_START_RE.search(_text(m.get("content"), f"messages[{i}]")):
            return "react_chatml"
    raise TrajectoryFormatError(
        "neither format: no assistant message has <tool_call>/<answer> tags (ReAct chatml) "
        "or tool_calls (OpenAI)"
    )


def _flatten_answers(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, bool):
        return [str(value).lower()]
    if isinstance(value, int | float):
        return [str(value)]
    if isinstance(value, list):
        out: list[str] = []
        for v in value:
            out.extend(a for a in _flatten_answers(v) if a not in out)
        return out
    return []


def gold_answers(obj: dict[str, Any]) -> list[str]:
    """Acceptable answers from ``answer`` / ``gold_answer`` / ``gold`` / ``ground_truth`` (str or nested lists)."""
    for key in ("gold_answer", "answer", "gold", "ground_truth"):
        found = _flatten_answers(obj.get(key))
        if found:
            return found
    return []


def import_label(obj: dict[str, Any]) -> Outcome | None:
    """An outcome the file states: ``outcome``, or ``correct``/``is_correct`` booleans, or ``label``."""
    outcome = obj.get("outcome", obj.get("label"))
    if isinstance(outcome, str) and outcome.strip().lower() in ("correct", "incorrect"):
        return outcome.strip().lower()  # type: ignore[return-value]
    for key in ("correct", "is_correct"):
        if isinstance(obj.get(key), bool):
            return "correct" if obj[key] else "incorrect"
    return None


def question_from_user_text(text: str) -> str:
    """The question of a first user message, without a tool-list preamble (``<tools>…</tools> … User: Q``)."""
    if "</tools>" in text:
        text = text.rsplit("</tools>", 1)[1]
        markers = list(_USER_MARKER_RE.finditer(text))
        if markers:
            text = text[markers[-1].end() :]
    return text.strip()


def _thought(text: str) -> str:
    """Reasoning of an assistant turn: its <think> blocks, else the text before its first tool call/answer."""
    thoughts = tags.find_thoughts(text)
    if thoughts:
        return "\n\n".join(t.strip() for t in thoughts)
    return _TAG_START_RE.split(text, 1)[0].strip()


def _question(obj: dict[str, Any], messages: list[dict[str, Any]]) -> tuple[str, int]:
    """The question and the index of the message after it."""
    for i, m in enumerate(messages):
        if m["role"] == "user":
            question = obj.get("question") if isinstance(obj.get("question"), str) else None
            question = question or question_from_user_text(_text(m.get("content"), f"messages[{i}]"))
            if not question:
                raise TrajectoryFormatError(f"messages[{i}]: the first user message has no question")
            return question, i + 1
    raise TrajectoryFormatError("no user message (the question)")


def _parse_action(payload: Any, where: str) -> ToolAction:
    try:
        return tags.parse_tool_call(payload if isinstance(payload, str) else json.dumps(payload))
    except ValueError as err:  # includes CPython's cap on integer digits
        raise TrajectoryFormatError(f"{where}: {err}") from None
    except RecursionError:
        # The payload is a string inside the line, parsed again here: bound it the same way.
        raise TrajectoryFormatError(f"{where}: tool call nested too deep to parse") from None


class _StepBuilder:
    """Accumulates steps; tool responses fill the oldest steps still waiting for one."""

    def __init__(self) -> None:
        self.steps: list[TrajectoryStep] = []
        self.waiting: list[int] = []
        self.pending_thought: list[str] = []
        self.final_answer: str | None = None

    def thought(self, text: str) -> str:
        joined = "\n\n".join([*self.pending_thought, text] if text else self.pending_thought)
        self.pending_thought = []
        return joined

    def hold(self, thought: str) -> None:
        """Reasoning of a turn that neither calls nor answers: it opens the next step's thought."""
        self.pending_thought = [self.thought(thought)]

    def call(self, thought: str, action: ToolAction) -> int:
        self.steps.append(TrajectoryStep(thought=thought, action=action))
        self.waiting.append(len(self.steps) - 1)
        return len(self.steps) - 1

    def respond(self, index: int, observation: str) -> None:
        self.steps[index].observation = observation
        if index in self.waiting:
            self.waiting.remove(index)

    def answer(self, thought: str, answer: str) -> None:
        self.steps.append(TrajectoryStep(thought=thought))
        self.final_answer = answer

    def finish(self) -> list[TrajectoryStep]:
        if self.pending_thought and self.final_answer is None:
            # Reasoning after the last tool call, with no answer: the trajectory was cut off.
            self.steps.append(TrajectoryStep(thought=self.thought("")))
        return self.steps


def _check_open(builder: _StepBuilder, where: str) -> None:
    if builder.final_answer is not None:
        raise TrajectoryFormatError(f"{where}: a message follows the final answer")


def parse_react_chatml(messages: list[dict[str, Any]], start: int) -> _StepBuilder:
    """Steps of a ReAct chatml trajectory from ``messages[start:]``."""
    b = _StepBuilder()
    for i in range(start, len(messages)):
        m, where = messages[i], f"messages[{i}]"
        text = _text(m.get("content"), where)
        if m["role"] == "system":
            continue
        _check_open(b, where)
        if m["role"] == "assistant":
            calls, answers = tags.find_tool_calls(text), tags.find_answers(text)
            if calls and answers:
                raise TrajectoryFormatError(f"{where}: has both a <tool_call> and an <answer>")
            thought = b.thought(_thought(text))
            if calls:
                for j, payload in enumerate(calls):
                    b.call(thought if j == 0 else "", _parse_action(payload, where))
            elif answers:
                b.answer(thought, answers[-1])
            elif "<tool_call>" in text or "<answer>" in text:
                raise TrajectoryFormatError(f"{where}: a <tool_call> or <answer> tag is never closed")
            elif thought:
                b.hold(thought)
        elif m["role"] == "user":
            if not b.waiting:
                raise TrajectoryFormatError(f"{where}: a user message that answers no tool call")
            responses = _TOOL_RESPONSE_RE.findall(text) or [text.strip()]
            for response in responses:
                if not b.waiting:
                    raise TrajectoryFormatError(f"{where}: more tool responses than tool calls")
                b.respond(b.waiting[0], response)
        else:
            raise TrajectoryFormatError(
                f"{where}: unexpected role {m['role']!r} in a ReAct chatml trajectory"
            )
    return b


def parse_openai_tools(messages: list[dict[str, Any]], start: int) -> _StepBuilder:
    """Steps of an OpenAI tool_calls trajectory from ``messages[start:]``."""
    b = _StepBuilder()
    by_call_id: dict[str, int] = {}
    last_assistant = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    for i in range(start, len(messages)):
        m, where = messages[i], f"messages[{i}]"
        if m["role"] == "system":
            continue
        _check_open(b, where)
        text = _text(m.get("content"), where)
        if m["role"] == "assistant":
            calls = m.get("tool_calls") or []
            if not isinstance(calls, list):
                raise TrajectoryFormatError(f"{where}: tool_calls must be a list")
            if calls:
                thought = b.thought(_thought(text))
                for j, call in enumerate(calls):
                    fn = call.get("function") if isinstance(call, dict) else None
                    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                        raise TrajectoryFormatError(f"{where}.tool_calls[{j}]: no function name")
                    action = _parse_action(
                        {"name": fn["name"], "arguments": fn.get("arguments") or {}},
                        f"{where}.tool_calls[{j}]",
                    )
                    index = b.call(thought if j == 0 else "", action)
                    if isinstance(call.get("id"), str):
                        by_call_id[call["id"]] = index
            elif i == last_assistant:
                # The final message: its <answer>, else the text after its <think>, else all of it.
                answers, thinks = tags.find_answers(text), tags.find_thoughts(text)
                if answers:
                    answer, own = answers[-1], _thought(text)
                elif thinks:
                    answer, own = text.rsplit("</think>", 1)[1].strip(), "\n\n".join(thinks)
                else:
                    answer, own = text.strip(), ""
                if not answer:
                    raise TrajectoryFormatError(f"{where}: the last assistant message has no answer text")
                b.answer(b.thought(own), answer)
            elif own := _thought(text):
                b.hold(own)
        elif m["role"] == "tool":
            call_id = m.get("tool_call_id")
            index = by_call_id.get(call_id) if isinstance(call_id, str) else None
            if index is None:
                if not b.waiting:
                    raise TrajectoryFormatError(f"{where}: a tool message that answers no tool call")
                index = b.waiting[0]
            b.respond(index, text.strip())
        else:
            raise TrajectoryFormatError(f"{where}: unexpected role {m['role']!r} after the question")
    return b


def parse_trajectory(obj: Any) -> ImportedTrajectory:
    """One JSONL object (either format) as an ImportedTrajectory; raises TrajectoryFormatError."""
    messages = _messages(obj)
    fmt = detect_format(messages)
    question, start = _question(obj, messages)
    builder = (parse_react_chatml if fmt == "react_chatml" else parse_openai_tools)(messages, start)
    steps = builder.finish()
    if not steps:
        raise TrajectoryFormatError("no steps: no tool call and no answer after the question")
    return ImportedTrajectory(
        format=fmt,
        question=question,
        gold_answers=gold_answers(obj),
        steps=steps,
        final_answer=builder.final_answer,
        label=import_label(obj),
    )
