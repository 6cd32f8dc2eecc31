"""`cdc-invoice demo`: the whole flow on one machine, with nothing to set up.

Embedded PostgreSQL (or --dsn) → a sample shop schema (not ours) → install + attach → the
sandbox platform and the daemon as real processes → orders shipped from several connections →
the invoices and the daily report. Exit 0 only if every order got exactly one invoice whose
total equals the order's.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import LiteralString

import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

from cdc_invoice import harness
from cdc_invoice.db import embedded, schema
from cdc_invoice.db.queries import q, sql_file

console = Console(highlight=False, width=max(Console().width, 110))
DEMO_DB = "cdc_invoice_demo"


def Q(name: str) -> LiteralString:
    return q(name, "examples/demo_queries.sql")


PRODUCTS = [
    ("P-LAPTOP", Decimal("3099.00")),
    ("P-MOUSE", Decimal("79.90")),
    ("P-PAPER", Decimal("125.50")),
    ("P-TEA", Decimal("268.00")),
    ("S-INSTALL", Decimal("150.00")),
]
CUSTOMERS = ["C001", "C002", "C003", "C004"]


def ship_orders(dsn: str, count: int, connections: int = 5, seed: int = 7) -> list[int]:
    """Create and ship ``count`` orders from ``connections`` concurrent connections."""
    rng = random.Random(seed)
    plans = []
    for n in range(count):
        lines = []
        for line_no, (sku, price) in enumerate(rng.sample(PRODUCTS, rng.randint(1, 4)), start=1):
            qty = Decimal(rng.choice(["1", "2", "3", "0.5", "1.25", "10"]))
            discount = Decimal(rng.choice(["0", "0", "0", "5.00", "0.99"]))
            lines.append((line_no, sku, qty, price, discount))
        # Every third order is created already shipped with its lines after it, in one
        # transaction: the snapshot is taken at commit, so it still sees every line.
        plans.append((rng.choice(CUSTOMERS), lines, n % 3 == 0))
    shipped: list[int] = []
    lock = threading.Lock()

    def work(
        part: list[tuple[str, list[tuple[int, str, Decimal, Decimal, Decimal]], bool]],
    ) -> None:
        with psycopg.connect(dsn) as conn:
            for customer, lines, at_once in part:
                with conn.transaction():
                    status = "shipped" if at_once else "new"
                    row = conn.execute(Q("new_order"), (customer, status)).fetchone()
                    assert row is not None
                    order_id = int(row[0])
                    with conn.cursor() as cur:
                        cur.executemany(Q("new_order_line"), [(order_id, *ln) for ln in lines])
                if not at_once:
                    conn.execute(Q("ship_order"), (order_id,))
                    conn.commit()
                with lock:
                    shipped.append(order_id)

    threads = [
        threading.Thread(target=work, args=(plans[i::connections],)) for i in range(connections)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(shipped)


def wait_for_requests(
    dsn: str, expected: int, timeout: float = 120.0, *, progress: bool = True
) -> tuple[int, int]:
    """(done, failed) issue requests once they add up to ``expected`` or at the timeout."""
    deadline = time.monotonic() + timeout
    done = failed = 0
    status = console.status("waiting for invoices") if progress else None
    with psycopg.connect(dsn, autocommit=True) as conn, status or contextlib.nullcontext():
        while time.monotonic() < deadline:
            row = conn.execute(Q("issue_progress")).fetchone()
            assert row is not None
            done, failed = int(row[0]), int(row[1])
            if status is not None:
                status.update(f"invoices recorded: {done}/{expected}, failed: {failed}")
            if done + failed >= expected:
                break
            time.sleep(0.25)
    return done, failed


def verify_invoices(dsn: str, orders: list[int], sandbox: harness.Sandbox) -> list[str]:
    """Every order exactly one invoice, totals equal to the order's, as many at the platform."""
    problems = []
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(Q("invoices_per_order"), (orders,)).fetchall()
        failed = conn.execute(Q("failed_orders"), ([str(o) for o in orders],)).fetchall()
    for order_ref, error in failed:
        problems.append(f"order {order_ref} failed: {error}")
    if len(rows) != len(orders):
        problems.append(f"{len(orders) - len(rows)} orders have no lines")
    for order_ref, count, total, expected in rows:
        if count != 1:
            problems.append(f"order {order_ref} has {count} invoices")
        elif total != expected:
            problems.append(f"order {order_ref}: invoice total {total} != order total {expected}")
    # issued blue invoices (status 2, or 24: issued, seal failed): a failed one (22) is none
    at_platform = [
        i for i in sandbox.invoices() if i.get("kind") == "blue" and i.get("status") in ("2", "24")
    ]
    if len(at_platform) != len(orders):
        problems.append(f"the platform issued {len(at_platform)} invoices for {len(orders)} orders")
    return problems


def print_report(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        invoices = conn.execute(Q("invoice_list")).fetchall()
        daily = conn.execute(Q("daily_report")).fetchall()
    table = Table(
        "order",
        "invoice number",
        "buyer",
        "excl. tax",
        "tax",
        "incl. tax",
        title=f"{len(invoices)} invoices (cdc_invoice.invoice)",
    )
    for order_ref, number, buyer, excl, tax, incl in invoices:
        table.add_row(
            str(order_ref), str(number), str(buyer), f"{excl:,.2f}", f"{tax:,.2f}", f"{incl:,.2f}"
        )
    console.print(table)
    rep = Table(
        "day",
        "seller",
        "kind",
        "rate",
        "invoices",
        "excl. tax",
        "tax",
        "incl. tax",
        title="SELECT * FROM cdc_invoice.report_daily",
    )
    for row in daily:
        rep.add_row(
            *(
                f"{v:,.2f}" if isinstance(v, Decimal) and i >= 5 else str(v)
                for i, v in enumerate(row)
            )
        )
    console.print(rep)


def main(admin_dsn: str | None, orders: int = 25, keep: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="cdc-invoice-demo-"))
    server = None
    if admin_dsn is None:
        console.print(f"[bold]1.[/] starting an embedded PostgreSQL in {workdir / 'pg'}")
        admin_dsn, server = embedded.start(workdir / "pg", keep=keep)
    else:
        console.print("[bold]1.[/] using the PostgreSQL server of --dsn")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DEMO_DB))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DB)))
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=DEMO_DB)

    console.print("[bold]2.[/] " + schema.install(dsn).describe())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql_file("examples/demo_shop.sql"))
    console.print(
        "[bold]3.[/] created the sample shop (shop.orders, shop.order_lines, …) and "
        "attached it: SELECT cdc_invoice.attach('shop', 'shop.orders', …)"
    )
    sandbox = harness.start_sandbox(workdir / "sandbox", issue_delay_ms=300)
    console.print(f"[bold]4.[/] sandbox platform (Nuonuo protocol) at {sandbox.url}")
    config = harness.write_config(
        workdir / "cdc-invoice.toml", dsn=dsn, sandbox=sandbox, daemon={"concurrency": 16}
    )
    daemon = harness.start_daemon(config, verbose=False)
    console.print(f"[bold]5.[/] daemon started: cdc-invoice run --config {config}")
    try:
        t0 = time.monotonic()
        shipped = ship_orders(dsn, orders)
        console.print(f"[bold]6.[/] shipped {len(shipped)} orders from 5 connections")
        done, failed = wait_for_requests(dsn, len(shipped))
        console.print(
            f"[bold]7.[/] {done} invoices recorded, {failed} failed, "
            f"in {time.monotonic() - t0:.1f}s"
        )
        print_report(dsn)
        problems = verify_invoices(dsn, shipped, sandbox)
    finally:
        daemon.stop()
        sandbox.proc.stop()
        if keep:
            console.print(f"kept: {workdir} (psql '{dsn}')")
        elif server is not None:
            server.cleanup()
    if problems:
        for p in problems:
            console.print(f"[red]problem:[/] {p}")
        console.print("daemon output (last lines):\n" + "".join(daemon.lines[-40:]))
        return 1
    console.print("[green]every order has exactly one invoice, with totals equal to the order's[/]")
    return 0
