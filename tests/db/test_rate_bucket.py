"""The shared platform request cap (issue 17): cdc_invoice.take_rate_token and PgRateBucket
on a real PostgreSQL, with two "daemons" (two pools) taking slots at once."""

from __future__ import annotations

import asyncio
import itertools
import time

import psycopg
import pytest

from cdc_invoice.db.rate_bucket import HEADROOM, PgRateBucket
from cdc_invoice.db.repository import Repository


def test_slots_are_handed_out_one_interval_apart_and_far_ones_are_not_reserved(
    installed_dsn: str,
) -> None:
    take = "SELECT wait_seconds, granted FROM cdc_invoice.take_rate_token('k', 10, %s)"
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        waits = [conn.execute(take, (10.0,)).fetchone() for _ in range(5)]
        assert all(row is not None and row[1] for row in waits)
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(waits)]  # type: ignore[index]
        assert all(0.08 < g <= 0.1 for g in gaps), waits
        # a slot more than max_wait away is refused and nothing is reserved
        refused = [conn.execute(take, (0.0,)).fetchone() for _ in range(3)]
        assert all(r is not None and not r[1] for r in refused)
        assert refused[2][0] <= refused[0][0]  # type: ignore[index]
        # another app key has its own bucket
        assert conn.execute(
            "SELECT granted FROM cdc_invoice.take_rate_token('other', 10, 0)"
        ).fetchone() == (True,)


def test_a_cap_that_is_not_positive_is_refused_with_a_hint(installed_dsn: str) -> None:
    with (
        psycopg.connect(installed_dsn, autocommit=True) as conn,
        pytest.raises(psycopg.Error) as info,
    ):
        conn.execute("SELECT * FROM cdc_invoice.take_rate_token('k', 0, 1)")
    assert info.value.sqlstate == "CI001"
    assert (
        info.value.diag.message_hint and "max_requests_per_second" in info.value.diag.message_hint
    )


async def test_two_daemons_together_stay_under_the_cap(installed_dsn: str) -> None:
    rate, calls = 20.0, 30
    repos = [await Repository.open(installed_dsn, f"d{i}", size=2) for i in (1, 2)]
    starts: list[float] = []
    try:
        buckets = [PgRateBucket(r, rate) for r in repos]

        async def one(bucket: PgRateBucket) -> None:
            await bucket.acquire("app")
            starts.append(time.monotonic())

        await asyncio.gather(*(one(buckets[i % 2]) for i in range(calls)))
    finally:
        for r in repos:
            await r.close()
    starts.sort()
    # no second holds more than the cap (windows anchored at each start)
    for i, t0 in enumerate(starts):
        assert sum(1 for t in starts[i:] if t < t0 + 1.0) <= rate, starts
    assert starts[-1] - starts[0] >= (calls - 1) / (rate * HEADROOM) - 0.05
