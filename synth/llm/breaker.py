"""A circuit breaker per endpoint: stop a run whose endpoint is broken instead of filling the ledger.

Without it, a wrong key, a model the server does not serve or a dead host turned every
request into a failed-ledger row and the run "succeeded" with nothing in it. The breaker
counts HTTP attempts whose failure says the *endpoint* is wrong (``BreakerConfig``: 4xx
about the request's shape or credentials, refused or unresolvable connections, connect
timeouts, dropped connections) and opens after ``consecutive_failures`` of them in a row,
or once more than ``max_failure_share`` of the first ``window_requests`` attempts failed
so. A 2xx resets the run of failures; 429, 5xx and read timeouts count as attempts only.

Once open it stays open: the client raises ``EndpointFailure`` for every later call, the
unit in progress is not committed, and the run stops ``failed`` with the breaker's reason.
Each client (one per endpoint and worker process) has its own breaker, so each worker
process trips on what it saw itself.
"""

from __future__ import annotations

from synth.llm.config import BreakerConfig


class CircuitBreaker:
    """Counts attempts to one endpoint; ``open_reason`` is set once it trips (see module docstring)."""

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.attempts = 0
        self.window_failures = 0
        self.consecutive = 0
        self.open_reason: str | None = None

    @property
    def is_open(self) -> bool:
        return self.open_reason is not None

    def success(self) -> None:
        """An attempt the endpoint answered 2xx."""
        self.attempts += 1
        self.consecutive = 0

    def neutral(self) -> None:
        """An attempt that failed for a reason that says nothing about the endpoint's setup."""
        self.attempts += 1

    def failure(self, problem: str) -> None:
        """An attempt that failed because of the endpoint; ``problem`` says how ("answered 401: …")."""
        self.attempts += 1
        self.consecutive += 1
        if self.attempts <= self.config.window_requests:
            self.window_failures += 1
        if self.open_reason is not None:
            return
        if self.consecutive >= self.config.consecutive_failures:
            self.open_reason = f"{problem} ({self.consecutive} failed requests in a row; circuit breaker)"
        elif self.window_failures > self.config.max_failure_share * self.config.window_requests:
            self.open_reason = (
                f"{problem} ({self.window_failures} of the first {self.attempts} requests failed so; "
                "circuit breaker)"
            )
