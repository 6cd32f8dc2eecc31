"""The sandbox's per-app request limit (``rate_limit_per_s``): a sliding one-second window.

ASSUMPTION (docs/platform-assumptions.md): Nuonuo documents no rate limit for /open/v1/services
(reference/nuonuo.md §2.10: "HTTP transport errors and rate limits: [U]"; the legacy SDK's
``appRate`` header defaulted to 10 req/s). The sandbox counts every gateway call of an app key
in the last second and answers the ones over the limit with E9429, without acting on them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class SlidingWindow:
    """At most ``limit`` calls per key in any ``window`` seconds (limit 0: no limit)."""

    def __init__(self, window: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._calls: dict[str, deque[float]] = {}
        self._seen: deque[float] = deque()  # every call, allowed or not, in the last window
        self.throttled = 0
        self.peak = 0  # most calls received in any one window (tests check a client's cap)

    def observe(self) -> None:
        """Count one received call toward ``peak``."""
        now = self.clock()
        seen = self._seen
        seen.append(now)
        while seen[0] <= now - self.window:
            seen.popleft()
        self.peak = max(self.peak, len(seen))

    def allow(self, key: str, limit: float) -> bool:
        if limit <= 0:
            return True
        now = self.clock()
        calls = self._calls.setdefault(key, deque())
        while calls and calls[0] <= now - self.window:
            calls.popleft()
        if len(calls) >= limit:
            self.throttled += 1
            return False
        calls.append(now)
        return True
