"""The error types every layer shares: bad user input (exit 2) and spec problems.

They live here, below everything else, so that stages, pipelines, the API and the
trainer can raise them without importing the CLI or the spec module.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input from the user (argument, path, id): printed as one line, exit 2."""


class IntegrityError(RuntimeError):
    """Stored data that fails its own check (a shard whose sha256 no longer matches): one line, exit 1."""


class SpecError(ValueError):
    """A spec problem, with the dotted path of the field it concerns."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class SpecErrors(SpecError):
    """Several spec problems at once, so that a user fixes them in one pass.

    ``field`` and ``message`` are the first problem's (what a REST 422 names); ``str()``
    lists every problem, one per line.
    """

    def __init__(self, problems: list[SpecError]) -> None:
        if not problems:
            raise ValueError("SpecErrors needs at least one problem")
        super().__init__(problems[0].field, problems[0].message)
        self.problems = problems
        self.args = (self._text(),)

    def _text(self) -> str:
        lines = [str(p) for p in self.problems]
        return f"{len(lines)} problems in the spec:\n  " + "\n  ".join(lines)

    def __str__(self) -> str:
        return self._text()


def raise_problems(problems: list[SpecError]) -> None:
    """Raise nothing, the one problem, or a ``SpecErrors`` holding them all."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise SpecErrors(problems)
