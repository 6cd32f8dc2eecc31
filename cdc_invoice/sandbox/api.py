"""Business methods behind the gateway: dispatch, issue, query, retry, deliver, void, list.

Each handler takes the authenticated caller and the parsed JSON body and returns the envelope
``{"code", "describe", "result"}``; ``Platform.call`` makes the state changes durable before the
envelope goes out. Red-letter methods live in redletter.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any, cast

from cdc_invoice.sandbox import codes
from cdc_invoice.sandbox.auth import Caller
from cdc_invoice.sandbox.faults import FaultInjector
from cdc_invoice.sandbox.fields import text
from cdc_invoice.sandbox.lifecycle import Clock, Lifecycle
from cdc_invoice.sandbox.model import (
    ELECTRONIC_LINES,
    FAILED,
    ISSUED,
    PENDING,
    SIGN_FAILED,
    VOIDED,
    Invoice,
    Rejection,
)
from cdc_invoice.sandbox.numbers import cst
from cdc_invoice.sandbox.options import RuntimeConfig, SandboxOptions
from cdc_invoice.sandbox.redletter import RedLetter
from cdc_invoice.sandbox.rules import check_billing, invoice_tax_failure
from cdc_invoice.sandbox.store import Store
from cdc_invoice.sandbox.views import query_item

Envelope = dict[str, Any]
Handler = Callable[[Caller, Any], Envelope]
QUERY_LIMIT = 50  # serials or order numbers per queryInvoiceResult (§2.6)
RETRY_LIMIT = 20  # reInvoice per serial (E9613)
LIST_PAGE_MAX = 50

ISSUE = "nuonuo.OpeMplatform.requestBillingNew"
QUERY = "nuonuo.OpeMplatform.queryInvoiceResult"


def envelope(code: str, describe: str, result: Any = None) -> Envelope:
    out: Envelope = {"code": code, "describe": describe}
    if result is not None:
        out["result"] = result
    return out


def rejected(rejection: Rejection) -> Envelope:
    return envelope(rejection.code, rejection.describe)


class Platform:
    def __init__(
        self,
        options: SandboxOptions,
        store: Store,
        clock: Clock,
        config: RuntimeConfig,
        faults: FaultInjector,
        base_url: Callable[[], str],
    ) -> None:
        self.sellers = frozenset(options.seller_tax_numbers)
        self.store = store
        self.clock = clock
        self.config = config
        self.faults = faults
        self.base_url = base_url
        self.lifecycle = Lifecycle(store, clock, config)
        self.red = RedLetter(store, clock, config, self.lifecycle, self.seller_of)
        self.handlers: dict[str, Handler] = {
            ISSUE: self.request_billing,
            QUERY: self.query_result,
            "nuonuo.OpeMplatform.reInvoice": self.re_invoice,
            "nuonuo.OpeMplatform.deliveryInvoice": self.deliver,
            "nuonuo.OpeMplatform.queryInvoiceList": self.query_list,
            "nuonuo.electronInvoice.invoiceCancellation": self.cancel,
            **self.red.handlers(),
        }

    async def call(self, caller: Caller) -> Envelope:
        try:
            body = json.loads(caller.content, parse_float=Decimal)
        except ValueError:
            return envelope(codes.MALFORMED, "请求报文不是合法的JSON")
        self.advance()
        result = self.handlers[caller.method](caller, body)
        await self.store.commit()
        return result

    def advance(self) -> None:
        """Bring every time-driven state up to the sandbox clock."""
        self.red.advance()
        self.lifecycle.advance()

    def seller_of(self, caller: Caller) -> str:
        # userTax is optional for a self-use app: the platform then uses the app's own seller.
        if not caller.user_tax and len(self.sellers) == 1:
            return next(iter(self.sellers))
        return caller.user_tax

    def _order_taken(self, seller: str, order_no: str) -> bool:
        return self.store.order_taken(seller, order_no) or self.red.reserved(seller, order_no)

    # -- requestBillingNew ----------------------------------------------------------------------
    def request_billing(self, caller: Caller, body: Any) -> Envelope:
        checked = check_billing(
            body,
            user_tax=self.seller_of(caller),
            sellers=self.sellers,
            is_duplicate=self._order_taken,
        )
        if isinstance(checked, Rejection):
            return rejected(checked)
        invoice = self.lifecycle.submit(
            checked,
            delay_s=self.config.issue_delay_ms / 1000,
            injected_fail=self.faults.issue_failure(self.config),
            sign_fail=self.faults.sign_failure(self.config),
        )
        return envelope(codes.OK, "开票提交成功", {"invoiceSerialNum": invoice.serial})

    # -- queryInvoiceResult ---------------------------------------------------------------------
    def query_result(self, caller: Caller, body: Any) -> Envelope:
        if not isinstance(body, dict):
            return envelope(codes.MALFORMED, "请求报文必须是JSON对象")
        serials, orders = body.get("serialNos"), body.get("orderNos")
        for value in (serials, orders):
            if value is not None and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            ):
                return envelope(codes.MALFORMED, "serialNos/orderNos必须是字符串数组")
        serial_list = [s for s in cast(list[str], serials or []) if s]
        order_list = [o for o in cast(list[str], orders or []) if o]
        keys, by_serial = (serial_list, True) if serial_list else (order_list, False)
        if not keys:
            return envelope(codes.QUERY_EMPTY, "发票流水号或订单号不能全为空")
        if len(keys) > QUERY_LIMIT:
            return envelope(codes.QUERY_TOO_MANY, f"查询发票信息异常:一次最多查询{QUERY_LIMIT}个")
        detail = text(body, "isOfferInvoiceDetail")
        if detail not in ("", "0", "1"):
            return envelope(codes.MALFORMED, "isOfferInvoiceDetail只能为0或1")
        seller = self.seller_of(caller)
        found: list[Invoice] = []
        seen: set[str] = set()
        for key in keys:
            invoice = (
                self.store.invoices.get(key)
                if by_serial
                else self.store.invoice_by_order(seller, key)
            )
            if invoice is None or invoice.seller_tax != seller or invoice.serial in seen:
                continue
            seen.add(invoice.serial)
            found.append(invoice)
        if not found:
            return envelope(codes.NOT_FOUND, "发票不存在")
        base = self.base_url()
        items = [
            query_item(inv, self.lifecycle.status(inv), base, detail=detail == "1") for inv in found
        ]
        return envelope(codes.OK, "获取成功", items)

    # -- reInvoice ------------------------------------------------------------------------------
    def re_invoice(self, caller: Caller, body: Any) -> Envelope:
        """开票重试 doc (ourworldcn/PowerLms 诺诺网接口/数电发票/2.…开票重试接口…): a failed invoice
        is issued again under the same serial and order number; an issued one (2, and 24, which
        exists) answers "发票已生成，无需再重试开票", one in progress "开票中（重试中）"; E9613
        after 20 retries. ASSUMPTION: the codes of the two refusals are undocumented; we answer
        E9100 (docs/platform-assumptions.md)."""
        if not isinstance(body, dict):
            return envelope(codes.MALFORMED, "请求报文必须是JSON对象")
        seller = self.seller_of(caller)
        serial, order_no = text(body, "fpqqlsh"), text(body, "orderno")
        invoice = (
            self.store.invoices.get(serial)
            if serial
            else self.store.invoice_by_order(seller, order_no)
        )
        if invoice is None or invoice.seller_tax != seller:
            return envelope(codes.NOT_FOUND, "发票不存在")
        if invoice.status in (ISSUED, SIGN_FAILED, VOIDED):
            return envelope(codes.MALFORMED, "发票已生成，无需再重试开票")
        if invoice.status != FAILED:
            return envelope(codes.MALFORMED, "开票中（重试中），请耐心等待开票结果")
        if invoice.retries >= RETRY_LIMIT:
            return envelope("E9613", f"同一流水号最多重试{RETRY_LIMIT}次")
        now = self.clock.now()
        invoice.retries += 1
        invoice.status = PENDING
        invoice.fail_cause = ""
        invoice.submitted_at = now
        invoice.due_at = now + self.config.issue_delay_ms / 1000
        # The invoice-level rule fails again; injected failures and quota are re-decided.
        invoice.deferred_fail = invoice_tax_failure(invoice.lines) or self.faults.issue_failure(
            self.config
        )
        invoice.sign_fail = self.faults.sign_failure(self.config)
        self.lifecycle.enqueue(invoice)
        return envelope(codes.OK, "重试提交成功", {"invoiceSerialNum": invoice.serial})

    # -- deliveryInvoice ------------------------------------------------------------------------
    def deliver(self, caller: Caller, body: Any) -> Envelope:
        if not isinstance(body, dict):
            return envelope(codes.MALFORMED, "请求报文必须是JSON对象")
        seller = self.seller_of(caller)
        if text(body, "taxnum") != seller:
            return envelope("E9302", "税号taxnum与请求头userTax不一致")
        phone, mail = text(body, "phone"), text(body, "mail")
        if not phone and not mail:
            return envelope(codes.MALFORMED, "手机号phone和邮箱mail至少填写一个")
        if len(mail) > 50:
            return envelope("E9104", "邮箱长度不能超过50")
        invoice = self._by_number(seller, text(body, "invoiceNum"), text(body, "invoiceCode"))
        if invoice is None or invoice.status not in (ISSUED, VOIDED):
            return envelope(codes.DELIVERY_NOT_FOUND, "发票不存在")
        invoice.deliveries.append({"at": str(int(self.clock.now())), "phone": phone, "mail": mail})
        self.store.save_invoice(invoice)
        return envelope(codes.OK, "交付成功")

    def _by_number(self, seller: str, number: str, code: str) -> Invoice | None:
        if len(number) == 20:
            found = self.store.invoice_by_number(number)
        else:  # 8-digit paper number + code (es/ec)
            found = next(
                (
                    i
                    for i in self.store.invoices.values()
                    if i.paper_no == number and i.paper_code == code
                ),
                None,
            )
        return found if found is not None and found.seller_tax == seller else None

    # -- invoiceCancellation (void) -------------------------------------------------------------
    def cancel(self, caller: Caller, body: Any) -> Envelope:
        if not isinstance(body, dict):
            return envelope(codes.MALFORMED, "请求报文必须是JSON对象")
        seller = self.seller_of(caller)
        invoice = self.store.invoices.get(text(body, "invoiceId"))
        if invoice is None or invoice.seller_tax != seller:
            return envelope(codes.NOT_FOUND, "发票不存在")
        if invoice.invoice_line in ELECTRONIC_LINES:
            # 12366: 数电 electronic invoices can never be voided — issue a red invoice instead.
            return envelope(codes.VOID_NOT_ALLOWED, "数电电子发票不能作废,请开具红字发票冲红")
        if invoice.status != ISSUED:
            return envelope(codes.VOID_BAD_STATE, "只有开票完成的发票可以作废")
        if (text(body, "invoiceCode"), text(body, "invoiceNo")) != (
            invoice.paper_code,
            invoice.paper_no,
        ):
            return envelope("E9102", "发票代码或号码与流水号不一致")
        if any(s.blue_serial == invoice.serial for s in self.store.slips.values()):
            return envelope(codes.VOID_BAD_STATE, "已申请红字确认单的发票不能作废")
        invoice.status = VOIDED
        invoice.voided_at = self.clock.now()
        self.lifecycle.release_quota(invoice)
        self.store.save_invoice(invoice)
        return envelope(codes.OK, "作废成功", invoice.serial)

    # -- queryInvoiceList -----------------------------------------------------------------------
    def query_list(self, caller: Caller, body: Any) -> Envelope:
        """Paged list by issue time. ASSUMPTION: field names (startTime, endTime "yyyy-MM-dd
        HH:mm:ss", pageNo, pageSize ≤ 50) — the method's doc was not available."""
        if not isinstance(body, dict):
            return envelope(codes.MALFORMED, "请求报文必须是JSON对象")
        try:
            page_no = int(text(body, "pageNo") or "1")
            page_size = int(text(body, "pageSize") or "10")
        except ValueError:
            return envelope(codes.MALFORMED, "pageNo/pageSize必须是整数")
        if page_no < 1 or not 1 <= page_size <= LIST_PAGE_MAX:
            return envelope(codes.MALFORMED, f"pageNo从1开始,pageSize为1-{LIST_PAGE_MAX}")
        start, end = text(body, "startTime"), text(body, "endTime")
        seller = self.seller_of(caller)
        rows = [
            inv
            for inv in self.store.invoices.values()
            if inv.seller_tax == seller and _within(inv, start, end)
        ]
        rows.sort(key=lambda inv: inv.submitted_at)
        page = rows[(page_no - 1) * page_size : page_no * page_size]
        base = self.base_url()
        items = [query_item(i, self.lifecycle.status(i), base, detail=False) for i in page]
        return envelope(codes.OK, "查询成功", {"total": len(rows), "list": items})


def _within(invoice: Invoice, start: str, end: str) -> bool:
    stamp = f"{cst(invoice.submitted_at):%Y-%m-%d %H:%M:%S}"
    return (not start or stamp >= start) and (not end or stamp <= end)
