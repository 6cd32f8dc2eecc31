"""Pacing platform calls: a cluster-wide rate per app key, adaptive slowing per seller on
throttling answers, and the per-seller pause while the monthly invoicing quota is exhausted.

Three separate concerns, one small object each, all owned by the daemon and handed to the
adapter, which consults them around every gateway call (issue and query alike):

* ``RateBucket`` — the cluster-wide cap ``[provider] max_requests_per_second``: a token bucket in
  PostgreSQL (cdc_invoice.take_rate_token, sql/ops.sql) shared by every daemon of the database.
* ``Pacer`` — per seller, in this process: after a throttling answer the seller's calls are
  spaced further apart (doubling), and each success narrows the spacing again (× 0.9), so the
  daemon settles just under whatever rate the platform really allows.
* ``QuotaGuard`` — per seller, in this process: once the platform failed an invoice for lack of
  quota, no new invoice of that seller is sent; one probe (a reInvoice of a failed one) goes
  out every ``probe_seconds`` and the first invoice issued again lifts the pause.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

Sleep = Callable[[float], Awaitable[None]]


class RateBucket(Protocol):
    async def acquire(self, key: str) -> float:
        """Wait until one call of ``key`` may start; returns the seconds waited."""


class Pacer:
    """Per-seller adaptive spacing plus the optional cluster-wide bucket."""

    def __init__(
        self,
        bucket: RateBucket | None = None,
        *,
        min_spacing: float = 0.02,
        max_spacing: float = 5.0,
        max_throttle_wait: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.bucket = bucket
        self.min_spacing = min_spacing
        self.max_spacing = max_spacing
        # How long one call may keep being throttled before it is handed back (deferred).
        self.max_throttle_wait = max_throttle_wait
        self.clock = clock
        self.sleep = sleep
        self.spacing: dict[str, float] = {}  # seller -> seconds between its calls (0: none)
        self._next: dict[str, float] = {}  # seller -> earliest start of its next call
        self._raised: dict[str, float] = {}  # seller -> when its spacing was last doubled
        self.throttled: Counter[str] = Counter()  # seller -> throttling answers seen
        self.bucket_waits = 0.0  # seconds spent waiting for the cluster-wide bucket

    async def before(self, app_key: str, seller_id: str) -> None:
        """Wait for this seller's slot, then for the cluster-wide bucket."""
        spacing = self.spacing.get(seller_id, 0.0)
        if spacing:
            now = self.clock()
            start = max(now, self._next.get(seller_id, now))
            self._next[seller_id] = start + spacing
            if start > now:
                await self.sleep(start - now)
        if self.bucket is not None:
            self.bucket_waits += await self.bucket.acquire(app_key)

    def on_throttled(self, seller_id: str) -> float:
        """A throttling answer: double the seller's spacing; returns the pause before a resend."""
        self.throttled[seller_id] += 1
        now = self.clock()
        spacing = self.spacing.get(seller_id, 0.0)
        # Calls in flight together are throttled together: that is one signal, not many, so
        # the spacing doubles at most once per spacing period.
        if now - self._raised.get(seller_id, -1e9) >= spacing:
            spacing = min(max(spacing * 2, self.min_spacing), self.max_spacing)
            self.spacing[seller_id] = spacing
            self._raised[seller_id] = now
        return spacing * (1 + random.random())  # jitter: daemons must not resend in lockstep

    def on_success(self, seller_id: str) -> None:
        spacing = self.spacing.get(seller_id)
        if spacing:
            spacing *= 0.9
            self.spacing[seller_id] = spacing if spacing >= self.min_spacing / 4 else 0.0


@dataclass(slots=True)
class _Pause:
    reason: str
    since: float  # wall clock, for status
    next_probe: float  # monotonic
    probe_serial: str | None = None
    seen: set[str] = field(default_factory=set)  # serials seen failed for quota in this pause


class QuotaGuard:
    """Which sellers are paused for quota, and when the next probe may go out."""

    def __init__(
        self,
        *,
        probe_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.probe_seconds = probe_seconds
        self.clock = clock
        self.wall = wall
        self.paused: dict[str, _Pause] = {}
        self._resumed_at: dict[str, float] = {}
        self._retried: dict[str, set[str]] = {}  # serials re-submitted since the last resume
        self._first_seen: dict[str, float] = {}  # serial -> when first seen failed for quota
        self.pauses = 0
        self.probes = 0

    def retry_after(self, seller_id: str) -> float | None:
        """Seconds until the seller's next probe, or None if it is not paused."""
        pause = self.paused.get(seller_id)
        if pause is None:
            return None
        return max(pause.next_probe - self.clock(), 0.0) + random.uniform(0, 1)

    def may_issue(self, seller_id: str) -> bool:
        """New invoices go out unless paused; a pause with no probe made for a whole extra
        interval (nothing left to reInvoice) lets one new invoice through as the probe."""
        pause = self.paused.get(seller_id)
        if pause is None:
            return True
        now = self.clock()
        if now >= pause.next_probe + self.probe_seconds:
            pause.next_probe = now + self.probe_seconds
            self.probes += 1
            return True
        return False

    def on_quota_failure(self, seller_id: str, serial: str, cause: str) -> bool:
        """An invoice of the seller failed for lack of quota. True: reInvoice it now (it is
        this pause's probe, or an old failure while the seller flows again); False: wait."""
        now = self.clock()
        first_seen = self._first_seen.setdefault(serial, now)
        pause = self.paused.get(seller_id)
        if pause is None:
            resumed = self._resumed_at.get(seller_id)
            retried = self._retried.setdefault(seller_id, set())
            if resumed is not None and first_seen <= resumed and serial not in retried:
                retried.add(serial)  # failed before the quota was raised: resend it
                return True
            self.pauses += 1
            self.paused[seller_id] = _Pause(cause, self.wall(), now + self.probe_seconds)
            self._retried[seller_id] = set()
            return False
        pause.reason = cause
        if pause.probe_serial == serial:
            pause.probe_serial = None  # the probe failed again: wait for the next interval
            pause.next_probe = now + self.probe_seconds
            return False
        if now >= pause.next_probe:  # (a probe with no answer for a whole interval is lost)
            pause.probe_serial = serial
            pause.next_probe = now + self.probe_seconds
            self.probes += 1
            return True
        return False

    def on_issued(self, seller_id: str) -> None:
        """An invoice of the seller was issued: quota is there again."""
        if self.paused.pop(seller_id, None) is not None:
            self._resumed_at[seller_id] = self.clock()

    def forget(self, serial: str) -> None:
        self._first_seen.pop(serial, None)
