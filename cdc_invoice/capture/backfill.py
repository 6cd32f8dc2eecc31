"""Backfill: enqueue the orders of a source that completed before it was attached.

Runs cdc_invoice.backfill_batch() once per batch, each in its own short transaction (the
inventory application keeps writing meanwhile; a concurrent completion and a backfill of the
same order meet in the request's unique key), then backfill_finish() once: one audit event and
one NOTIFY. Idempotent: a second run enqueues nothing. See sql/ops.sql for the semantics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import psycopg

from cdc_invoice.capture._db import Q, database_errors


@dataclass(slots=True)
class BackfillProgress:
    """Running totals, passed to the progress callback after every batch."""

    total: int  # rows of the order table to read (after --since)
    scanned: int = 0
    eligible: int = 0  # meeting the condition
    queued_before: int = 0  # of those, already requested
    enqueued: int = 0  # inserted now (dry run: would be)
    batches: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def rate(self) -> float:
        """Orders read per second."""
        return self.scanned / self.seconds if self.seconds > 0 else 0.0


def backfill(
    dsn: str,
    source: str,
    *,
    since: date | None = None,
    since_column: str | None = None,
    batch_size: int = 1000,
    dry_run: bool = False,
    condition: str | None = None,
    progress: Callable[[BackfillProgress], None] | None = None,
) -> BackfillProgress:
    """Enqueue (or with ``dry_run`` count) the source's completed orders that have no request.

    ``since``/``since_column``: only orders whose ``since_column`` (a column of the order table,
    read as a date) is on or after ``since``. ``condition`` replaces the source's issue_when
    for this run (OLD is NULL in it, as in issue_when).
    """
    params: dict[str, object] = {
        "source": source,
        "since": since,
        "since_column": since_column,
        "condition": condition,
    }
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn, database_errors("backfill failed"):
        row = conn.execute(Q("backfill_total"), params).fetchone()
        state = BackfillProgress(total=int(row[0]) if row else 0, dry_run=dry_run)
        if progress is not None:
            progress(state)
        after: str | None = None
        while True:
            batch = conn.execute(
                Q("backfill_batch"),
                {**params, "after_key": after, "batch_size": batch_size, "dry_run": dry_run},
            ).fetchone()
            assert batch is not None
            scanned, eligible, queued_before, enqueued, last_key = batch
            state.scanned += scanned
            state.eligible += eligible
            state.queued_before += queued_before
            state.enqueued += enqueued
            state.batches += 1
            state.seconds = time.monotonic() - started
            if progress is not None:
                progress(state)
            if scanned < batch_size or last_key is None:
                break
            after = str(last_key)
        if not dry_run:
            conn.execute(
                Q("backfill_finish"),
                {**params, "scanned": state.scanned, "enqueued": state.enqueued},
            )
    state.seconds = time.monotonic() - started
    return state
