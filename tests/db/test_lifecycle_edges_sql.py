"""Issue 13, holes 6-9 and the delivery phone of hole 4, in SQL against a real PostgreSQL:
cancel(), attach()'s unique order key, concurrent request_* on one order, the installation tag
bound to its database (retag), claims limited to the daemon's sellers, `health`/`status`."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cdc_invoice.db import schema
from cdc_invoice.db.repository import Repository
from cdc_invoice.errors import InstallationCopied

Conn = psycopg.Connection[tuple[Any, ...]]


def ci_error(conn: Conn, query: str, params: Any = None) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(query, params)
    err = info.value
    assert err.sqlstate is not None and err.sqlstate.startswith("CI"), err
    assert err.diag.message_hint, "every CI error says how to fix it"
    return err


def request(conn: Conn, **values: Any) -> int:
    cols = {"source": "shop", "order_ref": uuid.uuid4().hex[:8], "kind": "issue", **values}
    row = conn.execute(
        sql.SQL("INSERT INTO cdc_invoice.request ({}) VALUES ({}) RETURNING id").format(
            sql.SQL(", ").join(map(sql.Identifier, cols)),
            sql.SQL(", ").join(sql.Placeholder() * len(cols)),
        ),
        list(cols.values()),
    ).fetchone()
    assert row is not None
    return int(row[0])


def invoice(conn: Conn, request_id: int, order_ref: str, part: int = 1) -> str:
    number = f"2633{uuid.uuid4().int % 10**16:016d}"
    conn.execute(
        "INSERT INTO cdc_invoice.invoice (request_id, part, source, order_ref, seller_id,"
        " invoice_number, kind, platform_serial, platform_order_no, issued_at, buyer_name,"
        " total_excl_tax, total_tax, total_incl_tax)"
        " VALUES (%s, %s, 'shop', %s, 'main', %s, 'blue', %s, %s, now(), 'B', 100, 13, 113)",
        (request_id, part, order_ref, number, "S" + number, f"ORD{number}{part:02d}"),
    )
    return number


# --- hole 6: cancel -------------------------------------------------------------------------


def test_cancel_a_failed_request_keeps_the_reason_and_leaves_the_failure_reports(
    installed_dsn: str,
) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        rid = request(
            conn,
            state="failed",
            attempt=1,
            platform_order_no="CITEST000000000001",
            last_error="buyer unknown",
            error_code="MAPPING",
        )
        assert conn.execute(
            "SELECT cdc_invoice.cancel(%s, 'customer cancelled the order')", (rid,)
        ).fetchone() == (rid,)
        state, err, code, hint = (
            conn.execute(
                "SELECT state, last_error, error_code, hint FROM cdc_invoice.request WHERE id = %s",
                (rid,),
            ).fetchone()
            or (None,) * 4
        )
        assert state == "cancelled" and code == "CANCELLED"
        assert "customer cancelled the order" in err and f"retry({rid})" in hint
        detail = conn.execute(
            "SELECT detail FROM cdc_invoice.event WHERE request_id = %s"
            " AND event = 'request.cancelled'",
            (rid,),
        ).fetchone()
        assert detail is not None
        assert detail[0]["was"] == "failed" and detail[0]["last_error"] == "buyer unknown"
        for view in ("report_failures", "report_open"):
            assert conn.execute(
                sql.SQL("SELECT count(*) FROM cdc_invoice.{} WHERE request_id = %s").format(
                    sql.Identifier(view)
                ),
                (rid,),
            ).fetchone() == (0,), view
        # a cancelled request is finished: cancelling again is refused, retry() brings it back
        ci_error(conn, "SELECT cdc_invoice.cancel(%s, 'again')", (rid,))
        conn.execute("SELECT cdc_invoice.retry(%s)", (rid,))
        assert conn.execute(
            "SELECT state FROM cdc_invoice.request WHERE id = %s", (rid,)
        ).fetchone() == ("pending",)


def test_cancel_a_pending_request_never_sent(installed_dsn: str) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        rid = request(conn)
        conn.execute("SELECT cdc_invoice.cancel(%s, 'duplicate order')", (rid,))
        assert conn.execute(
            "SELECT state FROM cdc_invoice.request WHERE id = %s", (rid,)
        ).fetchone() == ("cancelled",)


@pytest.mark.parametrize(
    "values",
    [
        {"state": "claimed", "attempt": 1, "platform_order_no": "CITEST000000000002"},
        {"state": "submitted", "attempt": 1, "platform_order_no": "CITEST000000000003"},
        # released after a retryable error: its first try may have reached the platform
        {"state": "pending", "attempt": 1, "platform_order_no": "CITEST000000000004"},
        # part 1 accepted at the platform, part 2 refused
        {
            "state": "failed",
            "attempt": 1,
            "platform_order_no": "CITEST000000000005",
            "progress": psycopg.types.json.Jsonb({"parts": [{"part": 1, "serial": "S1"}]}),
        },
        # a reversal waiting on a red-letter slip at the platform
        {
            "state": "failed",
            "kind": "reverse",
            "seq": 2,
            "progress": psycopg.types.json.Jsonb({"stage": "slip", "bill_id": "B1"}),
        },
    ],
    ids=["claimed", "submitted", "pending-tried", "failed-with-parts", "failed-with-slip"],
)
def test_cancel_is_refused_for_anything_that_may_be_at_the_platform(
    installed_dsn: str, values: dict[str, Any]
) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        rid = request(conn, **values)
        err = ci_error(conn, "SELECT cdc_invoice.cancel(%s, 'give up')", (rid,))
        assert err.sqlstate == "CI006"
        assert conn.execute(
            "SELECT state FROM cdc_invoice.request WHERE id = %s", (rid,)
        ).fetchone() == (values["state"],)


def test_cancel_is_refused_after_a_lost_answer_unless_the_platform_refused_the_number(
    installed_dsn: str,
) -> None:
    """A try whose response was lost (request.retry with unknown_outcome) may have issued an
    invoice under the order number: cancelling would hide it. A later refusal of that number
    (E9…, not E9106) proves nothing exists under it."""
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        ids = []
        for code in ("MAPPING", "E9101"):
            rid = request(
                conn, state="failed", attempt=2, platform_order_no=f"CITEST0{code}", error_code=code
            )
            conn.execute(
                "INSERT INTO cdc_invoice.event (request_id, event, detail) VALUES"
                " (%s, 'request.retry', '{\"unknown_outcome\": true}')",
                (rid,),
            )
            ids.append(rid)
        err = ci_error(conn, "SELECT cdc_invoice.cancel(%s, 'x')", (ids[0],))
        assert "answer to one of its tries was lost" in str(err.diag.message_primary)
        assert "reconcile" in str(err.diag.message_hint)
        conn.execute("SELECT cdc_invoice.cancel(%s, 'x')", (ids[1],))
        assert conn.execute(
            "SELECT state FROM cdc_invoice.request WHERE id = ANY(%s) ORDER BY id", (ids,)
        ).fetchall() == [("failed",), ("cancelled",)]


def test_cancel_refuses_a_request_with_an_invoice_and_bad_arguments(installed_dsn: str) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        rid = request(conn, order_ref="O1", state="failed", attempt=1)
        invoice(conn, rid, "O1")
        assert (
            "invoice"
            in ci_error(conn, "SELECT cdc_invoice.cancel(%s, 'x')", (rid,)).diag.message_primary
        )  # type: ignore[operator]
        assert ci_error(conn, "SELECT cdc_invoice.cancel(%s, '  ')", (rid,)).sqlstate == "CI001"
        assert ci_error(conn, "SELECT cdc_invoice.cancel(-1, 'x')").sqlstate == "CI005"


def test_the_operator_role_may_cancel(installed_dsn: str) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT has_function_privilege('cdc_invoice_operator',"
            " 'cdc_invoice.cancel(bigint, text)', 'EXECUTE'),"
            " has_function_privilege('cdc_invoice_reader',"
            " 'cdc_invoice.cancel(bigint, text)', 'EXECUTE')"
        ).fetchone()
        assert row == (True, False)


# --- hole 7: attach refuses a key that is not unique -----------------------------------------

ATTACH = """SELECT cdc_invoice.attach('t', 'inv.orders', 'id', $c$NEW.status = 'shipped'$c$,
                                      'inv.doc', 'main')"""


def attach_to(conn: Conn, table_ddl: str) -> None:
    conn.execute(f"""
        CREATE SCHEMA inv;
        {table_ddl};
        CREATE VIEW inv.doc AS
          SELECT o.id AS order_ref, 'C1' AS customer_ref, 1 AS line_no, 'ITEM' AS item_ref,
                 '商品' AS item_name, 1 AS quantity, 10 AS unit_price FROM inv.orders o;
        INSERT INTO cdc_invoice.seller (seller_id, tax_number, name)
        VALUES ('main', '339902999999789113', '测试销方');
    """)
    conn.execute(ATTACH)


@pytest.mark.parametrize(
    "ddl",
    [
        "CREATE TABLE inv.orders (id int, status text)",
        "CREATE TABLE inv.orders (id int, status text); CREATE INDEX ON inv.orders (id)",
        "CREATE TABLE inv.orders (id int, status text, UNIQUE (id, status))",
        "CREATE TABLE inv.orders (id int, status text);"
        " CREATE UNIQUE INDEX ON inv.orders (id) WHERE status = 'shipped'",
        "CREATE TABLE inv.orders (id int, status text); CREATE UNIQUE INDEX ON inv.orders ((id + 0))",
    ],
    ids=["no-index", "plain-index", "composite-unique", "partial-unique", "expression-unique"],
)
def test_attach_refuses_an_order_key_that_is_not_unique(installed_dsn: str, ddl: str) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            attach_to(conn, ddl)
        assert info.value.sqlstate == "CI001"
        assert "not unique" in str(info.value.diag.message_primary)
        assert info.value.diag.message_hint == (
            "ALTER TABLE inv.orders ADD UNIQUE (id); -- fails, listing them, if two orders"
            " share a key: the key must name one order"
        )
        assert conn.execute("SELECT count(*) FROM cdc_invoice.source").fetchone() == (0,)


@pytest.mark.parametrize(
    "ddl",
    [
        "CREATE TABLE inv.orders (id int PRIMARY KEY, status text)",
        "CREATE TABLE inv.orders (id int UNIQUE, status text)",
        "CREATE TABLE inv.orders (id int, status text); CREATE UNIQUE INDEX ON inv.orders (id)"
        " INCLUDE (status)",
        "CREATE TABLE inv.orders (id int PRIMARY KEY, status text) PARTITION BY RANGE (id);"
        " CREATE TABLE inv.orders_1 PARTITION OF inv.orders FOR VALUES FROM (0) TO (1000)",
    ],
    ids=["primary-key", "unique-constraint", "unique-index-include", "partitioned-by-the-key"],
)
def test_attach_accepts_a_unique_order_key(installed_dsn: str, ddl: str) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        attach_to(conn, ddl)
        assert conn.execute("SELECT count(*) FROM cdc_invoice.source").fetchone() == (1,)


def test_attach_refuses_a_table_partitioned_by_another_column(installed_dsn: str) -> None:
    """PostgreSQL puts the partition key in every unique index: (id, day) lets one id exist
    once per day, and both would be invoiced as one order."""
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            attach_to(
                conn,
                "CREATE TABLE inv.orders (id int, day date, status text, PRIMARY KEY (id, day))"
                " PARTITION BY RANGE (day)",
            )
        assert info.value.sqlstate == "CI001"
        assert "partitioned" in str(info.value.diag.message_hint)
        assert "PARTITION BY RANGE/LIST/HASH (id)" in str(info.value.diag.message_hint)


def test_a_source_attached_before_the_check_keeps_capturing_through_upgrades(
    installed_dsn: str,
) -> None:
    """Every upgrade re-attaches every source (reattach). One attached with a non-unique key
    before attach() checked it (here: its unique constraint dropped since) must not make the
    upgrade fail or stop its capture: it is refreshed with a warning naming the fix, while a
    new source on that key is still refused."""
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        attach_to(conn, "CREATE TABLE inv.orders (id int CONSTRAINT k UNIQUE, status text)")
        conn.execute("ALTER TABLE inv.orders DROP CONSTRAINT k")
        # As after an upgrade of the package (an installed function differs from this
        # version's): only then does install re-attach the sources.
        body = conn.execute(
            "SELECT pg_get_functiondef('cdc_invoice._check_condition(regclass,text,text)'"
            "::regprocedure)"
        ).fetchone()
        assert body is not None
        conn.execute(str(body[0]).replace("RETURN true;", "RETURN true; -- older"))
    result = schema.install(installed_dsn)  # an upgrade re-attaches every source
    assert any(
        "WARNING: order_key id is not unique (fix: ALTER TABLE inv.orders ADD UNIQUE (id);" in n
        for n in result.notes
    ), result.notes
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO inv.orders VALUES (1, 'shipped')")
        assert conn.execute(
            "SELECT order_ref FROM cdc_invoice.request WHERE source = 't'"
        ).fetchall() == [("1",)]
        err = ci_error(
            conn,
            ATTACH.replace("'t'", "'t2'"),
        )
        assert err.sqlstate == "CI001" and "not unique" in str(err.diag.message_primary)


# --- hole 4 (delivery phone) and hole 9 (concurrent requests on one order) -------------------


def test_request_delivery_refuses_a_phone_the_platform_cannot_deliver_to(
    installed_dsn: str,
) -> None:
    """deliveryInvoice (诺诺开放平台诺税通saas发票重新交付接口): phone is a mobile number of at
    most 11 characters. 'abc' used to be queued and crash the worker on every lease."""
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        rid = request(conn, order_ref="O1", state="done")
        number = invoice(conn, rid, "O1")
        for bad in ("abc", "0571-7777777", "138001380001", "2380013800"):
            err = ci_error(conn, "SELECT cdc_invoice.request_delivery(%s, NULL, %s)", (number, bad))
            assert err.sqlstate == "CI001" and "mobile" in str(err.diag.message_primary)
        assert conn.execute(
            "SELECT count(*) FROM cdc_invoice.request WHERE kind = 'deliver'"
        ).fetchone() == (0,)
        conn.execute("SELECT cdc_invoice.request_delivery(%s, NULL, ' 13800138000 ')", (number,))
        params = conn.execute(
            "SELECT params FROM cdc_invoice.request WHERE kind = 'deliver'"
        ).fetchone()
        assert params is not None and params[0]["phone"] == "13800138000"


def test_the_upgrade_fails_a_queued_delivery_to_a_bad_phone_with_the_reason(
    fresh_dsn: str,
) -> None:
    """A delivery to 'abc' queued before request_delivery() checked the phone crashed the
    worker on every lease: the upgrade to version 5 fails it with the reason; others stay."""
    from cdc_invoice.db.queries import migrations, sql_file

    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        for version, name in migrations():
            if version < 5:
                conn.execute(sql_file(name))
        bad = request(
            conn, kind="deliver", seq=2, params=psycopg.types.json.Jsonb({"phone": "abc"})
        )
        good = request(
            conn, kind="deliver", seq=2, params=psycopg.types.json.Jsonb({"phone": "13800138000"})
        )
        done = request(
            conn,
            kind="deliver",
            seq=2,
            state="done",
            params=psycopg.types.json.Jsonb({"phone": "x"}),
        )
    assert schema.install(fresh_dsn).after == schema.latest_version()
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        rows = dict(
            conn.execute(
                "SELECT id, (state, error_code, last_error) FROM cdc_invoice.request"
            ).fetchall()
        )
        assert rows[bad][:2] == ("failed", "INVALID_PHONE") and "'abc'" in rows[bad][2]
        assert rows[good][0] == "pending" and rows[done][0] == "done"
        assert conn.execute(
            "SELECT count(*) FROM cdc_invoice.report_failures WHERE request_id = %s", (bad,)
        ).fetchone() == (1,)
        assert conn.execute(
            "SELECT request_id FROM cdc_invoice.event WHERE event = 'request.failed'"
        ).fetchall() == [(bad,)]
        schema.check_installation(conn)  # the upgraded database is bound to itself


def test_two_concurrent_requests_on_one_order_both_succeed(installed_dsn: str) -> None:
    """Two parts of a split order, a delivery each, in two transactions at once: both used to
    compute the same next seq and the second ended in a raw 23505 (unique_violation)."""
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        rid = request(conn, order_ref="O1", state="done")
        part1, part2 = invoice(conn, rid, "O1", 1), invoice(conn, rid, "O1", 2)
    errors: list[BaseException] = []
    with psycopg.connect(installed_dsn) as first:
        first.execute("SELECT cdc_invoice.request_delivery(%s, 'a@example.com')", (part1,))

        def second() -> None:
            try:
                with psycopg.connect(installed_dsn, autocommit=True) as conn:
                    conn.execute(
                        "SELECT cdc_invoice.request_delivery(%s, 'b@example.com')", (part2,)
                    )
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)  # the second is waiting on the first
        first.commit()
        t.join(10)
    assert errors == []
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        seqs = conn.execute(
            "SELECT seq FROM cdc_invoice.request WHERE kind = 'deliver' ORDER BY seq"
        ).fetchall()
        assert seqs == [(2,), (3,)]


def test_a_request_on_one_part_and_a_whole_order_request_do_not_deadlock(
    installed_dsn: str,
) -> None:
    """The daemon's whole-order reversal asks for every part in one transaction while an
    operator asks for one part: each used to hold one invoice's row and wait for the other's
    (40P01, deadlock detected). The order's lock is now taken before any invoice's row."""
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        rid = request(conn, order_ref="O1", state="done")
        part1, part2 = invoice(conn, rid, "O1", 1), invoice(conn, rid, "O1", 2)
    errors: list[BaseException] = []
    with psycopg.connect(installed_dsn) as whole:
        whole.execute("SELECT cdc_invoice.request_delivery(%s, 'a@example.com')", (part1,))

        def one_part() -> None:
            try:
                with psycopg.connect(installed_dsn, autocommit=True) as conn:
                    conn.execute(
                        "SELECT cdc_invoice.request_delivery(%s, 'b@example.com')", (part2,)
                    )
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        t = threading.Thread(target=one_part)
        t.start()
        time.sleep(0.5)  # the operator's request is waiting
        try:
            whole.execute("SELECT cdc_invoice.request_delivery(%s, 'a@example.com')", (part2,))
            whole.commit()
        except psycopg.Error as exc:
            errors.append(exc)
        t.join(10)
    assert errors == []
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM cdc_invoice.request WHERE kind = 'deliver'"
        ).fetchone() == (3,)


# --- hole 9: the installation tag is bound to its database -----------------------------------


@pytest.fixture
def copy_dsn(admin_dsn: str, installed_dsn: str) -> Iterator[str]:
    """A copy of an installed database, as CREATE DATABASE … TEMPLATE (or a restore) makes it."""
    name = f"cdc_copy_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name),
                sql.Identifier(psycopg.conninfo.conninfo_to_dict(installed_dsn)["dbname"]),  # type: ignore[arg-type]
            )
        )
    yield psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_a_copy_of_the_database_is_refused_until_retagged(
    installed_dsn: str, copy_dsn: str
) -> None:
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        original = schema.check_installation(conn)
    with psycopg.connect(copy_dsn, autocommit=True) as conn:
        with pytest.raises(InstallationCopied) as info:
            schema.check_installation(conn)
        assert info.value.tag == original and "cdc_invoice.retag()" in str(info.value.hint)
        message = conn.execute("SELECT cdc_invoice.retag()").fetchone()
        assert message is not None and original in message[0]
        tag = schema.check_installation(conn)
        assert tag != original and len(tag) == 4
        assert conn.execute(
            "SELECT detail ->> 'old_tag' FROM cdc_invoice.event"
            " WHERE event = 'installation.retagged' ORDER BY id DESC LIMIT 1"
        ).fetchone() == (original,)
        # bound here now: retag again changes nothing unless forced (a physical copy)
        assert ci_error(conn, "SELECT cdc_invoice.retag()").sqlstate == "CI006"
        conn.execute("SELECT cdc_invoice.retag(force => true)")
        assert schema.check_installation(conn) not in (tag, original)
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        assert schema.check_installation(conn) == original  # the original is untouched
        row = conn.execute(
            "SELECT has_function_privilege(r, 'cdc_invoice.retag(boolean)', 'EXECUTE')"
            " FROM unnest(ARRAY['cdc_invoice_operator', 'cdc_invoice_daemon']) r"
        ).fetchall()
        assert row == [(False,), (False,)]


# --- hole 8: a daemon claims only the work of sellers it has credentials for ----------------


async def test_claim_takes_only_the_sellers_of_this_daemon(shop_dsn: str) -> None:
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO cdc_invoice.seller (seller_id, tax_number, name)"
            " VALUES ('other', '339902999999789114', '其他销方')"
        )
        conn.execute("UPDATE cdc_invoice.source SET seller_id = 'other' WHERE source = 'shop'")
        theirs = request(conn, source="shop", document=psycopg.types.json.Json([]))
        gone = request(conn, source="detached", document=psycopg.types.json.Json([]))
    repo = await Repository.open(shop_dsn, "d-main", size=1)
    try:
        await repo.pool.wait()
        got = await repo.claim(10, 30, sellers=["main"])
        # a detached source's request is anyone's (it fails with the reason, never waits)
        assert [r.id for r in got] == [gone]
        got = await repo.claim(10, 30, sellers=["main", "other"])
        assert [r.id for r in got] == [theirs]
    finally:
        await repo.close()


# --- hole 9: one daemon per daemon_id ---------------------------------------------------------


async def test_a_daemon_id_in_use_is_refused_unless_its_holder_stopped_heartbeating(
    installed_dsn: str,
) -> None:
    """A daemon SIGKILLed while its link was half-open leaves its session, and the lock, on
    the server until the server's keepalive notices (hours by default). Its replacement ends
    that session once the dead daemon's heartbeat is 30 s old; a live daemon is never taken
    over."""
    from cdc_invoice.daemon.identity import DaemonLock
    from cdc_invoice.errors import DaemonIdInUse

    first = DaemonLock(installed_dsn, "same")
    await first.acquire()
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO cdc_invoice.daemon (daemon_id, host, pid, version) "
            "VALUES ('same', 'h', 1, 'v')"
        )
        with pytest.raises(DaemonIdInUse) as info:
            await DaemonLock(installed_dsn, "same").acquire()
        assert info.value.daemon_id == "same" and "daemon_id" in str(info.value.hint)
        other = DaemonLock(installed_dsn, "other")
        await other.acquire()  # another id is free
        await other.release()

        conn.execute("UPDATE cdc_invoice.daemon SET heartbeat_at = now() - interval '31 seconds'")
        second = DaemonLock(installed_dsn, "same")
        await second.acquire()
        assert first._conn is not None
        with pytest.raises(psycopg.OperationalError):
            await first._conn.execute("SELECT 1")  # the stale session was ended
        await second.release()
        await first.release()


async def test_the_daemons_whole_order_reversal_racing_an_operator_never_hits_a_raw_error(
    installed_dsn: str,
) -> None:
    """attach(reverse_when)'s whole-order reversal becomes one request_reversal per part in
    the daemon's transaction; an operator reversing part 2 at that moment used to make the
    daemon's insert collide on the next seq: a raw 23505 that refused() re-raised through the
    worker. Now the two queue on the order's lock, and the daemon gets the CI refusal (part 2
    is busy), which its handler records as the reason."""
    import asyncio

    from cdc_invoice.db.repository import Fence
    from cdc_invoice.errors import RequestRefused

    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        rid = request(conn, order_ref="O1", state="done")
        invoice(conn, rid, "O1", 1)
        part2 = invoice(conn, rid, "O1", 2)
        request(
            conn, order_ref="O1", kind="reverse", params=psycopg.types.json.Jsonb({"reason": "1"})
        )
    repo = await Repository.open(installed_dsn, "d", size=1)
    try:
        await repo.pool.wait()
        [claimed] = await repo.claim(1, 30, kinds=["reverse"])
        with psycopg.connect(installed_dsn) as operator:
            operator.execute("SELECT cdc_invoice.request_reversal(%s, 'sales_return')", (part2,))
            expand = asyncio.ensure_future(
                repo.expand_order_reversal(
                    Fence(claimed.id, claimed.attempt), "shop", "O1", "sales_return"
                )
            )
            await asyncio.sleep(0.5)  # the daemon's expansion waits for the operator's
            operator.commit()
        with pytest.raises(RequestRefused) as info:
            await expand
        assert "already has a request in progress" in info.value.message
    finally:
        await repo.close()
    with psycopg.connect(installed_dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM cdc_invoice.request WHERE kind = 'reverse' AND invoice_id IS NOT NULL"
        ).fetchone() == (1,)  # the operator's; the daemon's transaction left nothing half done
