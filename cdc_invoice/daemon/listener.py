"""The LISTEN connection: a wake-up hint for the claim loop, never the source of truth.

One dedicated autocommit connection. After every (re)connect it LISTENs first and then asks for
a full sweep, so nothing committed while it was away is missed. A ping on every idle timeout
finds a dead connection (the server restarted, the backend was terminated, the link was cut).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg

from cdc_invoice.db.repository import KEEPALIVES

log = logging.getLogger(__name__)

CHANNEL = "cdc_invoice"


class Listener:
    def __init__(self, dsn: str, wake: asyncio.Event, *, ping_seconds: float = 5.0) -> None:
        self.dsn = dsn
        self.wake = wake
        self.ping_seconds = ping_seconds
        self.connected = asyncio.Event()
        self.notifications = 0
        self.reconnects = 0

    async def run(self) -> None:
        delay = 0.2
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, **KEEPALIVES
                )
                await conn.execute(f"LISTEN {CHANNEL}")
                self.connected.set()
                self.wake.set()  # sweep: notifications sent while we were away are gone
                delay = 0.2
                log.info("listening on channel %s", CHANNEL)
                while True:
                    async for _ in conn.notifies(timeout=self.ping_seconds):
                        self.notifications += 1
                        self.wake.set()
                    # A ping that hangs means a half-open link: give up on it and reconnect.
                    async with asyncio.timeout(self.ping_seconds * 2):
                        await conn.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, TimeoutError) as exc:
                self.connected.clear()
                self.reconnects += 1
                self.wake.set()  # the poll fallback takes over; sweep now
                log.warning(
                    "LISTEN connection lost (%s); reconnecting in %.1fs",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                if conn is not None:
                    try:
                        await conn.close()
                    except Exception:
                        log.debug("closing the broken LISTEN connection failed", exc_info=True)
