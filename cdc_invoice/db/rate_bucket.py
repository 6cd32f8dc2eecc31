"""The cluster-wide platform request rate per app key, kept in PostgreSQL (issue 17).

Every daemon of the database asks cdc_invoice.take_rate_token (sql/ops.sql) for the start of
its next platform call; the function hands out slots 1/per_second apart, so all daemons
together start at most ``per_second`` calls in any second (a call late for its slot only
leaves a gap). A slot further than ``max_wait`` away is not reserved: the caller sleeps and
asks again, so a daemon that dies holds no slots. One short statement per platform call.

What the platform counts is arrivals, not slots: a call that wakes late for its slot (a busy
event loop) would land next to the following one. So slots are ``HEADROOM`` further apart than
the cap, and a call that wakes more than half a slot late gives its slot up and takes a new one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from cdc_invoice.db.queries import q
from cdc_invoice.db.repository import Repository

HEADROOM: Final = 0.9  # slots at 90 % of the cap: late starts cannot push arrivals over it


class PgRateBucket:
    """``providers.pace.RateBucket`` over the shared rate_bucket table."""

    def __init__(self, repo: Repository, per_second: float, *, max_wait: float = 2.0) -> None:
        if not per_second > 0:
            raise ValueError("per_second must be positive")
        self.repo = repo
        self.per_second = per_second
        self.max_wait = max_wait
        self.interval = 1.0 / (per_second * HEADROOM)

    async def acquire(self, key: str) -> float:
        """Wait for a slot of ``key``; returns the seconds waited."""
        params = {
            "app_key": key,
            "per_second": self.per_second * HEADROOM,
            "max_wait": self.max_wait,
        }
        started = time.monotonic()
        while True:
            async with self.repo.connection() as conn:
                row = await (await conn.execute(q("take_rate_token"), params)).fetchone()
            assert row is not None
            wait, granted = float(row[0]), bool(row[1])
            if not granted:
                await asyncio.sleep(max(wait - self.max_wait, 0.01))
                continue
            slot = time.monotonic() + wait
            if wait > 0:
                await asyncio.sleep(wait)
            if time.monotonic() - slot <= self.interval / 2:
                return time.monotonic() - started
            # woke too late: the next slot's call may be leaving now; take a fresh slot
