"""Dispatch of an agent's tool call to the offline tools, with each tool's settings."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from synth.records import ToolAction
from synth.tools.sandbox import Isolation, SandboxLimits, format_python_observation, run_python
from synth.tools.search import SearchIndex, search_tool
from synth.tools.visit import visit_tool
from synth.toolset import normalize_arguments


@dataclass
class ToolEnvironment:
    """The tools of one rollout unit. Calls must be validated (``synth.toolset.validate_tool_call``) first."""

    index: SearchIndex
    sandbox: SandboxLimits
    search_top_k: int = 5
    visit_max_chars: int = 4000
    # None: what this host offers (bubblewrap, else unshare, else the tool is disabled).
    isolation: Isolation | None = None
    # Each python call is a process using up to a CPU: no more at once than there are CPUs.
    _python_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(os.cpu_count() or 1))

    async def run(self, action: ToolAction) -> str:
        """The observation (tool response text) for a valid call of search, visit or python."""
        args = normalize_arguments(action.tool, action.arguments)
        if action.tool == "search":
            return search_tool(self.index, args["query"], self.search_top_k)
        if action.tool == "visit":
            return visit_tool(self.index, args["url"], args["goal"], self.visit_max_chars)
        if action.tool == "python":
            async with self._python_slots:
                result = await run_python(args["code"], self.sandbox, self.isolation)
            return format_python_observation(result, self.sandbox)
        raise ValueError(f"no offline implementation of tool {action.tool!r}")
