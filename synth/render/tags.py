"""The ReAct tags of the released Tongyi DeepResearch agent (DESIGN §1).

Every renderer builds text through these helpers, so the corpus uses one tag dialect:
``<think>…</think>``, ``<tool_call>{"name": …, "arguments": …}</tool_call>``,
``<tool_response>…</tool_response>``, ``<answer>…</answer>``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from synth.records import ToolAction


def think(text: str) -> str:
    return f"<think>\n{text.strip()}\n</think>"


def tool_call(action: ToolAction) -> str:
    payload = json.dumps({"name": action.tool, "arguments": action.arguments}, ensure_ascii=False)
    return f"<tool_call>\n{payload}\n</tool_call>"


def tool_response(text: str) -> str:
    return f"<tool_response>\n{text.strip()}\n</tool_response>"


def answer(text: str) -> str:
    return f"<answer>{text.strip()}</answer>"


_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_ANSWER_RE = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)
_THINK_RE = re.compile(r"<think>\s*(.*?)\s*</think>", re.S)


def find_tool_calls(text: str) -> list[str]:
    """Raw payloads of every ``<tool_call>`` block, in order."""
    return _TOOL_CALL_RE.findall(text)


def find_answers(text: str) -> list[str]:
    return _ANSWER_RE.findall(text)


def find_thoughts(text: str) -> list[str]:
    return _THINK_RE.findall(text)


def parse_tool_call(payload: str) -> ToolAction:
    """A ``<tool_call>`` payload to a ToolAction; raises ValueError naming what is wrong."""
    try:
        obj: Any = json.loads(payload)
    except json.JSONDecodeError as err:
        raise ValueError(f"tool call is not valid JSON: {err.msg}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError('tool call must be a JSON object with a string "name"')
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some agents double-encode arguments
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise ValueError("tool call arguments are a string that is not JSON") from None
    if not isinstance(args, dict):
        raise ValueError("tool call arguments must be a JSON object")
    return ToolAction(tool=obj["name"], arguments=args)
