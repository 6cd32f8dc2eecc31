"""The DBA's commands against a real database: attach, sources, preview, detach."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import psycopg
from click.testing import CliRunner, Result

from cdc_invoice.cli import main

ISSUE_WHEN = "NEW.status = 'shipped' AND NEW.status IS DISTINCT FROM OLD.status"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def attach_args(dsn: str, **over: str) -> list[str]:
    values = {
        "--source": "shop",
        "--order-table": "shop.orders",
        "--order-key": "order_id",
        "--issue-when": ISSUE_WHEN,
        "--document": "invoicing.shop_document",
        "--seller": "main",
        **over,
    }
    return ["attach", "--dsn", dsn, *[x for kv in values.items() for x in kv]]


def new_order(dsn: str, lines: list[tuple[str, str, str, str]], status: str = "new") -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO shop.orders (customer_id, status) VALUES ('C001', %s) RETURNING order_id",
            (status,),
        ).fetchone()
        assert row is not None
        for n, (sku, qty, price, discount) in enumerate(lines, 1):
            conn.execute(
                "INSERT INTO shop.order_lines VALUES (%s, %s, %s, %s, %s, %s)",
                (row[0], n, sku, qty, price, discount),
            )
        return str(row[0])


def count_requests(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM cdc_invoice.request").fetchone()
        return int(row[0]) if row else -1


def sources_json(dsn: str) -> tuple[int, list[dict[str, Any]]]:
    result = run("sources", "--dsn", dsn, "--json")
    return result.exit_code, [json.loads(line) for line in result.output.splitlines()]


def test_attach_sources_detach(shop_dsn: str) -> None:
    assert run("detach", "--dsn", shop_dsn, "--source", "shop").exit_code == 0
    assert sources_json(shop_dsn) == (0, [])
    out = run(*attach_args(shop_dsn, **{"--reverse-when": "NEW.status = 'returned'"}))
    assert out.exit_code == 0, out.output
    assert "attached shop to shop.orders" in out.output
    assert "cdc-invoice preview --source shop" in out.output
    code, [info] = sources_json(shop_dsn)
    assert code == 0
    assert info["trigger_state"] == "enabled" and info["table_exists"] is True
    assert info["reverse_when"] == "NEW.status = 'returned'"
    assert {t["enabled"] for t in info["triggers"]} == {"yes"} and len(info["triggers"]) == 3
    table = run("sources", "--dsn", shop_dsn)
    assert table.exit_code == 0 and "invoicing.shop_document" in table.output

    # Attach works through the triggers it made.
    oid = new_order(shop_dsn, [("P-TEA", "1", "268", "0")])
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute("UPDATE shop.orders SET status = 'shipped' WHERE order_id = %s", (oid,))
    assert count_requests(shop_dsn) == 1

    out = run("detach", "--dsn", shop_dsn, "--source", "shop")
    assert out.exit_code == 0 and "detached shop" in out.output
    again = run("detach", "--dsn", shop_dsn, "--source", "shop")
    assert again.exit_code == 2
    assert "source 'shop' is not attached" in again.output and "fix:" in again.output
    with psycopg.connect(shop_dsn) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'shop.orders'::regclass "
            "AND NOT tgisinternal"
        ).fetchone() == (0,)


def test_sources_reports_disabled_replica_missing_and_gone(shop_dsn: str) -> None:
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        [name] = [
            r[0]
            for r in conn.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'shop.orders'::regclass "
                "AND tgname LIKE '%%issue_upd'"
            )
        ]

        def state() -> tuple[int, str]:
            code, [info] = sources_json(shop_dsn)
            return code, str(info["trigger_state"])

        conn.execute(f'ALTER TABLE shop.orders DISABLE TRIGGER "{name}"')
        assert state() == (1, f"disabled: {name}")
        table = run("sources", "--dsn", shop_dsn)
        assert table.exit_code == 1 and "disabled" in table.output
        conn.execute(f'ALTER TABLE shop.orders ENABLE REPLICA TRIGGER "{name}"')
        assert state() == (1, f"replica only: {name}")
        conn.execute(f'ALTER TABLE shop.orders ENABLE ALWAYS TRIGGER "{name}"')
        assert state() == (0, "enabled")
        conn.execute(f'DROP TRIGGER "{name}" ON shop.orders')
        assert state() == (1, f"missing: {name}")
        conn.execute("ALTER TABLE shop.orders RENAME TO orders_old")
        code, [info] = sources_json(shop_dsn)
        assert code == 1 and info["table_exists"] is False
        assert "(on shop.orders_old: renamed?)" in info["trigger_state"]
        conn.execute("DROP TABLE shop.orders_old CASCADE")
        assert state() == (1, "table gone")


def test_attach_error_is_the_sql_functions_message_with_its_fix(shop_dsn: str) -> None:
    out = run(*attach_args(shop_dsn, **{"--issue-when": "NEW.nope = 1"}))
    assert out.exit_code == 2
    assert "error: issue_when is not a valid condition on shop.orders" in out.output
    assert "fix: Write a boolean expression over NEW.<column>" in out.output
    out = run(*attach_args(shop_dsn, **{"--document": "shop.customers"}))
    assert out.exit_code == 2 and "lacks column(s): order_ref" in out.output
    missing = run(*attach_args(shop_dsn)[:-2])
    assert missing.exit_code == 2 and "Missing option '--seller'" in missing.output


def test_preview_shows_the_invoice_and_enqueues_nothing(shop_dsn: str) -> None:
    oid = new_order(
        shop_dsn, [("P-LAPTOP", "1", "3099.00", "99.00"), ("P-TEA", "2", "268.00", "0")]
    )
    with psycopg.connect(shop_dsn, autocommit=True) as conn:  # names are data, not markup
        conn.execute("UPDATE shop.products SET name = '[bold]特价[/bold] 龙井' WHERE sku = 'P-TEA'")
    before = count_requests(shop_dsn)
    out = run("preview", "--dsn", shop_dsn, "--source", "shop", "--order", oid)
    assert out.exit_code == 0, out.output
    assert f"order {oid} of source shop" in out.output
    assert "issue_when does not hold now" in out.output
    assert "笔记本电脑 (discount)" in out.output
    assert "[bold]特价[/bold] 龙井" in out.output
    assert "ok: 1 invoice(s), 3,536.00 incl. tax; nothing was enqueued" in out.output
    assert count_requests(shop_dsn) == before

    data = json.loads(
        run("preview", "--dsn", shop_dsn, "--source", "shop", "--order", oid, "--json").output
    )
    assert data["ok"] is True and data["problems"] == []
    [invoice] = data["invoices"]
    assert invoice["total_incl_tax"] == "3536.00"
    assert [Decimal(line["tax_rate"]) for line in invoice["lines"]] == [Decimal("0.13")] * 2 + [
        Decimal("0.09")
    ]
    assert {r["item_ref"] for r in data["document"]} == {"P-LAPTOP", "P-TEA"}

    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute("UPDATE shop.orders SET status = 'shipped' WHERE order_id = %s", (oid,))
    shipped = run("preview", "--dsn", shop_dsn, "--source", "shop", "--order", oid, "--raw")
    assert shipped.exit_code == 0
    assert "issue_when holds now" in shipped.output
    assert "already captured: request" in shipped.output and "is pending" in shipped.output
    assert '"item_ref": "P-LAPTOP"' in shipped.output


def test_preview_lists_every_problem_with_its_fix_and_exits_1(shop_dsn: str) -> None:
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO shop.products VALUES ('P-NEW', '新品', 'x', '个', NULL, 10), "
            "('P-NEW2', '新品2', 'x', '个', NULL, 10)"
        )
    oid = new_order(shop_dsn, [("P-NEW", "1", "10", "0"), ("P-NEW2", "-1", "10", "0")])
    out = run("preview", "--dsn", shop_dsn, "--source", "shop", "--order", oid)
    assert out.exit_code == 1, out.output
    assert "the order would fail (MAPPING)" in out.output
    assert "INSERT INTO cdc_invoice.item_tax" in out.output
    assert "'P-NEW'" in out.output and "'P-NEW2'" in out.output
    assert count_requests(shop_dsn) == 0
    data = json.loads(
        run("preview", "--dsn", shop_dsn, "--source", "shop", "--order", oid, "--json").output
    )
    assert data["ok"] is False and data["error_code"] == "MAPPING"
    assert {p["field"] for p in data["problems"]} >= {"item_ref"}


def test_preview_of_an_unknown_order_or_source_is_a_clear_error(shop_dsn: str) -> None:
    gone = run("preview", "--dsn", shop_dsn, "--source", "shop", "--order", "424242")
    assert gone.exit_code == 2
    assert "order '424242' not found in shop.orders" in gone.output
    assert "fix: SELECT order_id FROM shop.orders" in gone.output
    bad = run("preview", "--dsn", shop_dsn, "--source", "shop", "--order", "SO-1")
    assert bad.exit_code == 2 and "is not a valid bigint" in bad.output
    nope = run("preview", "--dsn", shop_dsn, "--source", "nope", "--order", "1")
    assert nope.exit_code == 2 and "source 'nope' is not attached" in nope.output


def test_commands_on_a_database_without_cdc_invoice_say_install_first(fresh_dsn: str) -> None:
    out = run("sources", "--dsn", fresh_dsn)
    assert out.exit_code == 2
    assert "fix: install cdc-invoice first" in out.output


def test_preview_shows_the_remark_and_warns_of_a_bad_credit_code(shop_dsn: str) -> None:
    # C001's 91330106MA2B0001XY: GB 32100-2015 gives check character N, not Y; a 普票 is still
    # issued (warned), while the seller's remark template fills the 备注
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute("UPDATE cdc_invoice.seller SET remark_template = '订单 {order_ref}'")
    oid = new_order(shop_dsn, [("P-TEA", "1", "268.00", "0")])
    out = run("preview", "--dsn", shop_dsn, "--source", "shop", "--order", oid)
    assert out.exit_code == 0, out.output
    assert f"备注 (remark): 订单 {oid}" in out.output
    assert "warning: buyer tax number 91330106MA2B0001XY does not look like a valid" in " ".join(
        out.output.split()
    )
    data = json.loads(
        run("preview", "--dsn", shop_dsn, "--source", "shop", "--order", oid, "--json").output
    )
    assert data["invoices"][0]["remark"] == f"订单 {oid}"
    assert [w["field"] for w in data["warnings"]] == ["buyer_tax_number"]
