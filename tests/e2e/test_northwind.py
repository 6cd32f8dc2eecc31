"""Northwind, a real third-party sales database, invoiced without changing it.

Loads the vendored sql/examples/northwind/northwind.sql (Ms-PL, pthom/northwind_psql) into a
fresh database, installs cdc-invoice, applies sql/examples/northwind/ (mappings, document view, attach), backfills the 809 orders
shipped before attach with the CLI, then ships the other 21 from concurrent connections while
the sandbox platform and the daemon run as real processes. Every order must get exactly one
invoice whose total is what Northwind charges, and Northwind's schema must be unchanged except
for our triggers on orders.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc_invoice import demo, harness
from cdc_invoice.db import schema
from cdc_invoice.db.queries import sql_file

NORTHWIND = Path(__file__).parents[2] / "sql/examples/northwind/northwind.sql"
FREIGHT_CODE, FREIGHT_RATE = "3010102000000000000", Decimal("0.09")

# Northwind's own objects: relations, columns, constraints, indexes and triggers of public.
CATALOGUE = """
SELECT 'relation', c.relname, c.relkind::text
  FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
UNION ALL
SELECT 'column', c.relname || '.' || a.attname,
       format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
       || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
 WHERE c.relnamespace = 'public'::regnamespace
UNION ALL
SELECT 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index', indexrelid::regclass::text, pg_get_indexdef(indexrelid)
  FROM pg_index WHERE indrelid::regclass::text NOT LIKE '%%.%%'
UNION ALL
SELECT 'trigger', tgrelid::regclass::text || '.' || tgname, pg_get_triggerdef(oid)
  FROM pg_trigger WHERE NOT tgisinternal AND tgrelid IN
       (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace)
"""


def catalogue(dsn: str) -> dict[tuple[str, str], str]:
    with psycopg.connect(dsn) as conn:
        return {(r[0], r[1]): r[2] for r in conn.execute(CATALOGUE).fetchall()}


def load_northwind(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(NORTHWIND.read_text(encoding="utf-8"))


def cents(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def expected_totals(dsn: str) -> dict[str, Decimal]:
    """What Northwind charges, computed here from the stored floats' shortest decimals
    (real::text): Σ round(unit_price × quantity × (1 − discount), 2) + freight."""
    totals: dict[str, Decimal] = defaultdict(Decimal)
    with psycopg.connect(dsn) as conn:
        for order_id, price, qty, discount in conn.execute(
            "SELECT order_id, unit_price::text, quantity, discount::text FROM order_details"
        ):
            totals[str(order_id)] += cents(Decimal(price) * qty * (1 - Decimal(discount)))
        for order_id, freight in conn.execute("SELECT order_id, freight::text FROM orders"):
            totals[str(order_id)] += cents(Decimal(freight))
    return dict(totals)


def cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cdc_invoice", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def northwind_daemon(tmp_path: Path) -> Iterator[Any]:
    """start(dsn, sandbox) -> the daemon process, with the credentials of seller 'northwind'."""
    procs: list[harness.Proc] = []

    def start(dsn: str, sb: harness.Sandbox) -> harness.Proc:
        config = harness.write_config(
            tmp_path / "northwind.toml",
            dsn=dsn,
            sandbox=sb,
            seller_id="northwind",
            daemon={"concurrency": 32},
        )
        proc = harness.start_daemon(config, name="daemon")
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        p.stop()


@pytest.mark.slow
def test_northwind_830_orders_invoiced_without_changing_its_schema(
    fresh_dsn: str, sandbox: harness.Sandbox, northwind_daemon: Any
) -> None:
    t0 = time.monotonic()
    load_northwind(fresh_dsn)
    before = catalogue(fresh_dsn)
    schema.install(fresh_dsn)
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        for name in ("mappings.sql", "document.sql", "attach.sql"):
            conn.execute(sql_file(f"examples/northwind/{name}"))
        unshipped = [
            int(r[0])
            for r in conn.execute("SELECT order_id FROM orders WHERE shipped_date IS NULL")
        ]
    assert len(unshipped) == 21

    out = cli("backfill", "--dsn", fresh_dsn, "--source", "northwind", "--batch", "200")
    assert "830 order(s) read, 809 meet the condition, 0 already queued, 809 enqueued" in out
    t_backfill = time.monotonic()

    daemon = northwind_daemon(fresh_dsn, sandbox)

    def ship(order_ids: list[int], one_transaction: bool) -> None:
        with psycopg.connect(fresh_dsn, autocommit=not one_transaction) as conn:
            for order_id in order_ids:
                conn.execute(
                    "UPDATE orders SET shipped_date = current_date WHERE order_id = %s",
                    (order_id,),
                )
            if one_transaction:
                conn.commit()

    threads = [threading.Thread(target=ship, args=(unshipped[i::3], i == 2)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    done, failed = demo.wait_for_requests(fresh_dsn, 830, 75, progress=False)
    t_done = time.monotonic()
    assert (done, failed) == (830, 0), daemon.output()[-4000:]

    expected = expected_totals(fresh_dsn)
    with psycopg.connect(fresh_dsn) as conn:
        invoices = conn.execute(
            "SELECT order_ref, count(*), sum(total_incl_tax) FROM cdc_invoice.invoice "
            "WHERE kind = 'blue' GROUP BY order_ref"
        ).fetchall()
        assert len(invoices) == 830
        assert {ref for ref, _, _ in invoices} == set(expected)
        assert [ref for ref, n, _ in invoices if n != 1] == []
        wrong = {
            ref: (total, expected[ref]) for ref, _, total in invoices if total != expected[ref]
        }
        assert wrong == {}
        # Freight: one 9 % service line per invoice, for exactly the freight charged.
        freight = dict(
            conn.execute(
                "SELECT i.order_ref, l.amount_incl_tax FROM cdc_invoice.invoice_line l "
                "JOIN cdc_invoice.invoice i ON i.id = l.invoice_id "
                "WHERE l.tax_code = %s AND l.tax_rate = %s",
                (FREIGHT_CODE, FREIGHT_RATE),
            ).fetchall()
        )
        charged = {
            str(r[0]): cents(Decimal(r[1]))
            for r in conn.execute("SELECT order_id, freight::text FROM orders")
        }
        assert freight == charged
        assert conn.execute(
            "SELECT count(*) FROM cdc_invoice.invoice i WHERE total_incl_tax <> "
            "(SELECT sum(amount_incl_tax) FROM cdc_invoice.invoice_line l WHERE l.invoice_id = i.id)"
        ).fetchone() == (0,)
        rates = {
            r[0] for r in conn.execute("SELECT DISTINCT tax_rate FROM cdc_invoice.invoice_line")
        }
        assert rates == {Decimal("0.13"), Decimal("0.09")}
    assert len([i for i in sandbox.invoices() if i.get("kind", "blue") == "blue"]) == 830

    # A late backfill finds everything requested already.
    again = cli("backfill", "--dsn", fresh_dsn, "--source", "northwind")
    assert "830 meet the condition, 830 already queued, 0 enqueued" in again

    # Northwind's schema: unchanged, except our two triggers on orders (constraint triggers,
    # so each also has its pg_constraint row, named like the trigger).
    after = catalogue(fresh_dsn)
    added = {key: after[key] for key in after.keys() - before.keys()}
    assert {key: after.get(key) for key in before} == before
    names = {name for _, name in added}
    assert sorted(kind for kind, _ in added) == ["constraint", "constraint", "trigger", "trigger"]
    assert len(names) == 2 and all(
        re.fullmatch(r"orders\.cdc_invoice_[0-9a-f]{12}_issue_(upd|ins)", n) for n in names
    ), names
    assert all(
        "CONSTRAINT TRIGGER" in definition and "DEFERRABLE INITIALLY DEFERRED" in definition
        for (kind, _), definition in added.items()
        if kind == "trigger"
    )
    print(
        f"northwind: load+install+attach+backfill {t_backfill - t0:.1f}s, "
        f"830 invoices after {t_done - t_backfill:.1f}s, total {time.monotonic() - t0:.1f}s"
    )
