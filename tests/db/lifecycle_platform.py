"""A scripted in-memory e-invoice platform for the lifecycle model (test_lifecycle_model.py).

It implements the Provider protocol (cdc_invoice/providers/base.py) and keeps its own ledger:
order number -> invoice, with the status the real platform would report. The model tells it
what to answer next; by default it accepts and issues. Behaviour follows the Nuonuo doc pages
(ourworldcn/PowerLms 诺诺网接口/数电发票/: 开具发票 requestBillingNew, 发票详情查询
queryInvoiceResult, 开票重试 reInvoice, 红字确认单 saveInvoiceRedConfirm):

* an issue request is accepted (a serial is returned) and the result comes later: 20/21 while
  issuing, then 2 issued, 22 failed, or 24 issued with the seal failed (the invoice EXISTS);
* a duplicate order number is refused with E9106, also when the earlier invoice failed (22):
  the documented remedy for 22 is reInvoice with the same order number (at most 20 times, E9613);
* a request refused synchronously (E9…) leaves nothing under its order number (as the sandbox,
  cdc_invoice/sandbox/rules.py: validation fails before anything is stored);
* an electronic (pc/bs) red-letter slip is ready at once and the platform issues the red invoice
  itself; a full reversal (no lines) reverses what remains of the blue invoice.

Refusals are the exceptions the Nuonuo adapter raises for those codes (codes.error_for: same
class, same operator hint). Faults the model scripts: the call never reaches the platform (unavailable), the platform refuses,
the platform acts and the answer is lost, the daemon process dies before or after the call
(``DaemonKilled``), the platform answers "issued" without number and date once (incomplete).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from cdc_invoice.errors import OutcomeUnknown, ProviderRejected, ProviderUnavailable
from cdc_invoice.invoice.model import InvoiceDraft, InvoiceLine, Seller
from cdc_invoice.providers.base import (
    InvoiceRef,
    IssueAccepted,
    PlatformInvoice,
    RedSlip,
)
from cdc_invoice.providers.nuonuo import codes

CHINA = ZoneInfo("Asia/Shanghai")

REINVOICE = "nuonuo.OpeMplatform.reInvoice"  # 开票重试

TRANSPORTS = ("accept", "refuse", "lose", "unavailable", "kill_before", "kill_after")
FATES = ("ok", "slow", "22", "24", "incomplete")


class DaemonKilled(BaseException):
    """The daemon process died here (SIGKILL): nothing after this point ran.

    A BaseException, so that no handler of the daemon can catch it, as none can catch SIGKILL."""


@dataclass(frozen=True)
class Answer:
    """What the platform does with the next issue (or reInvoice) call."""

    transport: str = "accept"  # one of TRANSPORTS
    fate: str = "ok"  # one of FATES: how an accepted invoice ends


@dataclass
class Invoice:
    serial: str
    order_no: str
    order_ref: str
    part: int
    kind: str  # blue / red
    buyer_name: str
    total_excl_tax: Decimal
    total_tax: Decimal
    total_incl_tax: Decimal
    fate: str
    status: str = "issuing"  # issuing / issued / failed22 / seal24
    number: str | None = None
    issued_at: datetime | None = None
    polls_left: int = 0  # queries that still answer "issuing"
    incomplete_left: int = 0  # queries that answer "issued" without number and date
    original_number: str | None = None  # a red invoice's blue
    reinvoices: int = 0
    lines: tuple[InvoiceLine, ...] = field(default=(), repr=False)

    @property
    def exists(self) -> bool:
        """Issued at the tax bureau (2, or 24: issued, only the seal failed)."""
        return self.status in ("issued", "seal24")

    @property
    def will_exist(self) -> bool:
        """Exists, or will once the platform finishes (what the model knows of its fate)."""
        return self.exists or (self.status == "issuing" and self.fate != "22")


@dataclass
class ScriptedPlatform:
    max_query_batch: int = 50
    answers: deque[Answer] = field(default_factory=deque)
    query_faults: deque[str] = field(default_factory=deque)  # "kill" / "unavailable"
    by_order_no: dict[str, Invoice] = field(default_factory=dict)
    by_serial: dict[str, Invoice] = field(default_factory=dict)
    slips: dict[str, Invoice] = field(default_factory=dict)  # bill_id -> its red invoice
    calls: list[str] = field(default_factory=list)
    reached: set[str] = field(default_factory=set)  # orders of which an issue call arrived
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # --- the ledger, as the model reads it --------------------------------------------------

    def invoices(self) -> list[Invoice]:
        return list(self.by_order_no.values())

    def reds_of(self, number: str) -> list[Invoice]:
        return [i for i in self.by_order_no.values() if i.original_number == number and i.exists]

    def remaining(self, blue: Invoice) -> tuple[Decimal, Decimal, Decimal]:
        """What a blue invoice still holds after its red invoices (excl., tax, incl.)."""
        assert blue.number is not None
        reds = self.reds_of(blue.number)
        return (
            blue.total_excl_tax + sum((r.total_excl_tax for r in reds), Decimal(0)),
            blue.total_tax + sum((r.total_tax for r in reds), Decimal(0)),
            blue.total_incl_tax + sum((r.total_incl_tax for r in reds), Decimal(0)),
        )

    # --- internals ----------------------------------------------------------------------------

    def _next(self) -> Answer:
        return self.answers.popleft() if self.answers else Answer()

    def _number(self) -> str:
        return f"26{next(self._seq):018d}"

    def _settle(self, inv: Invoice) -> None:
        """A query: an issuing invoice moves on to its fate once its polls are used up."""
        if inv.status != "issuing":
            return
        if inv.polls_left > 0:
            inv.polls_left -= 1
            return
        if inv.fate == "22":
            inv.status = "failed22"
            return
        inv.status = "seal24" if inv.fate == "24" else "issued"
        inv.number = self._number()
        inv.issued_at = datetime.now(CHINA)
        inv.incomplete_left = 1 if inv.fate == "incomplete" else 0

    def _view(self, inv: Invoice) -> PlatformInvoice:
        common = {
            "serial": inv.serial,
            "order_no": inv.order_no,
            "buyer_name": inv.buyer_name,
            "total_excl_tax": inv.total_excl_tax,
            "total_tax": inv.total_tax,
            "total_incl_tax": inv.total_incl_tax,
            "invoice_kind": inv.kind,
            "original_number": inv.original_number,
        }
        if inv.status == "issuing":
            return PlatformInvoice(status="issuing", status_code="20", **common)
        if inv.status == "failed22":
            return PlatformInvoice(
                status="failed", status_code="22", fail_cause="模型: 开票失败", **common
            )
        if inv.status == "issued" and inv.incomplete_left > 0:
            # 2 without number and date: seen from the live platform while it is still
            # filling in the result (issue 13, hole 4). The next query answers in full.
            inv.incomplete_left -= 1
            return PlatformInvoice(status="issued", status_code="2", **common)
        # 24 (开票成功签章失败) is an issued invoice whose seal failed (发票详情查询 doc; the
        # Provider protocol reports it as "issued" with seal_failed)
        return PlatformInvoice(
            status="issued",
            seal_failed=inv.status != "issued",
            status_code="2" if inv.status == "issued" else "24",
            number=inv.number,
            issued_at=inv.issued_at,
            fail_cause=None if inv.status == "issued" else "模型: 签章失败",
            pdf_url=f"https://model.invalid/{inv.serial}.pdf",
            **common,
        )

    def _query_fault(self) -> str | None:
        return self.query_faults.popleft() if self.query_faults else None

    def _query(self, found: list[Invoice]) -> list[PlatformInvoice]:
        fault = self._query_fault()
        if fault == "unavailable":
            raise ProviderUnavailable("model: the platform did not answer the query")
        for inv in found:
            self._settle(inv)
        views = [self._view(inv) for inv in found]
        if fault == "kill":
            raise DaemonKilled("killed after the query")
        return views

    def _transport(self, answer: Answer, method: str) -> None:
        """Faults before the platform acts."""
        self.calls.append(f"{method}:{answer.transport}/{answer.fate}")
        if answer.transport == "kill_before":
            raise DaemonKilled(f"killed before {method}")
        if answer.transport == "unavailable":
            raise ProviderUnavailable(f"model: {method} not sent (connection refused)")

    def _after(self, answer: Answer, method: str) -> None:
        """Faults after the platform acted."""
        if answer.transport == "lose":
            raise OutcomeUnknown(f"model: the answer to {method} was lost")
        if answer.transport == "kill_after":
            raise DaemonKilled(f"killed after {method}")

    # --- Provider ---------------------------------------------------------------------------

    async def issue(self, seller: Seller, draft: InvoiceDraft, order_no: str) -> IssueAccepted:
        answer = self._next()
        self._transport(answer, "issue")
        self.reached.add(draft.order_ref)
        if order_no in self.by_order_no:
            raise codes.error_for("E9106", "订单编号或流水号不能重复", method=codes.ISSUE)
        if answer.transport == "refuse":
            raise codes.error_for("E9131", "明细行税额误差超过0.06", method=codes.ISSUE)
        inv = Invoice(
            serial=f"MS{next(self._seq):010d}",
            order_no=order_no,
            order_ref=draft.order_ref,
            part=draft.part,
            kind="blue",
            buyer_name=draft.buyer.name,
            total_excl_tax=draft.total_excl_tax,
            total_tax=draft.total_tax,
            total_incl_tax=draft.total_incl_tax,
            fate=answer.fate,
            polls_left=2 if answer.fate == "slow" else 0,
            lines=draft.lines,
        )
        self.by_order_no[order_no] = inv
        self.by_serial[inv.serial] = inv
        self._after(answer, "issue")
        return IssueAccepted(order_no=order_no, serial=inv.serial)

    async def reissue(self, seller: Seller, serial: str, order_no: str) -> IssueAccepted:
        """Provider.reissue: reInvoice by serial and order number (the serial wins)."""
        inv = self.by_serial.get(serial)
        return await self.reinvoice(seller, inv.order_no if inv is not None else order_no)

    async def reinvoice(self, seller: Seller, order_no: str) -> IssueAccepted:
        """开票重试 (reInvoice): a failed (22) invoice is issued again under the same order
        number and serial; at most 20 times (E9613). Asked of an invoice that did not fail,
        it changes nothing and answers its serial (an assumption: the doc does not say)."""
        answer = self._next()
        self._transport(answer, "reinvoice")
        inv = self.by_order_no.get(order_no)
        if inv is None or answer.transport == "refuse":
            raise codes.error_for("E9500", f"发票不存在 {order_no}", method=REINVOICE)
        if inv.status == "failed22":
            if inv.reinvoices >= 20:
                raise codes.error_for("E9613", "重试次数超过20次", method=REINVOICE)
            inv.reinvoices += 1
            inv.status, inv.fate = "issuing", answer.fate
            inv.polls_left = 2 if answer.fate == "slow" else 0
        self._after(answer, "reinvoice")
        return IssueAccepted(order_no=order_no, serial=inv.serial)

    async def query_by_serials(
        self, seller: Seller, serials: Sequence[str]
    ) -> list[PlatformInvoice]:
        return self._query([self.by_serial[s] for s in serials if s in self.by_serial])

    async def query_by_order_nos(
        self, seller: Seller, order_nos: Sequence[str]
    ) -> list[PlatformInvoice]:
        return self._query([self.by_order_no[n] for n in order_nos if n in self.by_order_no])

    async def request_red_slip(
        self,
        seller: Seller,
        blue: InvoiceRef,
        red_lines: Sequence[InvoiceLine] | None,
        reason: str,
        bill_id: str,
        red_order_no: str,
    ) -> str:
        self.calls.append("red_slip")
        if bill_id in self.slips:
            return bill_id
        found = [i for i in self.by_order_no.values() if i.number == blue.number and i.exists]
        if not found or found[0].kind != "blue":
            raise codes.error_for(
                "E9102", f"蓝字发票{blue.number}不存在", method=codes.SAVE_RED_CONFIRM
            )
        original = found[0]
        if red_order_no in self.by_order_no:
            raise codes.error_for(
                "E9106", "订单编号或流水号不能重复", method=codes.SAVE_RED_CONFIRM
            )
        left = self.remaining(original)
        if red_lines is None:
            totals = (-left[0], -left[1], -left[2])
        else:
            totals = (
                sum((ln.amount_excl_tax for ln in red_lines), Decimal(0)),
                sum((ln.tax for ln in red_lines), Decimal(0)),
                sum((ln.amount_incl_tax for ln in red_lines), Decimal(0)),
            )
        if totals[2] >= 0 or left[2] + totals[2] < 0:
            # 红字确认单: a red invoice can never exceed what the blue one still holds.
            raise codes.error_for(
                "E9103", f"红冲金额超过蓝字发票{blue.number}余额", method=codes.SAVE_RED_CONFIRM
            )
        red = Invoice(
            serial=f"MS{next(self._seq):010d}",
            order_no=red_order_no,
            order_ref=original.order_ref,
            part=original.part,
            kind="red",
            buyer_name=original.buyer_name,
            total_excl_tax=totals[0],
            total_tax=totals[1],
            total_incl_tax=totals[2],
            fate="ok",
            status="issued",
            number=self._number(),
            issued_at=datetime.now(CHINA),
            original_number=original.number,
        )
        self.by_order_no[red_order_no] = red
        self.by_serial[red.serial] = red
        self.slips[bill_id] = red
        return bill_id

    async def query_red_slip(self, seller: Seller, bill_id: str) -> RedSlip | None:
        red = self.slips.get(bill_id)
        if red is None:
            return None
        return RedSlip(
            bill_id=bill_id,
            status="ready",
            status_code="01",
            bill_no=f"BN{bill_id}",
            red_issued=True,
            red_serial=red.serial,
            red_order_no=red.order_no,
        )

    async def issue_red_from_slip(
        self, seller: Seller, blue: InvoiceRef, slip: RedSlip, red_order_no: str
    ) -> IssueAccepted:
        raise ProviderRejected("模型: 数电电子发票由平台自动开具红字发票", code="E9999")

    async def void(self, seller: Seller, invoice: InvoiceRef, reason: str) -> None:
        raise ProviderRejected("模型: 数电电子发票不能作废", code="E9999")

    async def deliver(
        self, seller: Seller, invoice: InvoiceRef, email: str | None, phone: str | None
    ) -> None:
        self.calls.append("deliver")

    async def list_invoices(
        self, seller: Seller, start: datetime, end: datetime
    ) -> list[PlatformInvoice]:
        return [
            self._view(i)
            for i in self.by_order_no.values()
            if i.exists and i.issued_at is not None and start <= i.issued_at < end
        ]

    async def aclose(self) -> None:
        return None
