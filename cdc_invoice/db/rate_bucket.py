"""The cluster-wide platform request rate per app key, kept in PostgreSQL (issue 17).

Every daemon of the database asks cdc_invoice.take_rate_token (sql/ops.sql) for the start of
its next platform call; the function hands out slots 1/per_second apart, so all daemons
together start at most ``per_second`` calls in any second (a call late for its slot only
leaves a gap). A slot further than ``max_wait`` away is not reserved: the caller sleeps and
asks again, so a daemon that dies holds no slots. One short statement per platform call.
"""

from __future__ import annotations

import asyncio

from cdc_invoice.db.queries import q
from cdc_invoice.db.repository import Repository


class PgRateBucket:
    """``providers.pace.RateBucket`` over the shared rate_bucket table."""

    def __init__(self, repo: Repository, per_second: float, *, max_wait: float = 2.0) -> None:
        if not per_second > 0:
            raise ValueError("per_second must be positive")
        self.repo = repo
        self.per_second = per_second
        self.max_wait = max_wait

    async def take(self, key: str) -> float:
        """Reserve a slot for ``key``; the seconds until it (sleeping while none is near)."""
        params = {"app_key": key, "per_second": self.per_second, "max_wait": self.max_wait}
        while True:
            async with self.repo.connection() as conn:
                row = await (await conn.execute(q("take_rate_token"), params)).fetchone()
            assert row is not None
            wait, granted = float(row[0]), bool(row[1])
            if granted:
                return wait
            await asyncio.sleep(max(wait - self.max_wait, 0.01))
