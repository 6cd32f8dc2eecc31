"""attach() is injection-proof: any table, column, view and source name either attaches cleanly
(and captures) or fails with a clean CI error — never executes a piece of a name as SQL."""

from __future__ import annotations

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

# Quotes, semicolons, comment starts, spaces, backslashes, Chinese, dollar quotes.
ALPHABET = st.sampled_from([*list("abcXYZ_09 '\";-/*\\$()%{}单号数量订单"), "$$", "--", "/*"])


def names(max_bytes: int = 63) -> st.SearchStrategy[str]:
    return (
        st.lists(ALPHABET, min_size=1, max_size=40)
        .map("".join)
        .filter(lambda s: 0 < len(s.encode()) <= max_bytes and s.strip() != "" and "\x00" not in s)
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    table=names(),
    column=names(),
    view=names(),
    source=st.text(
        st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
        min_size=1,
        max_size=40,
    ),
)
def test_any_names_attach_cleanly_or_fail_cleanly(
    installed_dsn: str, table: str, column: str, view: str, source: str
) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.canary (x int)")
        conn.execute(
            "INSERT INTO cdc_invoice.seller (seller_id, tax_number, name) "
            "VALUES ('main', '339902999999789113', 's') ON CONFLICT DO NOTHING"
        )
        conn.execute("CREATE SCHEMA fz")
        conn.execute("CREATE SCHEMA fzv")
        try:
            t, c, v = (
                sql.Identifier("fz", table),
                sql.Identifier(column),
                sql.Identifier("fzv", view),
            )
            conn.execute(
                sql.SQL("CREATE TABLE {} ({} bigint PRIMARY KEY, status text)").format(t, c)
            )
            conn.execute(
                sql.SQL(
                    "CREATE VIEW {} AS SELECT {} AS order_ref, 'C1' AS customer_ref, 1 AS line_no, "
                    "'x' AS item_name, 1 AS quantity, 1 AS unit_price FROM {}"
                ).format(v, c, t)
            )
            regclass = conn.execute(
                "SELECT %s::regclass::text, %s::regclass::text",
                (
                    f"fz.{sql.Identifier(table).as_string(conn)}",
                    f"fzv.{sql.Identifier(view).as_string(conn)}",
                ),
            ).fetchone()
            assert regclass is not None
            when = sql.SQL("NEW.status = 'done' AND NEW.{} > 0").format(c).as_string(conn)
            try:
                conn.execute(
                    "SELECT cdc_invoice.attach(%s, %s, %s, %s, %s, 'main')",
                    (source, regclass[0], column, when, regclass[1]),
                )
            except psycopg.Error as exc:
                # The only acceptable failures are ours, with a message and a hint.
                assert exc.sqlstate and exc.sqlstate.startswith("CI"), exc
                assert exc.diag.message_hint
            else:
                conn.execute(sql.SQL("INSERT INTO {} VALUES (7, 'new')").format(t))
                conn.execute(sql.SQL("UPDATE {} SET status = 'done'").format(t))
                row = conn.execute(
                    "SELECT source, order_ref, state FROM cdc_invoice.request WHERE source = %s",
                    (source,),
                ).fetchone()
                assert row == (source, "7", "pending")
                conn.execute("SELECT cdc_invoice.detach(%s)", (source,))
            assert conn.execute("SELECT to_regclass('public.canary')").fetchone() != (None,)
        finally:
            conn.execute("DROP SCHEMA fz, fzv CASCADE")
            conn.execute("DELETE FROM cdc_invoice.request")
