"""The seller's clerk (开票人) has no default: attach and preview say so before an order fails.

requestBillingNew: "clerk String Y 张三 20 开票员（数电票时需要传入和开票登录账号对应的开票员姓名）".
"""

from __future__ import annotations

import psycopg

from cdc_invoice.db.queries import sql_file


def warnings_of(conn: psycopg.Connection[tuple[object, ...]]) -> list[tuple[str, str]]:
    """(message, hint) of every WARNING the connection receives (a Diagnostic is only valid
    inside the handler, so its fields are copied there)."""
    seen: list[tuple[str, str]] = []

    def keep(n: psycopg.errors.Diagnostic) -> None:
        if n.severity == "WARNING":
            seen.append((n.message_primary or "", n.message_hint or ""))

    conn.add_notice_handler(keep)
    return seen


def test_attach_warns_when_the_seller_has_no_clerk(installed_dsn: str) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        notices = warnings_of(conn)
        conn.execute(
            "INSERT INTO cdc_invoice.seller (seller_id, tax_number, name) "
            "VALUES ('main', '339902999999789113', '航信培训企业789113')"
        )
        conn.execute(sql_file("examples/demo_shop.sql"))  # its seller row yields to ours
        clerk = conn.execute("SELECT clerk FROM cdc_invoice.seller").fetchone()
    assert clerk == (None,)
    assert notices == [
        (
            "seller main has no clerk (开票人): its orders will fail until it is set",
            "UPDATE cdc_invoice.seller SET clerk = '<开票员姓名>' WHERE seller_id = 'main';",
        )
    ]


def test_attach_is_quiet_when_the_seller_has_a_clerk(installed_dsn: str) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        notices = warnings_of(conn)
        conn.execute(sql_file("examples/demo_shop.sql"))
    assert notices == []
