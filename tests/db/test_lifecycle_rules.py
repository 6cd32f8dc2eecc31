"""The request lifecycle off the happy path (issue 13 holes 1-5): never two invoices for one
order part, every request ends, a returned order nets to zero.

Real PostgreSQL, the real daemon code (Worker, Issuer, Lifecycle, Repository) and a scripted
platform that answers as the Nuonuo docs say it can: its answers go through the adapter's own
parser (payload.parse_invoice), so status codes are mapped exactly as in production. Each test
names the rule of docs/reliability.md ("Lifecycle rules") it checks.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from cdc_invoice.daemon.issuer import Issuer
from cdc_invoice.daemon.worker import Worker
from cdc_invoice.db.repository import Repository
from cdc_invoice.errors import OutcomeUnknown, ProviderRejected
from cdc_invoice.invoice.model import InvoiceDraft, InvoiceLine, Seller
from cdc_invoice.providers.base import InvoiceRef, IssueAccepted, PlatformInvoice, RedSlip
from cdc_invoice.providers.nuonuo import payload


@dataclass
class Held:
    """One invoice as the scripted platform holds it (by our order number)."""

    serial: str
    order_no: str
    draft: InvoiceDraft
    status: str  # Nuonuo status code: 20, 2, 22, 24, or "2-" (issued, number missing)
    reissues: int = 0


@dataclass
class Platform:
    """A Provider whose answers a test scripts. ``refuse(part, order_no)`` -> a code refuses the
    issue outright; ``outcome(part, order_no)`` -> the status an accepted invoice shows;
    ``lost(part)`` -> the invoice is created but the answer is lost; ``after_reissue`` -> the
    status after a reInvoice, or a code to refuse it with."""

    refuse: Callable[[int, str], str | None] = lambda part, no: None
    outcome: Callable[[int, str], str] = lambda part, no: "2"
    lost: Callable[[int], bool] = lambda part: False
    after_reissue: Callable[[Held], str] = lambda held: "2"
    crash: Callable[[InvoiceDraft], bool] = lambda draft: False
    number: Callable[[Held], str] = lambda held: f"2633{int(held.serial[1:]):016d}"
    held: dict[str, Held] = field(default_factory=dict)
    issue_calls: Counter[str] = field(default_factory=Counter)
    reissue_calls: Counter[str] = field(default_factory=Counter)
    max_query_batch: int = 50

    async def issue(self, seller: Seller, draft: InvoiceDraft, order_no: str) -> IssueAccepted:
        self.issue_calls[order_no] += 1
        if self.crash(draft):
            raise RuntimeError("something nobody foresaw")
        if order_no in self.held:
            raise ProviderRejected("orderNo already used", code="E9106")
        code = self.refuse(draft.part, order_no)
        if code:
            raise ProviderRejected(f"refused part {draft.part}", code=code)
        held = Held(
            f"S{len(self.held) + 1:06d}", order_no, draft, self.outcome(draft.part, order_no)
        )
        self.held[order_no] = held
        if self.lost(draft.part):
            raise OutcomeUnknown("the answer was lost")
        return IssueAccepted(order_no=order_no, serial=held.serial)

    async def reissue(self, seller: Seller, serial: str, order_no: str) -> IssueAccepted:
        held = self.held[order_no]
        self.reissue_calls[order_no] += 1
        if held.status != "22":
            raise ProviderRejected("发票已生成，无需再重试开票", code="E9100")
        held.reissues += 1
        answer = self.after_reissue(held)
        if answer.startswith("E"):
            raise ProviderRejected("同一流水号最多重试20次", code=answer)
        held.status = answer
        return IssueAccepted(order_no=order_no, serial=serial)

    def _answer(self, held: Held) -> PlatformInvoice:
        item: dict[str, Any] = {
            "serialNo": held.serial,
            "orderNo": held.order_no,
            "status": held.status.rstrip("-"),
            "payerName": held.draft.buyer.name,
            "exTaxAmount": str(held.draft.total_excl_tax),
            "taxAmount": str(held.draft.total_tax),
            "orderAmount": str(held.draft.total_incl_tax),
            "failCause": "税局返回未知异常" if held.status in ("22", "24") else "",
        }
        if held.status in ("2", "24"):
            item["allElectronicInvoiceNumber"] = self.number(held)
            item["invoiceTime"] = str(int(time.time() * 1000))
        return payload.parse_invoice(item)  # the adapter's own mapping of the status codes

    async def query_by_serials(
        self, seller: Seller, serials: Sequence[str]
    ) -> list[PlatformInvoice]:
        return [self._answer(h) for h in self.held.values() if h.serial in serials]

    async def query_by_order_nos(
        self, seller: Seller, order_nos: Sequence[str]
    ) -> list[PlatformInvoice]:
        return [self._answer(self.held[n]) for n in order_nos if n in self.held]

    def issued(self) -> list[Held]:
        return [h for h in self.held.values() if h.status in ("2", "24")]

    # Not used by these tests: a red-letter flow is covered end to end with the sandbox.
    async def request_red_slip(
        self,
        seller: Seller,
        blue: InvoiceRef,
        red_lines: Sequence[InvoiceLine] | None,
        reason: str,
        bill_id: str,
        red_order_no: str,
    ) -> str:
        raise NotImplementedError

    async def query_red_slip(self, seller: Seller, bill_id: str) -> RedSlip | None:
        raise NotImplementedError

    async def issue_red_from_slip(
        self, seller: Seller, blue: InvoiceRef, slip: RedSlip, red_order_no: str
    ) -> IssueAccepted:
        raise NotImplementedError

    async def void(self, seller: Seller, invoice: InvoiceRef, reason: str) -> None:
        raise NotImplementedError

    async def deliver(
        self, seller: Seller, invoice: InvoiceRef, email: str | None, phone: str | None
    ) -> None:
        raise NotImplementedError

    async def list_invoices(
        self, seller: Seller, start: datetime, end: datetime
    ) -> list[PlatformInvoice]:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


@asynccontextmanager
async def daemon(dsn: str, platform: Platform, **settings: Any) -> AsyncIterator[Issuer]:
    """The daemon's claim loop (Worker) over ``platform``, running until the block ends."""
    from cdc_invoice.daemon.handler import SellerCache

    repo = await Repository.open(dsn, "test-daemon", size=3)
    await repo.pool.wait()
    issuer = Issuer(
        repo,
        platform,
        SellerCache(repo, ttl=0.0),
        result_poll_seconds=0.0,
        max_backoff_seconds=0.01,
        **settings,
    )
    worker = Worker(repo, issuer, asyncio.Event(), concurrency=8, poll_interval=0.02)
    task = asyncio.create_task(worker.run())
    try:
        yield issuer
    finally:
        await worker.drain(5.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await repo.close()


def sql(dsn: str, query: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, args)
        return cur.fetchall() if cur.description else []


async def until(dsn: str, query: str, *args: object, timeout: float = 20.0) -> None:
    """Wait until ``query`` returns true (the daemon runs meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sql(dsn, query, *args)[0][0]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not reached in {timeout}s: {query} {args}: {requests(dsn)}")


def requests(dsn: str) -> list[tuple[Any, ...]]:
    return sql(
        dsn,
        "SELECT id, kind, state, error_code, last_error, platform_order_no, progress "
        "FROM cdc_invoice.request ORDER BY id",
    )


def ship(dsn: str, customer: str, lines: list[tuple[str, str, str]]) -> str:
    """Ship an order of the demo shop; the capture trigger enqueues its issue request."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO shop.orders (customer_id) VALUES (%s) RETURNING order_id", (customer,)
        ).fetchone()
        assert row is not None
        for n, (sku, qty, price) in enumerate(lines, start=1):
            conn.execute(
                "INSERT INTO shop.order_lines VALUES (%s, %s, %s, %s, %s, 0)",
                (row[0], n, sku, qty, price),
            )
        conn.execute("UPDATE shop.orders SET status = 'shipped' WHERE order_id = %s", (row[0],))
    return str(row[0])


def issue_request(dsn: str, order: str) -> tuple[Any, ...]:
    [row] = sql(
        dsn,
        "SELECT id, state, error_code, hint, platform_order_no, progress, generation "
        "FROM cdc_invoice.request WHERE kind = 'issue' AND order_ref = %s",
        order,
    )
    return row


def net_invoiced(dsn: str, order: str) -> Decimal:
    [(total,)] = sql(
        dsn,
        "SELECT coalesce(sum(total_incl_tax), 0) FROM cdc_invoice.invoice WHERE order_ref = %s",
        order,
    )
    return Decimal(total)


THREE_LINES = [("P-MOUSE", "1", "79.90"), ("P-PAPER", "2", "125.50"), ("P-TEA", "1", "268.00")]


@pytest.fixture
def split_shop(shop_dsn: str) -> str:
    """The demo shop with a seller that splits an order every two lines."""
    sql(shop_dsn, "UPDATE cdc_invoice.seller SET max_lines = 2")
    return shop_dsn


async def test_split_part_refused_then_retry_issues_only_that_part_anew(split_shop: str) -> None:
    """Rule: a part that reached the platform keeps its order number; only the refused part
    gets a new one (hole 1: the retry used to issue part 1 a second time)."""
    platform = Platform(refuse=lambda part, no: "E9121" if part == 2 else None)
    order = ship(split_shop, "C001", THREE_LINES)
    async with daemon(split_shop, platform):
        await until(split_shop, "SELECT bool_and(state = 'failed') FROM cdc_invoice.request")
        rid, _, code, hint, base, progress, _ = issue_request(split_shop, order)
        assert code == "PARTIAL_ISSUE" and "retry" in hint
        states = {p["part"]: (p["state"], p["order_no"]) for p in progress["parts"]}
        assert states == {1: ("accepted", base + "01"), 2: ("refused", base + "02")}
        platform.refuse = lambda part, no: None  # the DBA fixed the goods code
        sql(split_shop, "SELECT cdc_invoice.retry(%s)", rid)
        await until(split_shop, "SELECT bool_and(state = 'done') FROM cdc_invoice.request")
    part1, part2 = base + "01", platform.issued()[-1].order_no
    assert part2 != base + "02" and part2.endswith("02") and len(part2) == 20
    assert platform.issue_calls[part1] == 1, platform.issue_calls  # never issued twice
    assert sorted(h.order_no for h in platform.issued()) == sorted([part1, part2])
    rows = sql(
        split_shop,
        "SELECT part, platform_order_no FROM cdc_invoice.invoice WHERE order_ref = %s "
        "ORDER BY part",
        order,
    )
    assert rows == [(1, part1), (2, part2)]
    [(detail,)] = sql(
        split_shop, "SELECT detail FROM cdc_invoice.event WHERE event = 'request.retried'"
    )
    assert detail["snapshot"] == "kept" and "part(s) 1 reached the platform" in detail["why"]
    assert detail["renumbered_parts"] == [2]


async def test_part_issuing_while_another_fails_keeps_every_number(split_shop: str) -> None:
    """Variant of hole 1: part 1 still issuing (20) when part 2 has failed (22, its answer
    lost). 22 is re-issued under the same number (reInvoice, 开票重试 doc); when the platform
    will not (E9613) the request fails PARTIAL_ISSUE, never ISSUE_FAILED with a new number."""
    platform = Platform(
        outcome=lambda part, no: "20" if part == 1 else "22",
        lost=lambda part: part == 2,
        after_reissue=lambda held: "E9613",
    )
    order = ship(split_shop, "C002", THREE_LINES)
    async with daemon(split_shop, platform):
        await until(split_shop, "SELECT bool_and(state = 'failed') FROM cdc_invoice.request")
        rid, _, code, _, base, progress, _ = issue_request(split_shop, order)
        assert code == "PARTIAL_ISSUE", requests(split_shop)
        assert {p["part"]: p["order_no"] for p in progress["parts"]} == {
            1: base + "01",
            2: base + "02",
        }
        # The platform finishes part 1 and lets part 2 be re-issued: the retry adopts both.
        platform.held[base + "01"].status = "2"
        platform.after_reissue = lambda held: "2"
        sql(split_shop, "SELECT cdc_invoice.retry(%s)", rid)
        await until(split_shop, "SELECT bool_and(state = 'done') FROM cdc_invoice.request")
    assert issue_request(split_shop, order)[4] == base  # same numbers
    assert sorted(platform.held) == [base + "01", base + "02"]  # two invoices, not four
    assert all(n == 1 for n in platform.issue_calls.values()), platform.issue_calls
    assert platform.reissue_calls[base + "02"] >= 2


async def test_status_22_is_reissued_under_the_same_number(shop_dsn: str) -> None:
    """22 (开票失败) -> reInvoice with the same serial and order number, then issued."""
    platform = Platform(outcome=lambda part, no: "22", after_reissue=lambda held: "2")
    order = ship(shop_dsn, "C001", [("P-MOUSE", "1", "79.90")])
    async with daemon(shop_dsn, platform):
        await until(shop_dsn, "SELECT bool_and(state = 'done') FROM cdc_invoice.request")
    base = issue_request(shop_dsn, order)[4]
    assert list(platform.held) == [base + "01"] and platform.reissue_calls[base + "01"] == 1
    assert net_invoiced(shop_dsn, order) == Decimal("79.90")


async def test_status_24_is_an_issued_invoice_with_a_failed_seal(shop_dsn: str) -> None:
    """24 (开票成功签章失败) means the invoice exists (发票详情查询 doc): recorded at once as
    issued, flagged and alerted, never issued again (hole 3)."""
    platform = Platform(outcome=lambda part, no: "24")
    order = ship(shop_dsn, "C001", [("P-TEA", "1", "268.00")])
    async with daemon(shop_dsn, platform):
        await until(shop_dsn, "SELECT bool_and(state = 'done') FROM cdc_invoice.request")
    [(number, seal_failed, total)] = sql(
        shop_dsn,
        "SELECT invoice_number, seal_failed, total_incl_tax FROM cdc_invoice.invoice "
        "WHERE order_ref = %s",
        order,
    )
    assert seal_failed is True and total == Decimal("268.00")
    [held] = platform.issued()
    assert number == f"2633{int(held.serial[1:]):016d}"  # the number the platform gave
    [(detail,)] = sql(
        shop_dsn, "SELECT detail FROM cdc_invoice.event WHERE event = 'invoice.seal_failed'"
    )
    assert detail["invoice_number"] == number and detail["status"] == "24"
    assert sum(platform.issue_calls.values()) == 1 and not platform.reissue_calls


async def test_issued_without_number_polls_again_and_never_blocks_the_batch(
    shop_dsn: str,
) -> None:
    """A status-2 answer without number/time (hole 4) is not an invoice yet: poll again, bounded;
    the other requests polled in the same batch are recorded meanwhile."""
    bad = ship(shop_dsn, "C001", [("P-MOUSE", "1", "79.90")])
    good = ship(shop_dsn, "C002", [("P-TEA", "1", "268.00")])
    bad_ref: dict[str, str] = {}

    def outcome(part: int, no: str) -> str:
        return "2-" if no.startswith(bad_ref["base"]) else "2"

    platform = Platform(outcome=outcome)
    with psycopg.connect(shop_dsn, autocommit=True) as conn:  # the bad one's number, up front
        conn.execute(
            "UPDATE cdc_invoice.request SET platform_order_no = cdc_invoice.platform_order_no(id, 0)"
        )
    bad_ref["base"] = issue_request(shop_dsn, bad)[4]
    async with daemon(shop_dsn, platform):
        await until(
            shop_dsn,
            "SELECT state = 'done' FROM cdc_invoice.request WHERE order_ref = %s",
            good,
        )
        await until(
            shop_dsn,
            "SELECT state = 'failed' FROM cdc_invoice.request WHERE order_ref = %s",
            bad,
        )
    _, _, code, hint, _, progress, _ = issue_request(shop_dsn, bad)
    assert code == "OUTCOME_UNKNOWN" and "cdc-invoice reconcile" in hint
    assert progress["incomplete_polls"] == 20
    assert net_invoiced(shop_dsn, good) == Decimal("268.00") and net_invoiced(shop_dsn, bad) == 0


async def test_unexpected_errors_are_per_request_and_attempts_are_capped(shop_dsn: str) -> None:
    """An exception nobody foresaw fails only its own request, after [daemon] max_attempts
    tries, as OUTCOME_UNKNOWN with reconcile as the fix; its retry keeps the order number."""
    platform = Platform(crash=lambda draft: draft.total_incl_tax == Decimal("79.90"))
    bad = ship(shop_dsn, "C001", [("P-MOUSE", "1", "79.90")])
    good = ship(shop_dsn, "C002", [("P-TEA", "1", "268.00")])
    async with daemon(shop_dsn, platform, max_attempts=3):
        await until(
            shop_dsn, "SELECT count(*) = 2 FROM cdc_invoice.request WHERE done_at IS NOT NULL"
        )
    rid, state, code, hint, base, _, _ = issue_request(shop_dsn, bad)
    assert (state, code) == ("failed", "OUTCOME_UNKNOWN") and "cdc-invoice reconcile" in hint
    [(error,)] = sql(shop_dsn, "SELECT last_error FROM cdc_invoice.request WHERE id = %s", rid)
    assert "gave up after 3 attempts" in error and "RuntimeError" in error
    assert platform.issue_calls[base + "01"] == 3
    assert issue_request(shop_dsn, good)[1] == "done"
    sql(shop_dsn, "SELECT cdc_invoice.retry(%s)", rid)
    assert issue_request(shop_dsn, bad)[4] == base  # an unknown outcome never burns a number


async def test_an_invoice_that_cannot_be_recorded_ends_failed(shop_dsn: str) -> None:
    """The platform gives two orders the same invoice number: the second cannot be recorded
    (unique). It used to be polled for ever; now it is retried, capped, and fails."""
    platform = Platform(number=lambda held: "26330000000000000001")
    first = ship(shop_dsn, "C001", [("P-MOUSE", "1", "79.90")])
    async with daemon(shop_dsn, platform):
        await until(shop_dsn, "SELECT bool_and(state = 'done') FROM cdc_invoice.request")
    second = ship(shop_dsn, "C002", [("P-TEA", "1", "268.00")])
    async with daemon(shop_dsn, platform, max_attempts=3):
        await until(
            shop_dsn,
            "SELECT state = 'failed' FROM cdc_invoice.request WHERE order_ref = %s",
            second,
        )
    _, _, code, hint, _, _, _ = issue_request(shop_dsn, second)
    assert code == "OUTCOME_UNKNOWN" and "reconcile" in hint
    assert net_invoiced(shop_dsn, first) == Decimal("79.90")


async def test_lost_answers_forever_fail_as_outcome_unknown(shop_dsn: str) -> None:
    platform = Platform(lost=lambda part: True, outcome=lambda part, no: "20")

    async def never(*args: Any) -> list[PlatformInvoice]:
        raise OutcomeUnknown("no answer")

    order = ship(shop_dsn, "C001", [("P-MOUSE", "1", "79.90")])
    platform.query_by_order_nos = never  # type: ignore[method-assign]
    async with daemon(shop_dsn, platform, max_attempts=4):
        await until(shop_dsn, "SELECT bool_and(state = 'failed') FROM cdc_invoice.request")
    rid, _, code, hint, base, _, generation = issue_request(shop_dsn, order)
    assert code == "OUTCOME_UNKNOWN" and "reconcile" in hint
    sql(shop_dsn, "SELECT cdc_invoice.retry(%s)", rid)
    assert issue_request(shop_dsn, order)[4::2] == (base, generation)


async def test_retry_after_the_order_is_fixed_takes_a_fresh_snapshot(shop_dsn: str) -> None:
    """Hole 5: fix the order, then retry: nothing reached the platform, so the order is taken
    as it is now (and the event says so)."""
    sql(shop_dsn, "INSERT INTO shop.products VALUES ('P-NEW', '新品', 'x', NULL, NULL, 9.00)")
    order = ship(shop_dsn, "C001", [("P-NEW", "2", "9.00")])  # no tax mapping for P-NEW
    platform = Platform()
    async with daemon(shop_dsn, platform):
        await until(shop_dsn, "SELECT bool_and(state = 'failed') FROM cdc_invoice.request")
        rid, _, code, _, _, _, _ = issue_request(shop_dsn, order)
        assert code == "MAPPING"
        # The DBA fixes the order (the item was mistyped), then retries.
        sql(
            shop_dsn,
            "UPDATE shop.order_lines SET sku = 'P-MOUSE' WHERE order_id = %s::bigint",
            order,
        )
        sql(shop_dsn, "SELECT cdc_invoice.retry(%s)", rid)
        await until(shop_dsn, "SELECT bool_and(state = 'done') FROM cdc_invoice.request")
    [(detail,)] = sql(
        shop_dsn, "SELECT detail FROM cdc_invoice.event WHERE event = 'request.retried'"
    )
    assert detail["snapshot"] == "fresh" and "nothing reached the platform" in detail["why"]
    assert net_invoiced(shop_dsn, order) == Decimal("18.00")


async def test_return_while_the_issue_failed_cancels_it_and_retry_is_refused(
    shop_dsn: str,
) -> None:
    """Hole 2: a return while the issue request is failed (nothing at the platform) cancels it,
    with an event; a later retry is refused with a CI error and hint. The order nets to 0."""
    sql(shop_dsn, "INSERT INTO shop.products VALUES ('P-NEW', '新品', 'x', NULL, NULL, 9.00)")
    order = ship(shop_dsn, "C001", [("P-NEW", "1", "9.00")])
    async with daemon(shop_dsn, Platform()):
        await until(shop_dsn, "SELECT bool_and(state = 'failed') FROM cdc_invoice.request")
        rid = issue_request(shop_dsn, order)[0]
        sql(
            shop_dsn,
            "UPDATE shop.orders SET status = 'returned' WHERE order_id = %s::bigint",
            order,
        )
        await until(
            shop_dsn, "SELECT state = 'done' FROM cdc_invoice.request WHERE kind = 'reverse'"
        )
    _, state, code, _, _, _, _ = issue_request(shop_dsn, order)
    assert (state, code) == ("cancelled", "RETURNED")
    [(detail,)] = sql(
        shop_dsn,
        "SELECT detail FROM cdc_invoice.event WHERE event = 'request.cancelled' AND request_id = %s",
        rid,
    )
    assert detail["reason"] == "returned"
    sql(
        shop_dsn,
        "INSERT INTO cdc_invoice.item_tax VALUES ('shop', 'P-NEW', '1090511030000000000', 0.13)",
    )
    with psycopg.connect(shop_dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as exc:
        conn.execute("SELECT cdc_invoice.retry(%s)", (rid,))
    assert exc.value.sqlstate == "CI006" and "was returned" in str(exc.value)
    assert exc.value.diag.message_hint and "new order" in exc.value.diag.message_hint
    assert net_invoiced(shop_dsn, order) == 0


async def test_return_while_parts_are_at_the_platform_is_refused_with_the_fix(
    split_shop: str,
) -> None:
    """A failed request with parts at the platform: the reversal cannot silently drop them; it
    fails saying how to settle them first, and the issue request may still be retried."""
    platform = Platform(refuse=lambda part, no: "E9121" if part == 2 else None)
    order = ship(split_shop, "C001", THREE_LINES)
    async with daemon(split_shop, platform):
        await until(split_shop, "SELECT bool_and(state = 'failed') FROM cdc_invoice.request")
        rid = issue_request(split_shop, order)[0]
        sql(
            split_shop,
            "UPDATE shop.orders SET status = 'returned' WHERE order_id = %s::bigint",
            order,
        )
        await until(
            split_shop, "SELECT state = 'failed' FROM cdc_invoice.request WHERE kind = 'reverse'"
        )
    [(code, error, hint)] = sql(
        split_shop,
        "SELECT error_code, last_error, hint FROM cdc_invoice.request WHERE kind = 'reverse'",
    )
    assert code == "ISSUE_UNSETTLED" and "part(s) 1 at the platform" in error
    assert f"cdc_invoice.retry({rid})" in hint
    sql(split_shop, "SELECT cdc_invoice.retry(%s)", rid)  # allowed: parts must be recorded


def test_order_number_generations_never_wrap(shop_dsn: str) -> None:
    order = ship(shop_dsn, "C001", [("P-MOUSE", "1", "79.90")])
    rid = issue_request(shop_dsn, order)[0]
    sql(
        shop_dsn,
        "UPDATE cdc_invoice.request SET state = 'failed', error_code = 'E9121', generation = 34 "
        "WHERE id = %s",
        rid,
    )
    sql(shop_dsn, "SELECT cdc_invoice.retry(%s)", rid)  # generation 35, the last one
    sql(shop_dsn, "UPDATE cdc_invoice.request SET state = 'failed', error_code = 'E9121'")
    with psycopg.connect(shop_dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as exc:
        conn.execute("SELECT cdc_invoice.retry(%s)", (rid,))
    assert exc.value.sqlstate == "CI006" and "all 36" in str(exc.value)
    assert issue_request(shop_dsn, order)[6] == 35
    [(no,)] = sql(shop_dsn, "SELECT cdc_invoice.platform_order_no(1, 35)")
    assert len(no) == 18 and no[6] == "Z"


async def test_a_result_the_platform_never_gives_ends_as_outcome_unknown(shop_dsn: str) -> None:
    """Submitted, then every query fails: the polls are retried, capped by max_attempts, and the
    request fails OUTCOME_UNKNOWN (the platform has it), never stays submitted for ever."""
    from cdc_invoice.errors import ProviderUnavailable

    platform = Platform()

    async def broken(*args: Any) -> list[PlatformInvoice]:
        raise ProviderUnavailable("HTTP 503")

    platform.query_by_serials = broken  # type: ignore[method-assign]
    order = ship(shop_dsn, "C001", [("P-MOUSE", "1", "79.90")])
    async with daemon(shop_dsn, platform, max_attempts=3):
        await until(shop_dsn, "SELECT bool_and(state = 'failed') FROM cdc_invoice.request")
    rid, _, code, hint, base, _, _ = issue_request(shop_dsn, order)
    assert code == "OUTCOME_UNKNOWN" and "reconcile" in hint
    assert list(platform.held) == [base + "01"]
    # The operator's retry asks the platform by that number and records the invoice.
    platform.query_by_serials = Platform.query_by_serials.__get__(platform)  # type: ignore[method-assign]
    sql(shop_dsn, "SELECT cdc_invoice.retry(%s)", rid)
    async with daemon(shop_dsn, platform):
        await until(shop_dsn, "SELECT bool_and(state = 'done') FROM cdc_invoice.request")
    assert platform.issue_calls == Counter({base + "01": 1})


def test_reconcile_finds_a_request_by_any_generation_of_its_number(split_shop: str) -> None:
    """A split order's parts may carry different generations (only a refused part is
    renumbered): reconcile's lookup by order number finds the request under each."""
    order = ship(split_shop, "C001", THREE_LINES)
    rid = issue_request(split_shop, order)[0]
    sql(
        split_shop,
        "UPDATE cdc_invoice.request SET generation = 1, "
        "platform_order_no = cdc_invoice.platform_order_no(id, 1) WHERE id = %s",
        rid,
    )
    [(gen0, gen1)] = sql(
        split_shop,
        "SELECT cdc_invoice.platform_order_no(%s, 0), cdc_invoice.platform_order_no(%s, 1)",
        rid,
        rid,
    )
    from cdc_invoice.db.queries import q

    with psycopg.connect(split_shop) as conn:
        for base, found in ((gen0, True), (gen1, True), ("X", False), (gen0[:-1] + "9", False)):
            rows = conn.execute(q("request_by_order_no"), {"base": base}).fetchall()
            assert bool(rows) is found and (not rows or rows[0][0] == rid), base


def test_only_documented_refusals_burn_an_order_number(installed_dsn: str) -> None:
    """_number_burned (sql/api.sql) is codes.REFUSED but E9613: the documented refusals that
    create nothing. Anything else — E9106 (the number exists), an undocumented E9…, a gateway
    code, an unknown outcome — keeps the number, so no answer we cannot read leads to a second
    invoice (docs/platform-assumptions.md)."""
    from cdc_invoice.providers.nuonuo import codes

    keep = [
        "E9106",
        "E9109",
        "E9613",
        "E9999",
        "E9500",
        "E9100",
        "070601",
        "OUTCOME_UNKNOWN",
        "ISSUE_FAILED",
        "PARTIAL_ISSUE",
        "INTERNAL",
        None,
    ]
    with psycopg.connect(installed_dsn) as conn:
        burned = {
            c
            for c in sorted(codes.REFUSED) + [k for k in keep if k]
            if conn.execute("SELECT cdc_invoice._number_burned(%s)", (c,)).fetchone() == (True,)
        }
        assert conn.execute("SELECT cdc_invoice._number_burned(NULL)").fetchone() == (False,)
    assert burned == set(codes.REFUSED) - {"E9613"}


async def test_a_credentials_error_waits_and_never_fails_the_order(shop_dsn: str) -> None:
    """Issue 14 row 2: a gateway/credentials answer (070601 签名不匹配, nuonuo-sdk
    sandbox-validation.md) is the seller's problem, not the order's: the request waits without
    counting attempts — max_attempts never fails it — and goes through once the credentials
    work again."""
    from cdc_invoice.errors import ProviderAuthError

    platform = Platform()
    real_issue = platform.issue
    refusals = 0

    async def refused(seller: Seller, draft: InvoiceDraft, order_no: str) -> IssueAccepted:
        nonlocal refusals
        if refusals < 6:
            refusals += 1
            raise ProviderAuthError("签名不匹配", code="070601")
        return await real_issue(seller, draft, order_no)

    platform.issue = refused  # type: ignore[method-assign]
    order = ship(shop_dsn, "C001", [("P-MOUSE", "1", "79.90")])
    # every refusal puts the request back for max_backoff_seconds (0.01 s here)
    async with daemon(shop_dsn, platform, max_attempts=2):
        await until(shop_dsn, "SELECT bool_and(state = 'done') FROM cdc_invoice.request")
    assert refusals == 6
    [(retries,)] = sql(
        shop_dsn, "SELECT retries FROM cdc_invoice.request WHERE order_ref = %s", order
    )
    assert retries == 0
    assert net_invoiced(shop_dsn, order) == Decimal("79.90")


def test_retry_failed_leaves_a_refused_request_and_retries_the_others(shop_dsn: str) -> None:
    """Found by the lifecycle model: an order returned while its issue request is failed (the
    reversal not handled yet) makes retry() refuse that request; retry_failed() used to abort
    on it, so one returned order blocked the operator's bulk retry of every other."""
    sql(shop_dsn, "INSERT INTO shop.products VALUES ('P-NEW', '新品', 'x', NULL, NULL, 9.00)")
    returned = ship(shop_dsn, "C001", [("P-NEW", "1", "9.00")])
    other = ship(shop_dsn, "C002", [("P-NEW", "2", "9.00")])
    sql(
        shop_dsn,
        "UPDATE cdc_invoice.request SET state = 'failed', error_code = 'MAPPING', "
        "hint = 'map it' WHERE kind = 'issue'",
    )
    sql(
        shop_dsn, "UPDATE shop.orders SET status = 'returned' WHERE order_id = %s::bigint", returned
    )
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
        assert conn.execute("SELECT cdc_invoice.retry_failed()").fetchone() == (1,)
    assert issue_request(shop_dsn, returned)[1] == "failed"
    assert issue_request(shop_dsn, other)[1] == "pending"
    assert any("left failed" in n and "was returned" in n for n in notices), notices
