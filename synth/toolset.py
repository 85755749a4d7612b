"""The agent's tool set and the shape of each tool's arguments (paper §2.2.2).

Planning checks a predicted action against this before any judge call (an unknown tool
or malformed arguments is ``invalid_tool``); rollouts offer a subset of it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synth.records import ToolAction


class SearchArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: list[str] = Field(min_length=1, description="one or more search queries")


class VisitArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | list[str] = Field(description="page url(s) to read")
    goal: str = Field(description="what to look for on the page")


class PythonArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, description="Python source; print() what you need")


class ScholarArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: list[str] = Field(min_length=1)


class ParseFileArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    files: list[str] = Field(min_length=1)


TOOLS: dict[str, type[BaseModel]] = {
    "search": SearchArgs,
    "visit": VisitArgs,
    "python": PythonArgs,
    "google_scholar": ScholarArgs,
    "parse_file": ParseFileArgs,
}

# What one tool argument may be in a guided reply schema (``response_format``): a string, a
# list of strings, a number, a boolean or null — what every tool above takes. Reply models
# validate arguments loosely and put this in their JSON schema only, so a guided decoder
# cannot nest objects without end (the 135M model did until the token cap cut its replies).
FLAT_ARGUMENT: dict[str, Any] = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
    ]
}

TOOL_DESCRIPTIONS: dict[str, str] = {
    "search": "Web search. Arguments: {\"query\": [\"query 1\", \"query 2\"]}",
    "visit": "Read web page(s). Arguments: {\"url\": \"https://…\", \"goal\": \"what to find\"}",
    "python": "Run Python code in a sandbox. Arguments: {\"code\": \"print(1+1)\"}",
    "google_scholar": "Search academic papers. Arguments: {\"query\": [\"…\"]}",
    "parse_file": "Read uploaded files. Arguments: {\"files\": [\"name.pdf\"]}",
}


def normalize_arguments(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Accept the common near-misses (a single query string) before validating."""
    if tool in ("search", "google_scholar") and isinstance(arguments.get("query"), str):
        return {**arguments, "query": [arguments["query"]]}
    return arguments


def validate_tool_call(action: ToolAction, allowed: list[str] | None = None) -> str | None:
    """None when the call is valid; else a one-line reason (unknown tool, bad arguments)."""
    names = allowed if allowed is not None else list(TOOLS)
    if action.tool not in TOOLS or action.tool not in names:
        return f"unknown tool {action.tool!r}; tools are {', '.join(names)}"
    try:
        TOOLS[action.tool].model_validate(normalize_arguments(action.tool, action.arguments))
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "arguments"
        return f"{action.tool}: {field}: {first['msg']}"
    return None
