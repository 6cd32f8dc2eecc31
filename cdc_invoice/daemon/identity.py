"""One live daemon per daemon_id: leases are held by daemon_id (claimed_by), so two processes
with the same id would each renew and complete the other's work.

A session-level advisory lock keyed on the daemon_id, held on a connection of its own for the
daemon's life, refuses the second. It dies with the session: a SIGKILLed daemon's replacement
takes it at once. A session the server keeps after its client vanished (killed while the link
was half-open) is ended by the replacement once that daemon's heartbeat is 30 s old. If the
connection drops (database restart), the lock is taken again; should another process have
taken it meanwhile, this daemon stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg

from cdc_invoice.db.queries import q
from cdc_invoice.db.repository import KEEPALIVES
from cdc_invoice.errors import DaemonIdInUse

log = logging.getLogger(__name__)


class DaemonLock:
    def __init__(self, dsn: str, daemon_id: str) -> None:
        self.dsn = dsn
        self.daemon_id = daemon_id
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def acquire(self) -> None:
        """Take the lock or raise ``DaemonIdInUse``; connection errors propagate."""
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, **KEEPALIVES)
        try:
            locked = await self._try(conn)
            if not locked:
                locked = await self._take_over_stale(conn)
        except BaseException:
            await conn.close()
            raise
        if not locked:
            await conn.close()
            raise DaemonIdInUse(
                f"another daemon with daemon_id {self.daemon_id!r} is running against this "
                "database; two would share (and steal) each other's leases",
                hint="give each daemon its own [daemon] daemon_id (or leave it unset: host:pid), "
                "or stop the other one: SELECT * FROM cdc_invoice.daemon shows its host and pid",
                daemon_id=self.daemon_id,
            )
        self._conn = conn

    async def _try(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        cur = await conn.execute(q("daemon_lock"), {"daemon_id": self.daemon_id})
        row = await cur.fetchone()
        return bool(row and row[0])

    async def _take_over_stale(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """End the lock's session if its daemon has stopped heartbeating, then try again."""
        cur = await conn.execute(q("daemon_lock_stale_holder"), {"daemon_id": self.daemon_id})
        row = await cur.fetchone()
        if row is None:
            return False
        log.warning(
            "daemon_id %r: its lock is held by backend %s of a daemon without a heartbeat for "
            "30 s (killed while its link was down?); ending that session",
            self.daemon_id,
            row[0],
        )
        await conn.execute(q("terminate_backend"), {"pid": row[0]})
        for _ in range(50):  # the backend releases the lock as it exits, within moments
            if await self._try(conn):
                return True
            await asyncio.sleep(0.1)
        return False

    async def keep(self, check_every: float = 10.0) -> None:
        """Until cancelled: retake the lock after a lost connection. Returns (so the daemon
        stops) only when another process holds it."""
        while True:
            await asyncio.sleep(check_every)
            conn = self._conn
            try:
                if conn is not None and not conn.closed:
                    await conn.execute("SELECT 1")
                    continue
            except psycopg.Error:
                pass
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
            self._conn = None
            try:
                await self.acquire()
                log.info("daemon_id lock taken again after a lost connection")
            except DaemonIdInUse as exc:
                log.error("%s", exc)
                return
            except psycopg.Error as exc:
                log.warning("daemon_id lock: database unavailable (%s); trying again", exc)

    async def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None
