"""Recomputing a numerical answer from the numbers it was computed from, in the python sandbox.

A model that writes "By how much did ridership grow?" also writes the gold answer, and
weak and strong models alike get arithmetic wrong. The questions stage therefore asks for
the calculation as a Python expression over numbers from the cited facts
(``"38_200_000 - 38_010_000"``) and accepts a computed answer only when:

1. the expression is arithmetic only (numbers, + - * / // % **, parentheses and a few pure
   functions such as ``round``, ``abs``, ``min``, ``max``, ``sum``) — checked on its syntax
   tree before anything runs;
2. every number in it is stated by the cited facts (by value, so ``38.2e6`` uses "38.2
   million"), apart from small counts and powers of ten (``/ 2``, ``* 100``);
3. ``synth.tools.sandbox.run_python`` evaluates it (a fresh, limited interpreter: the
   expression is model output) and the result equals the answer to the answer's written
   precision ("20.5%" accepts 20.529…, "190,000" accepts only 190,000).
"""

from __future__ import annotations

import ast
import math
import re

from pydantic import BaseModel, ConfigDict, Field

from synth.answers import number_in_values, source_values, values_in
from synth.tools.sandbox import SandboxLimits, run_python

MAX_EXPRESSION_CHARS = 400
# Functions an expression may call: pure, cheap, no attribute access.
ALLOWED_FUNCTIONS = frozenset({"abs", "round", "min", "max", "sum", "pow", "sqrt", "log10"})
# Constants an expression may use without a fact stating them: small counts (an average over
# three values divides by 3) and powers of ten (percentages, scale words).
_FREE_CONSTANTS = frozenset({*range(0, 13), 100, 1_000, 10**6, 10**9, 10**12, 0.01, 0.001})
_LIMITS = SandboxLimits(cpu_s=2, wall_s=10.0, memory_mb=512, max_output_chars=200, max_file_mb=1)
_ALLOWED_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Constant,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Tuple,
    ast.List,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
    ast.USub,
    ast.UAdd,
)


class Calculation(BaseModel):
    """An expression and what the sandbox made of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    expression: str
    value: float | None = Field(None, description="the result; None when it did not run or failed")
    error: str | None = Field(None, description="why there is no value")


def expression_problem(expression: str) -> str | None:
    """Why ``expression`` is not plain arithmetic (None when it is)."""
    if not expression.strip():
        return "empty calculation"
    if len(expression) > MAX_EXPRESSION_CHARS:
        return f"calculation longer than {MAX_EXPRESSION_CHARS} characters"
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        return f"calculation is not a Python expression ({err.msg})"
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            return f"calculation uses {type(node).__name__}; only arithmetic is allowed"
        if isinstance(node, ast.Constant) and (
            isinstance(node.value, bool) or not isinstance(node.value, int | float)
        ):
            return f"calculation holds a non-number constant {node.value!r}"
        if isinstance(node, ast.Name) and node.id not in ALLOWED_FUNCTIONS:
            return f"calculation names {node.id!r}; only {', '.join(sorted(ALLOWED_FUNCTIONS))} are allowed"
        if isinstance(node, ast.Call) and not isinstance(node.func, ast.Name):
            return "calculation calls something that is not a plain function name"
    return None


def literals(expression: str) -> list[float]:
    """The numbers written in an (already checked) expression."""
    tree = ast.parse(expression.strip(), mode="eval")
    return [
        float(n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, int | float) and not isinstance(n.value, bool)
    ]


def unfounded_literals(expression: str, source: str) -> list[float]:
    """Numbers of the expression that the facts do not state (free constants excepted)."""
    known = source_values(source)
    return [
        v for v in literals(expression) if not number_in_values(abs(v), known) and abs(v) not in _FREE_CONSTANTS
    ]


async def evaluate(expression: str, limits: SandboxLimits = _LIMITS) -> Calculation:
    """Run a checked expression in the sandbox; a Calculation with its value or the error."""
    problem = expression_problem(expression)
    if problem is not None:
        return Calculation(expression=expression, error=problem)
    functions = "from math import sqrt, log10\n"
    code = f"{functions}print(repr(float({expression.strip()})))\n"
    result = await run_python(code, limits)
    if result.stopped is not None or result.exit_code != 0:
        last = (result.stderr.strip().splitlines() or [result.stopped or "failed"])[-1]
        return Calculation(expression=expression, error=f"calculation failed: {last[:200]}")
    try:
        value = float(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Calculation(expression=expression, error=f"calculation printed {result.stdout[:80]!r}")
    if not math.isfinite(value):
        return Calculation(expression=expression, error=f"calculation gave {value}")
    return Calculation(expression=expression, value=value)


_SCALE = {"thousand": 1e3, "k": 1e3, "million": 1e6, "mn": 1e6, "billion": 1e9, "bn": 1e9, "trillion": 1e12}


def _half_unit(raw: str) -> float:
    """Half of the last written digit's place value: "20.5%" -> 0.05, "38.2 million" -> 50,000."""
    digits = re.search(r"\d[\d,]*(?:\.(\d+))?", raw)
    decimals = len(digits.group(1)) if digits and digits.group(1) else 0
    scale = next((v for k, v in _SCALE.items() if re.search(rf"\d\s?{k}\b", raw, re.I)), 1.0)
    return 0.5 * 10.0**-decimals * scale


def matches_answer(value: float, answer: str) -> bool:
    """Whether ``answer`` states ``value`` to its written precision (a percentage may also be
    the fraction: "20.5%" matches 0.205)."""
    for raw, written in values_in(answer):
        tolerance = _half_unit(raw) * (1 + 1e-9) + 1e-9 * abs(written)
        candidates = [abs(value)]
        if "%" in raw or "cent" in raw.lower():
            candidates.append(abs(value) * 100)
        if any(abs(c - written) <= tolerance for c in candidates):
            return True
    return False
