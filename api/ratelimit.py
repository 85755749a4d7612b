"""Failed-authentication rate limiting per client address.

A wrong bearer token or a wrong token typed into the login form counts as a failure of the
client's address; after ``limit`` failures within ``window_s`` seconds, every credential
that address presents is refused with 429 (and ``Retry-After``) until the oldest failure
leaves the window, even the right one: a guesser learns nothing during the lockout.
Requests without any credential are not counted (a browser opening the login page).

In memory, per API process, and bounded: at most ``max_clients`` addresses are tracked
(the least recently failing are forgotten first), so a flood of spoofed addresses cannot
grow it. Behind a reverse proxy the client address is the proxy's unless uvicorn is told to
trust its ``X-Forwarded-For`` (``--forwarded-allow-ips``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable


class FailedAuthLimiter:
    def __init__(
        self,
        limit: int,
        window_s: float,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def retry_after_s(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or None when it is not locked out."""
        now = self._clock()
        with self._lock:
            times = self._recent(client, now)
            if times is None or len(times) < self.limit:
                return None
            return max(1, math.ceil(times[-self.limit] + self.window_s - now))

    def failed(self, client: str) -> None:
        """Record one failed attempt of ``client``."""
        now = self._clock()
        with self._lock:
            times = self._recent(client, now) or deque(maxlen=self.limit)
            times.append(now)
            self._failures[client] = times
            self._failures.move_to_end(client)
            while len(self._failures) > self._max_clients:
                self._failures.popitem(last=False)
