"""The asynchronous issue lifecycle: 20 开票中 → 21 签章中 → 2 开票完成 (or 22 开票失败, or 24
开票成功签章失败: issued with number and date, the seal failed — 发票详情查询 doc).

An accepted request is stored as status 20 with a due time (submission + issue delay, fixed at
submission so a runtime config change does not move invoices already in flight). During the first
half of the delay it reads as 20, during the second half as 21; at the due time it is finalised:
it gets its 数电 number, issue time and files, or fails with a cause (invoice-level tax rule,
monthly quota, injected failure). Finalisation happens lazily — whenever anything reads state —
in due-time order, so numbers and quota are assigned in the order requests were accepted.
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict
from decimal import Decimal

from cdc_invoice.sandbox import numbers
from cdc_invoice.sandbox.model import (
    FAILED,
    ISSUED,
    PENDING,
    SIGN_FAILED,
    AcceptedOrder,
    Invoice,
)
from cdc_invoice.sandbox.options import RuntimeConfig
from cdc_invoice.sandbox.store import Store

CLOCK_OFFSET_KEY = "clock_offset"


class Clock:
    """Wall clock plus an offset that ``POST /_sandbox/clock`` advances (persisted)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.offset = float(store.meta.get(CLOCK_OFFSET_KEY, "0"))

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        self.offset += seconds
        self._store.set_meta(CLOCK_OFFSET_KEY, repr(self.offset))


class Lifecycle:
    def __init__(self, store: Store, clock: Clock, config: RuntimeConfig) -> None:
        self._store = store
        self._clock = clock
        self._config = config  # monthly_quota: Σ ex-tax per seller per calendar month (§3.4)
        self._due: list[tuple[float, int, str]] = []
        self._tick = 0
        # Σ ex-tax of issued invoices per (seller, "YYYY-MM"); red invoices give quota back.
        self.quota_used: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for invoice in store.invoices.values():
            if invoice.status == PENDING:
                self._schedule(invoice)
            elif invoice.status in (ISSUED, SIGN_FAILED) and invoice.issued_at is not None:
                self._use_quota(invoice)

    def submit(
        self,
        order: AcceptedOrder,
        *,
        delay_s: float,
        injected_fail: str | None = None,
        sign_fail: str | None = None,
    ) -> Invoice:
        now = self._clock.now()
        invoice = Invoice(
            serial=numbers.serial(now, self._store.next_counter("serial_seq")),
            order_no=order.order_no,
            seller_tax=order.seller_tax,
            invoice_line=order.invoice_line,
            kind="blue",
            buyer=order.buyer,
            lines=order.lines,
            total_ex=order.total_ex,
            total_tax=order.total_tax,
            submitted_at=now,
            due_at=now + max(delay_s, 0.0),
            deferred_fail=order.deferred_fail or injected_fail,
            sign_fail=sign_fail,
            extra=dict(order.extra),
        )
        self.enqueue(invoice)
        return invoice

    def enqueue(self, invoice: Invoice) -> None:
        """Store a new pending invoice (blue from submit, red from a slip) and schedule it."""
        self._store.save_invoice(invoice)
        self._schedule(invoice)

    def status(self, invoice: Invoice, now: float | None = None) -> str:
        """The status a query shows now (call ``advance`` first so due invoices are final)."""
        if invoice.status != PENDING:
            return invoice.status
        now = self._clock.now() if now is None else now
        halfway = invoice.submitted_at + (invoice.due_at - invoice.submitted_at) / 2
        return "20" if now < halfway else "21"

    def advance(self) -> int:
        """Finalise every invoice whose due time has passed; returns how many."""
        now = self._clock.now()
        done = 0
        while self._due and self._due[0][0] <= now:
            _, _, serial = heapq.heappop(self._due)
            invoice = self._store.invoices.get(serial)
            if invoice is not None and invoice.status == PENDING:
                self._finalise(invoice)
                done += 1
        return done

    @property
    def pending(self) -> int:
        return len(self._due)

    def _schedule(self, invoice: Invoice) -> None:
        self._tick += 1
        heapq.heappush(self._due, (invoice.due_at, self._tick, invoice.serial))

    def _finalise(self, invoice: Invoice) -> None:
        at = invoice.due_at
        month = (invoice.seller_tax, numbers.month_key(at))
        if invoice.deferred_fail:
            self._fail(invoice, invoice.deferred_fail)
        elif invoice.kind == "blue" and self.quota_used[month] + invoice.total_ex > (
            self._config.monthly_quota
        ):
            self._fail(
                invoice,
                f"当月发票总额度不足:额度{self._config.monthly_quota},"
                f"已用{self.quota_used[month]},本张{invoice.total_ex}",
            )
        else:
            year = numbers.year_key(at)
            invoice.number = numbers.invoice_number(
                at, self._store.next_counter(f"number_seq_{year}")
            )
            if invoice.invoice_line in ("es", "ec"):
                invoice.paper_code = numbers.paper_code(at)
                invoice.paper_no = numbers.paper_number(self._store.next_counter("paper_seq"))
            invoice.issued_at = at
            invoice.status = ISSUED
            if invoice.sign_fail:  # issued all the same: number, date and quota are used
                invoice.status = SIGN_FAILED
                invoice.fail_cause = invoice.sign_fail
            self._use_quota(invoice)
        self._store.save_invoice(invoice)

    def _fail(self, invoice: Invoice, cause: str) -> None:
        invoice.status = FAILED
        invoice.fail_cause = cause

    def _use_quota(self, invoice: Invoice, sign: int = 1) -> None:
        assert invoice.issued_at is not None
        key = (invoice.seller_tax, numbers.month_key(invoice.issued_at))
        self.quota_used[key] += sign * invoice.total_ex

    def release_quota(self, invoice: Invoice) -> None:
        """A voided invoice no longer counts against its month's quota."""
        self._use_quota(invoice, -1)
