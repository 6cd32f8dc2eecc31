"""The proof of issue 13: a stateful model of the request lifecycle.

A hypothesis RuleBasedStateMachine over a real PostgreSQL (the demo shop, attached with
reverse_when) and the real daemon code (Issuer and Lifecycle, driven in-process one step at a
time: claim -> handle; time passes by making rows due in SQL, never by sleeping), against a
scripted in-memory platform (lifecycle_platform.py) that keeps its own ledger of invoices.

Rules are the world's events: create, ship, return and edit orders; unmap and map items; a small
split limit (seller.max_lines); the platform accepts, refuses, loses the answer after acting,
is unreachable, answers 22 / 24 / incomplete; the daemon is killed before or after a platform
call (its lease runs out); the operator retries, cancels, reverses, reconciles; and settle
(the platform behaves, the daemon runs until nothing is left to do).

Invariants after every step:
  * at most one live invoice per (order, part) at the platform and locally;
  * every local invoice exists at the platform with the same number, kind and totals;
  * no reversal exceeds its blue invoice (lines and totals, locally and at the platform);
  * every request is done, failed with a reason (error_code and hint), cancelled with a reason,
    or making progress with bounded attempts; no handler lets an exception escape;
  * a 22 is re-issued under its own order number (reInvoice), never under a new one.
After settle: every request ended; a returned order nets to zero (locally and at the platform)
unless one of its requests is failed for the operator; every invoice that exists at the
platform (2, or 24: issued, the seal failed) is recorded locally or its request is failed with
a reason and a fix, and a 24 is always recorded.

Features of the fixed system that today's code lacks are separate rules (answer_24, answer_22,
answer_incomplete, cancel) so they are easy to review and to switch off:
CDC_INVOICE_MODEL_SKIP=24,22,incomplete,cancel (comma-separated) leaves them out; "reversal"
leaves out finance's request_reversal(), "return" the returns, and "snapshot" the check that
retry() takes a fresh snapshot, to look past a failure found there.
CDC_INVOICE_MODEL_EXAMPLES=N runs N examples of a longer program (`make chaos` sets it).
Failures found are kept in tests/db/.lifecycle-model-db and replayed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import (
    INVARIANT_MARKER,
    RULE_MARKER,
    RuleBasedStateMachine,
    get_state_machine_test,
    invariant,
    precondition,
    rule,
)
from lifecycle_platform import CHINA, Answer, DaemonKilled, ScriptedPlatform

from cdc_invoice.daemon import reconcile as reconcile_mod
from cdc_invoice.daemon.handler import SellerCache
from cdc_invoice.daemon.issuer import Issuer
from cdc_invoice.daemon.lifecycle import KINDS as LIFECYCLE_KINDS
from cdc_invoice.daemon.lifecycle import Lifecycle
from cdc_invoice.db.repository import ClaimedRequest, Repository

EXAMPLES = int(os.environ.get("CDC_INVOICE_MODEL_EXAMPLES", "0") or 0)
SKIP = {s.strip() for s in os.environ.get("CDC_INVOICE_MODEL_SKIP", "").split(",") if s.strip()}
SEED = 20261202
DB_DIR = Path(__file__).with_name(".lifecycle-model-db")

KINDS = ("issue", *LIFECYCLE_KINDS)
LEASE_SECONDS = 60.0  # never runs out on its own: the model expires leases explicitly
MAX_ATTEMPTS = 6  # [daemon] max_attempts (issue 13, hole 4)
HANDLING_BOUND = 40  # handlings of one request between operator actions: beyond is a loop
SETTLE_ROUNDS = 40
# Goods only: a service line cannot be reversed as a sales return (销货退回), which is what
# reverse_when asks for; the model is about the lifecycle, not about reason codes.
SKUS = ("P-LAPTOP", "P-MOUSE", "P-PAPER", "P-TEA")
CUSTOMERS = ("C001", "C002", "C003", "C004")
LIVE = ("pending", "claimed", "submitted")


def _event_loop() -> asyncio.AbstractEventLoop:
    return asyncio.new_event_loop()


@dataclass
class Daemon:
    repo: Repository
    issuer: Issuer
    lifecycle: Lifecycle


class World:
    """What lives across examples: the database, the event loop, two daemons' repositories."""

    dsn: str
    loop: asyncio.AbstractEventLoop
    repos: list[Repository]
    conn: psycopg.Connection[Any]
    tag: str
    items: list[tuple[Any, ...]]


W = World()


class LifecycleModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.platform = ScriptedPlatform()
        self.daemons = [self._daemon(repo) for repo in W.repos]
        self.active = 0
        self.orders: dict[int, str] = {}  # order_id -> new / shipped / returned
        self.handled: Counter[int] = Counter()  # request id -> handlings since operator action
        # records refuse TRUNCATE (sql/records.sql): the model's reset is the superuser's
        # replica-mode bypass, as a DBA's would be
        W.conn.execute("""
            SET session_replication_role = replica;
            TRUNCATE cdc_invoice.invoice_line, cdc_invoice.invoice, cdc_invoice.request,
                     cdc_invoice.event, cdc_invoice.reconciliation, shop.order_lines, shop.orders
                     RESTART IDENTITY CASCADE;
            SET session_replication_role = origin;
            UPDATE cdc_invoice.seller SET max_lines = 2000;
            DELETE FROM cdc_invoice.item_tax WHERE source = 'shop';
        """)
        with W.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO cdc_invoice.item_tax (source, item_ref, tax_code, tax_rate, short_name)"
                " VALUES (%s, %s, %s, %s, %s)",
                W.items,
            )

    def _daemon(self, repo: Repository) -> Daemon:
        sellers = SellerCache(repo, ttl=0.0)  # the model edits the seller between steps
        opts: dict[str, Any] = {"result_poll_seconds": 0.01, "max_backoff_seconds": 1.0}
        issuer = Issuer(repo, self.platform, sellers, **opts, max_attempts=MAX_ATTEMPTS)
        lifecycle = Lifecycle(repo, self.platform, sellers, **opts, max_attempts=MAX_ATTEMPTS)
        return Daemon(repo, issuer, lifecycle)

    # --- helpers ----------------------------------------------------------------------------

    def _sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        cur = W.conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    def _pick(self, rows: list[Any], i: int) -> Any:
        return rows[i % len(rows)]

    def _orders(self, status: str) -> list[int]:
        return sorted(o for o, s in self.orders.items() if s == status)

    def _run(self, coro: Any) -> Any:
        return W.loop.run_until_complete(coro)

    def _advance_time(self) -> None:
        """Backoffs and poll delays are over, and a killed daemon's leases have run out."""
        self._sql(
            "UPDATE cdc_invoice.request SET run_after = now() - interval '1 second', "
            "lease_until = CASE WHEN claimed_by IS NULL THEN NULL "
            "ELSE now() - interval '1 second' END "
            "WHERE state IN ('pending', 'claimed', 'submitted')"
        )

    def _handle(self, reqs: list[ClaimedRequest], what: str, coro: Any) -> bool:
        """Run one handler call; False when the daemon died in it."""
        for r in reqs:
            self.handled[r.id] += 1
        try:
            self._run(coro)
        except DaemonKilled:
            return False
        except Exception as exc:
            raise AssertionError(
                f"{what} let {type(exc).__name__} escape for request(s) "
                f"{[r.id for r in reqs]}: {exc} (issue 13 hole 4: caught per request, "
                "one bad request never blocks its batch, every request ends)"
            ) from exc
        return True

    def _step(self) -> None:
        """One daemon cycle: claim what is due and handle it, in the worker's order."""
        self._advance_time()
        d = self.daemons[self.active]
        claimed = self._run(d.repo.claim(50, LEASE_SECONDS, KINDS, poll_limit=200))
        issue_polls = [r for r in claimed if r.state == "submitted" and r.kind == "issue"]
        other_polls = [r for r in claimed if r.state == "submitted" and r.kind != "issue"]
        alive = True
        for req in claimed:
            if req.state == "submitted" or not alive:
                continue
            if req.kind == "issue":
                alive = self._handle([req], "Issuer.start", d.issuer.start(req))
            else:
                alive = self._handle([req], "Lifecycle.start", d.lifecycle.start(req))
        for i in range(0, len(issue_polls), 50):
            if alive:
                chunk = issue_polls[i : i + 50]
                alive = self._handle(chunk, "Issuer.poll", d.issuer.poll(chunk))
        if other_polls and alive:
            alive = self._handle(other_polls, "Lifecycle.poll", d.lifecycle.poll(other_polls))
        if not alive:
            # SIGKILL: what this daemon holds stays claimed until its leases run out; the
            # next daemon to run is the other one (systemd restarts it, or its peer takes over).
            self.active = 1 - self.active

    # --- the world: orders --------------------------------------------------------------------

    @rule(
        customer=st.sampled_from(CUSTOMERS),
        lines=st.lists(
            st.tuples(st.sampled_from(SKUS), st.sampled_from(("1", "2", "3"))),
            min_size=1,
            max_size=5,
            unique_by=lambda t: t[0],
        ),
    )
    def create_order(self, customer: str, lines: list[tuple[str, str]]) -> None:
        [(oid,)] = self._sql(
            "INSERT INTO shop.orders (customer_id) VALUES (%s) RETURNING order_id", (customer,)
        )
        with W.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO shop.order_lines (order_id, line_no, sku, quantity, unit_price) "
                "SELECT %s, %s, sku, %s, price FROM shop.products WHERE sku = %s",
                [(oid, n, Decimal(q), sku) for n, (sku, q) in enumerate(lines, start=1)],
            )
        self.orders[int(oid)] = "new"

    @precondition(lambda self: self._orders("new"))
    @rule(i=st.integers(0, 20))
    def ship(self, i: int) -> None:
        oid = self._pick(self._orders("new"), i)
        self._sql("UPDATE shop.orders SET status = 'shipped' WHERE order_id = %s", (oid,))
        self.orders[oid] = "shipped"

    @precondition(lambda self: "return" not in SKIP and self._orders("shipped"))
    @rule(i=st.integers(0, 20))
    def return_order(self, i: int) -> None:
        """The goods come back: reverse_when asks for a whole-order reversal."""
        oid = self._pick(self._orders("shipped"), i)
        self._sql("UPDATE shop.orders SET status = 'returned' WHERE order_id = %s", (oid,))
        self.orders[oid] = "returned"

    @precondition(lambda self: self.orders)
    @rule(i=st.integers(0, 20), quantity=st.sampled_from(("1", "4")))
    def edit_order(self, i: int, quantity: str) -> None:
        oid = self._pick(sorted(self.orders), i)
        self._sql(
            "UPDATE shop.order_lines SET quantity = %s WHERE order_id = %s AND line_no = 1",
            (Decimal(quantity), oid),
        )

    @rule(sku=st.sampled_from(SKUS))
    def unmap_item(self, sku: str) -> None:
        self._sql(
            "DELETE FROM cdc_invoice.item_tax WHERE source = 'shop' AND item_ref = %s", (sku,)
        )

    @rule(sku=st.sampled_from(SKUS))
    def map_item(self, sku: str) -> None:
        [row] = [r for r in W.items if r[1] == sku]
        self._sql(
            "INSERT INTO cdc_invoice.item_tax (source, item_ref, tax_code, tax_rate, short_name)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            row,
        )

    @rule(max_lines=st.sampled_from((2, 2000)))
    def split_limit(self, max_lines: int) -> None:
        self._sql("UPDATE cdc_invoice.seller SET max_lines = %s", (max_lines,))

    # --- the world: the platform --------------------------------------------------------------

    @rule(
        transport=st.sampled_from(
            ("accept", "refuse", "lose", "unavailable", "kill_before", "kill_after")
        ),
        fate=st.sampled_from(("ok", "slow")),
    )
    def answer(self, transport: str, fate: str) -> None:
        """How the platform (or the daemon's process) handles the next issue call."""
        self.platform.answers.append(Answer(transport, fate))

    @rule(part=st.sampled_from((1, 2)))
    def refuse_part(self, part: int) -> None:
        """The platform refuses part k of the next order it is sent (E9…): k-1 answers
        "accept" first. (A rule of its own: refusals are what most paths start from.)"""
        self.platform.answers.extend([Answer()] * (part - 1) + [Answer("refuse")])

    @precondition(lambda self: "incomplete" not in SKIP)
    @rule(transport=st.sampled_from(("accept", "lose")))
    def answer_incomplete(self, transport: str) -> None:
        """The next invoice is reported issued once without number and date (hole 4)."""
        self.platform.answers.append(Answer(transport, "incomplete"))

    @precondition(lambda self: "22" not in SKIP)
    @rule(transport=st.sampled_from(("accept", "lose")))
    def answer_22(self, transport: str) -> None:
        """The next invoice fails (22): the daemon calls reinvoice, same number (hole 3)."""
        self.platform.answers.append(Answer(transport, "22"))

    @precondition(lambda self: "24" not in SKIP)
    @rule(transport=st.sampled_from(("accept", "lose")))
    def answer_24(self, transport: str) -> None:
        """The next invoice is issued but its seal fails (24): it exists (hole 3)."""
        self.platform.answers.append(Answer(transport, "24"))

    @rule(fault=st.sampled_from(("kill", "unavailable")))
    def query_fault(self, fault: str) -> None:
        """The next result query: the daemon dies after it, or it gets no answer."""
        self.platform.query_faults.append(fault)

    # --- the daemon -------------------------------------------------------------------------

    @rule()
    def daemon_step(self) -> None:
        self._step()

    @rule(n=st.integers(2, 5))
    def daemon_steps(self, n: int) -> None:
        """A few cycles in a row (most paths need several: submit, poll, record, reverse)."""
        for _ in range(n):
            self._step()

    # --- the operator -----------------------------------------------------------------------

    def _failed(self) -> list[tuple[Any, ...]]:
        return self._sql(
            "SELECT id, kind, order_ref, error_code FROM cdc_invoice.request "
            "WHERE state = 'failed' ORDER BY id"
        )

    @precondition(lambda self: self._failed())
    @rule(i=st.integers(0, 20))
    def retry(self, i: int) -> None:
        rid, kind, order_ref, _ = self._pick(self._failed(), i)
        try:
            self._sql("SELECT cdc_invoice.retry(%s)", (rid,))
        except psycopg.Error as exc:
            assert (exc.sqlstate or "").startswith("CI"), f"retry({rid}) raised {exc!r}"
            return
        self.handled[rid] = 0
        if kind == "issue" and order_ref not in self.platform.reached and "snapshot" not in SKIP:
            # Nothing of this order ever reached the platform: the retry takes a fresh
            # snapshot, so that "fix the order, then retry" works (issue 13, hole 5).
            [(same,)] = self._sql(
                "SELECT r.document::jsonb = d.document::jsonb FROM cdc_invoice.request r, "
                "cdc_invoice.order_document(r.source, r.order_ref) d WHERE r.id = %s",
                (rid,),
            )
            assert same, (
                f"retry({rid}) kept a stale snapshot of order {order_ref}, of which nothing "
                "reached the platform (hole 5)"
            )

    @precondition(lambda self: self._failed())
    @rule()
    def retry_failed(self) -> None:
        """The operator's "retry them all" (cdc_invoice.retry_failed())."""
        failed = self._failed()
        self._sql("SELECT cdc_invoice.retry_failed()")
        for rid, *_ in failed:
            self.handled[rid] = 0

    def _cancellable(self) -> list[tuple[Any, ...]]:
        return self._sql(
            "SELECT id, order_ref FROM cdc_invoice.request "
            "WHERE state IN ('failed', 'pending') ORDER BY id"
        )

    @precondition(lambda self: "cancel" not in SKIP and self._cancellable())
    @rule(i=st.integers(0, 20))
    def cancel(self, i: int) -> None:
        """The operator gives up on a request (issue 13, hole 6)."""
        rid, _ = self._pick(self._cancellable(), i)
        try:
            self._sql("SELECT cdc_invoice.cancel(%s, %s)", (rid, "model: the operator gives up"))
        except psycopg.Error as exc:
            assert (exc.sqlstate or "").startswith("CI"), f"cancel({rid}) raised {exc!r}"
            return
        [(state,)] = self._sql("SELECT state FROM cdc_invoice.request WHERE id = %s", (rid,))
        assert state == "cancelled", f"cancel({rid}) returned but the request is {state}"
        self.handled[rid] = 0

    def _reversible(self) -> list[tuple[Any, ...]]:
        return self._sql(
            "SELECT invoice_number FROM cdc_invoice.invoice WHERE kind = 'blue' "
            "AND status IN ('issued', 'partially_reversed') ORDER BY id"
        )

    @precondition(lambda self: "reversal" not in SKIP and self._reversible())
    @rule(i=st.integers(0, 20), partial=st.booleans())
    def request_reversal(self, i: int, partial: bool) -> None:
        """Finance reverses an invoice: all of it, or one unit of its first line."""
        (number,) = self._pick(self._reversible(), i)
        lines = json.dumps([{"line_no": 1, "quantity": 1}]) if partial else None
        try:
            self._sql(
                "SELECT cdc_invoice.request_reversal(%s, 'sales_return', %s)", (number, lines)
            )
        except psycopg.Error as exc:
            assert (exc.sqlstate or "").startswith("CI"), f"request_reversal raised {exc!r}"

    @rule()
    def reconcile(self) -> None:
        """`cdc-invoice reconcile` for today: adopt what the platform has under our numbers."""
        self._sql(  # whoever was killed is long gone
            "UPDATE cdc_invoice.request SET lease_until = now() - interval '1 second' "
            "WHERE claimed_by IS NOT NULL"
        )
        d = self.daemons[self.active]
        seller = self._run(d.repo.seller("main"))
        start = datetime.combine(datetime.now(CHINA).date(), datetime.min.time(), CHINA)
        window = {"start": start, "end": start + timedelta(days=1)}
        # If the reconcile run dies (a scripted kill), its claim's lease runs out like a daemon's.
        with contextlib.suppress(DaemonKilled):
            self._run(
                reconcile_mod._seller(
                    d.repo, self.platform, d.issuer, "main", seller, window, "CI" + W.tag
                )
            )

    @rule()
    def settle(self) -> None:
        """The platform behaves and the daemon runs until nothing is left to do."""
        self.platform.answers.clear()
        self.platform.query_faults.clear()
        for _ in range(SETTLE_ROUNDS):
            [(live,)] = self._sql(
                "SELECT count(*) FROM cdc_invoice.request WHERE state = ANY(%s)", (list(LIVE),)
            )
            if live == 0:
                break
            self._step()
        stuck = self._sql(
            "SELECT id, kind, order_ref, state, attempt, last_error FROM cdc_invoice.request "
            "WHERE state = ANY(%s)",
            (list(LIVE),),
        )
        assert not stuck, f"requests still unfinished after {SETTLE_ROUNDS} rounds: {stuck}"
        self._check_settled()

    # --- invariants -------------------------------------------------------------------------

    def _local(self) -> list[dict[str, Any]]:
        cur = W.conn.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute(
            "SELECT i.id, i.order_ref, i.part, i.kind, i.invoice_number, i.platform_order_no, "
            "i.total_excl_tax, i.total_tax, i.total_incl_tax, i.status, "
            "o.invoice_number AS original_number, i.seal_failed FROM cdc_invoice.invoice i "
            "LEFT JOIN cdc_invoice.invoice o ON o.id = i.original_invoice_id ORDER BY i.id"
        ).fetchall()

    @invariant()
    def one_live_invoice_per_part(self) -> None:
        live = Counter(
            (i.order_ref, i.part)
            for i in self.platform.invoices()
            if i.kind == "blue" and i.will_exist
        )
        twice = {k: n for k, n in live.items() if n > 1}
        assert not twice, f"the platform has two invoices for (order, part): {twice}"
        local = self._sql(
            "SELECT order_ref, part, count(*) FROM cdc_invoice.invoice WHERE kind = 'blue' "
            "GROUP BY 1, 2 HAVING count(*) > 1"
        )
        assert not local, f"two local blue invoices for (order, part): {local}"

    @invariant()
    def local_invoices_exist_at_the_platform(self) -> None:
        for inv in self._local():
            p = self.platform.by_order_no.get(inv["platform_order_no"])
            where = f"local invoice {inv['invoice_number']} ({inv['platform_order_no']})"
            assert p is not None and p.exists, f"{where} does not exist at the platform"
            assert p.number == inv["invoice_number"], f"{where}: the platform has {p.number}"
            assert p.kind == inv["kind"], f"{where} is {inv['kind']}, the platform's {p.kind}"
            assert (p.total_excl_tax, p.total_tax, p.total_incl_tax) == (
                inv["total_excl_tax"],
                inv["total_tax"],
                inv["total_incl_tax"],
            ), f"{where}: totals differ from the platform's"
            assert p.original_number == inv["original_number"], f"{where}: another blue"
            assert bool(inv["seal_failed"]) == (p.status == "seal24"), (
                f"{where}: seal_failed={inv['seal_failed']}, platform status {p.status}"
            )

    @invariant()
    def no_reversal_exceeds_its_blue(self) -> None:
        over = self._sql("""
            SELECT b.invoice_number, b.total_incl_tax, sum(r.total_incl_tax)
              FROM cdc_invoice.invoice b JOIN cdc_invoice.invoice r ON r.original_invoice_id = b.id
             GROUP BY b.id HAVING b.total_incl_tax + sum(r.total_incl_tax) < 0
        """)
        assert not over, f"reversed more than invoiced: {over}"
        lines = self._sql("""
            SELECT b.invoice_number, bl.line_no
              FROM cdc_invoice.invoice b
              JOIN cdc_invoice.invoice_line bl ON bl.invoice_id = b.id
              JOIN cdc_invoice.invoice r ON r.original_invoice_id = b.id
              JOIN cdc_invoice.invoice_line rl ON rl.invoice_id = r.id AND rl.line_no = bl.line_no
             GROUP BY b.id, b.invoice_number, bl.line_no, bl.quantity, bl.amount_incl_tax
            HAVING bl.quantity + sum(rl.quantity) < 0 OR bl.amount_incl_tax + sum(rl.amount_incl_tax) < 0
        """)
        assert not lines, f"a red line exceeds its blue line: {lines}"
        for blue in self.platform.invoices():
            if blue.kind == "blue" and blue.exists:
                assert self.platform.remaining(blue)[2] >= 0, (
                    f"over-reversed at the platform: {blue}"
                )

    @invariant()
    def every_request_ends_or_progresses(self) -> None:
        rows = self._sql(
            "SELECT id, kind, state, error_code, hint, last_error FROM cdc_invoice.request"
        )
        for rid, kind, state, code, hint, error in rows:
            if state == "failed":
                assert code and hint, f"{kind} request {rid} failed without code/hint: {error}"
            elif state == "cancelled":
                assert error or hint, f"{kind} request {rid} cancelled without a reason"
            elif state in LIVE:
                assert self.handled[rid] <= HANDLING_BOUND, (
                    f"{kind} request {rid} handled {self.handled[rid]} times and still {state}: "
                    f"attempts are not bounded ({error})"
                )
            else:
                assert state == "done", f"request {rid} in state {state}"

    @invariant()
    def a_failed_invoice_is_reissued_under_its_own_number(self) -> None:
        """22: reInvoice keeps the order number (开票重试); a new number is a new invoice."""
        parts = {
            (i.order_ref, i.part): i.order_no
            for i in self.platform.invoices()
            if i.kind == "blue" and i.status == "failed22"
        }
        for i in self.platform.invoices():
            key = (i.order_ref, i.part)
            if i.kind == "blue" and i.will_exist and key in parts:
                raise AssertionError(
                    f"order {key[0]} part {key[1]}: invoice {i.order_no} issued under a new "
                    f"number while {parts[key]} failed (22): reinvoice it instead (hole 3)"
                )

    def _check_settled(self) -> None:
        failed_orders = {
            ref
            for (ref,) in self._sql(
                "SELECT order_ref FROM cdc_invoice.request WHERE state = 'failed' "
                # an operator who cancels a reversal (the return was a mistake) decides the
                # order stays invoiced: explicit, never silent (docs/reliability.md)
                "OR (state = 'cancelled' AND kind = 'reverse' AND error_code = 'CANCELLED')"
            )
        }
        local = self._local()
        for oid in self._orders("returned"):
            ref = str(oid)
            if ref in failed_orders:
                continue  # the operator has a failed request of this order to act on
            net = sum((i["total_incl_tax"] for i in local if i["order_ref"] == ref), Decimal(0))
            assert net == 0, f"returned order {ref} nets {net} locally (hole 2)"
            pnet = sum(
                (
                    i.total_incl_tax
                    for i in self.platform.invoices()
                    if i.order_ref == ref and i.exists
                ),
                Decimal(0),
            )
            assert pnet == 0, f"returned order {ref} nets {pnet} at the platform (hole 2)"
        recorded = {i["platform_order_no"] for i in local}
        failed_otherwise = {
            ref
            for (ref,) in self._sql(
                "SELECT order_ref FROM cdc_invoice.request WHERE state = 'failed' "
                "AND error_code NOT IN ('ISSUE_FAILED', 'PARTIAL_ISSUE')"
            )
        }
        for p in self.platform.invoices():
            if not p.exists or p.order_no in recorded:
                continue
            # a 24 is never a failure of its own (hole 3); its order may be failed for another
            # reason (e.g. the adoption check found it differs from the order as computed now)
            assert p.status != "seal24" or p.order_ref in failed_otherwise, (
                f"invoice {p.number} ({p.order_no}, 24: issued, seal failed) exists at the "
                "platform but is not recorded (hole 3)"
            )
            assert p.order_ref in failed_orders, (
                f"invoice {p.number} ({p.order_no}) exists at the platform, is not recorded, "
                f"and no request of order {p.order_ref} is failed for the operator"
            )


def _model_settings() -> settings:
    return settings(
        max_examples=EXAMPLES or 50,
        stateful_step_count=60 if EXAMPLES else 30,
        deadline=None,
        # A run that leaves rules out keeps its failures apart: replayed without those rules,
        # the main store's programs would pass, and hypothesis would delete them.
        database=DirectoryBasedExampleDatabase(
            str(
                DB_DIR.with_name(f"{DB_DIR.name}-skip-{'-'.join(sorted(SKIP))}") if SKIP else DB_DIR
            )
        ),
        suppress_health_check=list(HealthCheck),
        phases=list(Phase),
        report_multiple_bugs=False,
    )


@contextlib.contextmanager
def model_world(dsn: str) -> Iterator[None]:
    """The database, loop and daemons' repositories the model's examples share."""
    W.dsn = dsn
    W.loop = _event_loop()
    W.conn = psycopg.connect(dsn, autocommit=True)
    W.repos = []
    try:
        for n in ("a", "b"):
            W.repos.append(W.loop.run_until_complete(Repository.open(dsn, f"model-{n}", size=2)))
        [(W.tag,)] = W.conn.execute("SELECT tag FROM cdc_invoice.installation").fetchall()
        W.items = W.conn.execute(
            "SELECT source, item_ref, tax_code, tax_rate, short_name FROM cdc_invoice.item_tax "
            "WHERE source = 'shop'"
        ).fetchall()
        yield
    finally:
        for repo in W.repos:
            W.loop.run_until_complete(repo.close())
        W.loop.close()
        W.conn.close()


def test_lifecycle_model(shop_dsn: str) -> None:
    with model_world(shop_dsn):
        test = get_state_machine_test(LifecycleModel, settings=_model_settings())
        # A fixed seed for CI stability, and the example database, so that failures found
        # replay first. hypothesis.seed() would switch the database off (it is meant for
        # reproducing one failure), so the seed is set the way seed() sets it, without that.
        assert hasattr(test, "_hypothesis_internal_use_seed"), "hypothesis changed: see here"
        test._hypothesis_internal_use_seed = SEED  # type: ignore[attr-defined]
        test()


# The shortest programs the model found on the code before the issue 13 fixes (and the two the
# issue reproduced by hand), replayed step by step with every invariant after each step: a
# readable record of what the model catches, and quick to run.
Step = tuple[str, dict[str, Any]]
ONE_LINE = {"customer": "C001", "lines": [("P-LAPTOP", "1")]}
PROGRAMS: dict[str, list[Step]] = {
    "hole 1: a split order's part issued twice after retry()": [
        ("split_limit", {"max_lines": 2}),
        (
            "create_order",
            {"customer": "C001", "lines": [("P-LAPTOP", "1"), ("P-MOUSE", "1"), ("P-PAPER", "1")]},
        ),
        ("ship", {"i": 0}),
        ("answer", {"transport": "accept", "fate": "ok"}),
        ("answer", {"transport": "refuse", "fate": "ok"}),
        ("daemon_step", {}),
        ("retry", {"i": 0}),
        ("settle", {}),
    ],
    "hole 2: a return while the issue request is failed": [
        ("create_order", ONE_LINE),
        ("ship", {"i": 0}),
        ("answer", {"transport": "refuse", "fate": "ok"}),
        ("daemon_step", {}),
        ("return_order", {"i": 0}),
        ("daemon_step", {}),
        ("retry", {"i": 0}),
        ("settle", {}),
    ],
    "hole 3: 24 (issued, seal failed) is an invoice": [
        ("create_order", ONE_LINE),
        ("answer_24", {"transport": "accept"}),
        ("ship", {"i": 0}),
        ("daemon_step", {}),
        ("settle", {}),
    ],
    "hole 3: 22 is reissued under its own number": [
        ("create_order", ONE_LINE),
        ("answer_22", {"transport": "accept"}),
        ("ship", {"i": 0}),
        ("daemon_step", {}),
        ("daemon_step", {}),
        ("retry", {"i": 0}),
        ("daemon_step", {}),
    ],
    "hole 4: issued without number and date": [
        ("answer_incomplete", {"transport": "accept"}),
        ("create_order", ONE_LINE),
        ("ship", {"i": 0}),
        ("daemon_step", {}),
        ("daemon_step", {}),
    ],
    "hole 5: retry() after fixing the order takes a fresh snapshot": [
        ("unmap_item", {"sku": "P-LAPTOP"}),
        ("create_order", ONE_LINE),
        ("ship", {"i": 0}),
        ("daemon_step", {}),
        ("edit_order", {"i": 0, "quantity": "4"}),
        ("retry", {"i": 0}),
    ],
    "a return racing finance's reversal fails with a code": [
        ("create_order", ONE_LINE),
        ("ship", {"i": 0}),
        ("daemon_step", {}),
        ("daemon_step", {}),
        ("return_order", {"i": 0}),
        ("request_reversal", {"i": 0, "partial": False}),
        ("daemon_step", {}),
    ],
}
INVARIANTS = [n for n, f in vars(LifecycleModel).items() if hasattr(f, INVARIANT_MARKER)]


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_program_found_by_the_model(shop_dsn: str, name: str) -> None:
    """One program, as hypothesis would run it: a step whose precondition does not hold is
    left out (the fixed system may, say, have cancelled what a later retry would pick)."""
    assert len(INVARIANTS) == 5
    with model_world(shop_dsn):
        machine = LifecycleModel()
        for rule_name, args in [*PROGRAMS[name], ("settle", {})]:
            spec = getattr(getattr(LifecycleModel, rule_name), RULE_MARKER)
            if all(holds(machine) for holds in spec.preconditions):
                getattr(machine, rule_name)(**args)
            for check in INVARIANTS:
                getattr(machine, check)()
