"""The inventory application of the chaos run: orders completed at a steady rate, several
connections, straight to PostgreSQL (not through the proxy: the app is not what we break).

It behaves like an application: a connection error (the server restarting) is retried after a
reconnect. A commit whose answer was lost may or may not have happened, so the harness never
trusts this side's bookkeeping: the completed orders are whatever ``shop.orders`` says at the end.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import psycopg

from cdc_invoice.demo import CUSTOMERS, PRODUCTS

T = TypeVar("T")

Line = tuple[int, str, Decimal, Decimal, Decimal]
Plan = tuple[str, list[Line], bool]


def plans(count: int, seed: int) -> list[Plan]:
    """Like the demo's orders: 1-4 lines, fractional quantities, some discounts; every third
    order is inserted already shipped together with its lines (snapshot at commit)."""
    rng = random.Random(seed)
    out: list[Plan] = []
    for n in range(count):
        lines: list[Line] = []
        for line_no, (sku, price) in enumerate(rng.sample(PRODUCTS, rng.randint(1, 4)), start=1):
            qty = Decimal(rng.choice(["1", "2", "3", "0.5", "1.25", "10"]))
            discount = Decimal(rng.choice(["0", "0", "0", "5.00", "0.99"]))
            lines.append((line_no, sku, qty, price, discount))
        out.append((rng.choice(CUSTOMERS), lines, n % 3 == 0))
    return out


class Shipper:
    """``count`` orders at ``rate`` per second from ``connections`` threads."""

    def __init__(self, dsn: str, count: int, rate: float, connections: int, seed: int) -> None:
        self.dsn = dsn
        self.plans = plans(count, seed)
        self.rate = rate
        self.connections = connections
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.stop = threading.Event()
        self.t0 = 0.0

    def start(self) -> None:
        self.t0 = time.monotonic()
        for i in range(self.connections):
            t = threading.Thread(target=self._work, args=(i,), daemon=True, name=f"ship-{i}")
            t.start()
            self._threads.append(t)

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _work(self, index: int) -> None:
        conn: psycopg.Connection[Any] | None = None
        for k in range(index, len(self.plans), self.connections):
            if self.stop.is_set():
                break
            due = self.t0 + k / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)

            def create(c: psycopg.Connection[Any], plan: Plan = self.plans[k]) -> int:
                customer, lines, at_once = plan
                with c.transaction():
                    row = c.execute(
                        "INSERT INTO shop.orders (customer_id, status) VALUES (%s, %s) "
                        "RETURNING order_id",
                        (customer, "shipped" if at_once else "new"),
                    ).fetchone()
                    assert row is not None
                    oid = int(row[0])
                    with c.cursor() as cur:
                        cur.executemany(
                            "INSERT INTO shop.order_lines (order_id, line_no, sku, quantity, "
                            "unit_price, discount) VALUES (%s, %s, %s, %s, %s, %s)",
                            [(oid, *ln) for ln in lines],
                        )
                return oid

            conn, oid = self._retry(conn, create, attempts=20)
            if oid is None:
                self._count("gave_up")
                continue
            if not self.plans[k][2]:  # created 'new': ship it now

                def ship(c: psycopg.Connection[Any], oid: int = oid) -> int:
                    with c.transaction():
                        c.execute(
                            "UPDATE shop.orders SET status = 'shipped', shipped_at = now() "
                            "WHERE order_id = %s",
                            (oid,),
                        )
                    return oid

                # An UPDATE to 'shipped' is idempotent for the trigger (WHEN status changes).
                conn, shipped = self._retry(conn, ship, attempts=50)
                if shipped is None:
                    self._count("gave_up")
                    continue
            self._count("shipped")
        if conn is not None:
            conn.close()

    def _retry(
        self,
        conn: psycopg.Connection[Any] | None,
        op: Callable[[psycopg.Connection[Any]], T],
        attempts: int,
    ) -> tuple[psycopg.Connection[Any] | None, T | None]:
        for _ in range(attempts):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
                return conn, op(conn)
            except psycopg.OperationalError:
                self._count("db_errors")
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.3)
        return conn, None
