"""数电 red-letter flow (§2.11): saveInvoiceRedConfirm, queryInvoiceRedConfirm, fastInvoiceRed,
confirmInfoCancel, and the buyer's side through ``POST /_sandbox/slips/{billId}/confirm``.

A slip reads 15 申请中 for the issue delay, then 01 无需确认 — or 02 待购方确认 when the runtime
knob ``red_requires_confirmation`` was on at application (the buyer has already used the blue
invoice, §3.7). A 02 slip not confirmed within 72 h (sandbox clock) becomes 07. On 01/04 the red
invoice of a pc/bs blue is issued automatically (it then goes 20 → 21 → 2 like a blue one);
es/ec need fastInvoiceRed.

Shapes follow the doc pages (诺诺开放平台诺税通saas红字确认单{申请,查询,确认,撤销}接口…md):
queryInvoiceRedConfirm answers ``{"code": "0000", "describe", "total", "list"}`` (its 响应参数
table); saveInvoiceRedConfirm takes the blue 数电 number in blueElecInvoiceNumber or, 20 digits,
in blueInvoiceNumber. ASSUMPTIONS (the pages list only E0000): E9999 for a reused billId (as one
client's tests expect), the generic E4000 for any other slip error.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from cdc_invoice.sandbox import codes, numbers
from cdc_invoice.sandbox.auth import Caller
from cdc_invoice.sandbox.fields import money, quantity_text, text
from cdc_invoice.sandbox.lifecycle import Clock, Lifecycle
from cdc_invoice.sandbox.model import (
    ELECTRONIC_LINES,
    ISSUED,
    SIGN_FAILED,
    Invoice,
    Line,
    RedSlip,
    Rejection,
)
from cdc_invoice.sandbox.options import RuntimeConfig
from cdc_invoice.sandbox.redrules import (
    LIVE_SLIP_STATUSES,
    REASONS,
    blue_items,
    full_reversal,
    partial_reversal,
    used_by,
)
from cdc_invoice.sandbox.rules import ORDER_NO_MAX_LEN
from cdc_invoice.sandbox.store import Store

Envelope = dict[str, Any]
CONFIRM_WINDOW_S = 72 * 3600
QUERY_RANGE_DAYS = 90
PAGE_MAX = 50
_PAPER_RED_LINES = {"es": ("bs", "es"), "ec": ("pc", "ec")}


def _env(code: str, describe: str, result: Any = None) -> Envelope:
    out: Envelope = {"code": code, "describe": describe}
    if result is not None:
        out["result"] = result
    return out


def _reject(r: Rejection) -> Envelope:
    return _env(r.code, r.describe)


class RedLetter:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: RuntimeConfig,
        lifecycle: Lifecycle,
        seller_of: Callable[[Caller], str],
    ) -> None:
        self._store = store
        self._clock = clock
        self._config = config
        self._lifecycle = lifecycle
        self._seller_of = seller_of
        self._due: list[tuple[float, str]] = []
        self._by_order: dict[tuple[str, str], str] = {}  # red orderNo -> billId (E9106 checks)
        for slip in store.slips.values():
            self._by_order[(slip.seller_tax, slip.order_no)] = slip.bill_id
            if slip.bill_status in _WAITING:
                self._schedule(slip)

    def handlers(self) -> dict[str, Callable[[Caller, Any], Envelope]]:
        return {
            "nuonuo.OpeMplatform.saveInvoiceRedConfirm": self.save,
            "nuonuo.OpeMplatform.queryInvoiceRedConfirm": self.query,
            "nuonuo.OpeMplatform.fastInvoiceRed": self.fast_red,
            "nuonuo.OpeMplatform.confirmInfoCancel": self.withdraw,
            "nuonuo.OpeMplatform.confirm": self.confirm,
        }

    def reserved(self, seller: str, order_no: str) -> bool:
        """Order numbers promised to red invoices not issued yet (they count for E9106)."""
        bill_id = self._by_order.get((seller, order_no))
        slip = self._store.slips.get(bill_id) if bill_id else None
        return slip is not None and not slip.red_serial and slip.bill_status in LIVE_SLIP_STATUSES

    # -- time ---------------------------------------------------------------------------------
    def _schedule(self, slip: RedSlip) -> None:
        # 15 ends at due_at; 02/03 expire 72 h after the slip's own time (billTime), 查询 doc 07
        due = slip.due_at if slip.bill_status == "15" else slip.created_at + CONFIRM_WINDOW_S
        heapq.heappush(self._due, (due, slip.bill_id))

    def advance(self) -> None:
        now = self._clock.now()
        while self._due and self._due[0][0] <= now:
            _, bill_id = heapq.heappop(self._due)
            slip = self._store.slips[bill_id]
            if slip.bill_status not in _WAITING:
                continue  # withdrawn or answered meanwhile
            if slip.bill_status == "15":
                slip.bill_status = "02" if slip.needs_confirmation else "01"
                if slip.bill_status == "02":
                    self._schedule(slip)  # now waits for the buyer, at most 72 h
                else:
                    self._auto_issue(slip, at=slip.due_at)
            elif slip.created_at + CONFIRM_WINDOW_S <= now:  # 02 or 03: 72 h from billTime
                slip.bill_status, slip.message = "07", "超72小时未确认,确认单已作废"
            else:
                continue
            self._store.save_slip(slip)

    def buyer_confirms(self, bill_id: str, agree: bool) -> RedSlip:
        """The buyer's answer to a 02 slip (admin endpoint: the sandbox plays the buyer)."""
        self.advance()
        slip = self._store.slips.get(bill_id)
        if slip is None:
            raise KeyError(bill_id)
        if slip.bill_status != "02":
            raise ValueError(f"slip {bill_id} is {slip.bill_status}, not 02 awaiting the buyer")
        slip.confirmed_at = self._clock.now()
        slip.bill_status = "04" if agree else "05"
        if agree:
            self._auto_issue(slip, at=slip.confirmed_at)
        self._store.save_slip(slip)
        return slip

    def buyer_applies(self, blue_number: str, reason: str, detail: Any = None) -> RedSlip:
        """A buyer-initiated slip (admin endpoint: the sandbox plays the buyer, who has booked the
        blue invoice): 03 购方录入待销方确认 until the seller's ``confirm`` or 72 h (查询 doc)."""
        self.advance()
        blue = self._store.invoice_by_number(blue_number)
        if blue is None or blue.kind != "blue" or blue.status != ISSUED:
            raise KeyError(blue_number)
        if reason not in REASONS:
            raise ValueError("redReason must be 1, 2, 3 or 4")
        items = blue_items(blue.lines)
        used = used_by(s for s in self._store.slips.values() if s.blue_serial == blue.serial)
        if detail:
            if not isinstance(detail, list):
                raise ValueError("detail must be a list")
            lines = partial_reversal(detail, items, used, reason)
        else:
            lines = full_reversal(items, used)
        if isinstance(lines, Rejection):
            raise ValueError(f"{lines.code} {lines.describe}")
        now = self._clock.now()
        seq = self._store.next_counter("bill_seq")
        slip = RedSlip(
            bill_id=f"{seq:019d}",
            bill_no=numbers.bill_no(now, seq),
            bill_uuid=numbers.bill_uuid(blue.seller_tax, seq),
            seller_tax=blue.seller_tax,
            seller_name=str(blue.extra.get("salerName", "")),
            buyer_name=blue.buyer.name,
            buyer_tax_no=blue.buyer.tax_no,
            blue_serial=blue.serial,
            blue_number=blue.number,
            blue_line=blue.invoice_line,
            red_reason=reason,
            order_no=f"HZ{seq:018d}",
            lines=tuple(lines),
            created_at=now,
            due_at=now,
            bill_status="03",
            apply_source="1",
        )
        self._store.save_slip(slip)
        self._by_order[(slip.seller_tax, slip.order_no)] = slip.bill_id
        self._schedule(slip)
        return slip

    def _auto_issue(self, slip: RedSlip, *, at: float) -> None:
        if slip.blue_line in ELECTRONIC_LINES:
            self._issue_red(slip, slip.order_no, slip.blue_line, at)

    def _issue_red(self, slip: RedSlip, order_no: str, line: str, at: float) -> Invoice:
        blue = self._store.invoices[slip.blue_serial]
        buyer = blue.buyer
        if slip.phone or slip.email:
            buyer = replace(buyer, phone=slip.phone or buyer.phone, email=slip.email or buyer.email)
        red = Invoice(
            serial=numbers.serial(at, self._store.next_counter("serial_seq")),
            order_no=order_no,
            seller_tax=slip.seller_tax,
            invoice_line=line,
            kind="red",
            buyer=buyer,
            lines=slip.lines,
            total_ex=slip.total_ex,
            total_tax=slip.total_tax,
            submitted_at=at,
            due_at=at + self._config.issue_delay_ms / 1000,
            original_number=slip.blue_number,
            bill_no=slip.bill_no,
            red_reason=slip.red_reason,
            extra={
                **blue.extra,
                "remark": (
                    f"被冲红蓝字数电票号码：{slip.blue_number} "
                    f"红字发票信息确认单编号：{slip.bill_no}"
                ),
            },
        )
        self._lifecycle.enqueue(red)
        slip.open_status, slip.red_serial, slip.order_no = "1", red.serial, order_no
        self._by_order[(slip.seller_tax, order_no)] = slip.bill_id
        return red

    # -- saveInvoiceRedConfirm ----------------------------------------------------------------
    def save(self, caller: Caller, body: Any) -> Envelope:
        if not isinstance(body, dict):
            return _env(codes.MALFORMED, "请求报文必须是JSON对象")
        seller = self._seller_of(caller)
        if text(body, "sellerTaxNo") != seller:
            return _env("E9302", "销方税号sellerTaxNo与请求头userTax不一致")
        bill_id = text(body, "billId")
        if len(bill_id) > 32:
            return _env(codes.RED_INVALID, "红字确认单申请号billId不能超过32位")
        if bill_id in self._store.slips:
            return _env(codes.DELIVERY_NOT_FOUND, "申请号重复")
        if text(body, "applySource") != "0":
            return _env(codes.RED_INVALID, "沙箱只支持销方申请(applySource=0)")
        # 红字确认单申请 doc: blueElecInvoiceNumber is the 数电 number; blueInvoiceNumber
        # "若传20位数字则视为是蓝字数电票号码" (the doc's own example puts the 20 digits there).
        number = text(body, "blueElecInvoiceNumber")
        legacy = text(body, "blueInvoiceNumber")
        if not number and len(legacy) == 20 and legacy.isdigit():
            number = legacy
        blue = self._store.invoice_by_number(number)
        if blue is None or blue.seller_tax != seller or blue.kind != "blue":
            return _env(codes.RED_INVALID, "蓝字数电发票不存在")
        # ASSUMPTION: a 24 (issued, seal failed) exists and can be reversed like a 2.
        if blue.status not in (ISSUED, SIGN_FAILED):
            return _env(codes.RED_INVALID, f"蓝字发票状态[{blue.status}]不能冲红")
        if text(body, "blueInvoiceLine") != blue.invoice_line:
            return _env(codes.RED_INVALID, f"blueInvoiceLine与蓝票票种[{blue.invoice_line}]不一致")
        if text(body, "buyerName") != blue.buyer.name:
            return _env("E9117", "购方名称与蓝票不一致")
        if text(body, "buyerTaxNo") != blue.buyer.tax_no:
            return _env("E9118", "购方税号与蓝票不一致")
        reason = text(body, "redReason")
        if reason not in REASONS:
            return _env(codes.RED_INVALID, "冲红原因redReason只能为1/2/3/4")
        now = self._clock.now()
        seq = self._store.next_counter("bill_seq")
        order_no = text(body, "orderNo") or f"HZ{seq:018d}"
        if len(order_no) > ORDER_NO_MAX_LEN:
            return _env(codes.MALFORMED, f"orderNo长度不能超过{ORDER_NO_MAX_LEN}")
        if self._store.order_taken(seller, order_no) or self.reserved(seller, order_no):
            return _env("E9106", "订单编号或流水号不能重复")
        items = blue_items(blue.lines)
        used = used_by(s for s in self._store.slips.values() if s.blue_serial == blue.serial)
        detail = body.get("detail")
        lines: list[Line] | Rejection
        if detail:
            if not isinstance(detail, list):
                return _env(codes.RED_INVALID, "detail必须是数组")
            lines = partial_reversal(detail, items, used, reason)
        else:
            lines = full_reversal(items, used)
        if isinstance(lines, Rejection):
            return _reject(lines)
        slip = RedSlip(
            bill_id=bill_id or f"{seq:019d}",
            bill_no=numbers.bill_no(now, seq),
            bill_uuid=numbers.bill_uuid(seller, seq),
            seller_tax=seller,
            seller_name=text(body, "sellerName"),
            buyer_name=blue.buyer.name,
            buyer_tax_no=blue.buyer.tax_no,
            blue_serial=blue.serial,
            blue_number=blue.number,
            blue_line=blue.invoice_line,
            red_reason=reason,
            order_no=order_no,
            lines=tuple(lines),
            created_at=now,
            due_at=now + self._config.issue_delay_ms / 1000,
            needs_confirmation=self._config.red_requires_confirmation,
            phone=text(body, "phone"),
            email=text(body, "email"),
        )
        self._store.save_slip(slip)
        self._by_order[(seller, order_no)] = slip.bill_id
        self._schedule(slip)
        return _env(codes.OK, "红字确认单申请成功", slip.bill_id)

    # -- queryInvoiceRedConfirm ---------------------------------------------------------------
    def query(self, caller: Caller, body: Any) -> Envelope:
        if not isinstance(body, dict):
            return _env(codes.MALFORMED, "请求报文必须是JSON对象")
        identity = text(body, "identity")
        if identity not in ("0", "1"):
            return _env(codes.RED_INVALID, "操作方身份identity只能为0或1")
        try:
            page_no = int(text(body, "pageNo") or "1")
            page_size = int(text(body, "pageSize") or "10")
        except ValueError:
            return _env(codes.RED_INVALID, "pageNo/pageSize必须是整数")
        if page_no < 1 or not 1 <= page_size <= PAGE_MAX:
            return _env(codes.RED_INVALID, f"pageNo从1开始,pageSize为1-{PAGE_MAX}")
        ids = {k: text(body, k) for k in ("billId", "billNo", "billUuid")}
        start, end = text(body, "billTimeStart"), text(body, "billTimeEnd")
        if not any(ids.values()) and _day_range(start, end) is None:
            return _env(
                codes.RED_INVALID, f"未传确认单号时填开时间必填且范围不超过{QUERY_RANGE_DAYS}天"
            )
        seller = self._seller_of(caller)
        status = text(body, "billStatus")
        rows = [
            s
            for s in self._store.slips.values()
            if identity == "0"  # the sandbox's sellers never act as a buyer
            and s.seller_tax == seller
            and all(not v or getattr(s, _ATTR[k]) == v for k, v in ids.items())
            and (not status or s.bill_status == status)
            and (any(ids.values()) or _in_days(s.created_at, start, end))
        ]
        rows.sort(key=lambda s: s.created_at)
        page = rows[(page_no - 1) * page_size : page_no * page_size]
        # 红字确认单查询 doc, 响应参数: code (example "0000"), describe, total (String), list — at
        # the top level, no result wrapper.
        return {
            "code": codes.RED_QUERY_OK,
            "describe": "查询成功",
            "total": str(len(rows)),
            "list": [self.view(s) for s in page],
        }

    def view(self, slip: RedSlip) -> dict[str, Any]:
        out: dict[str, Any] = {
            "billId": slip.bill_id,
            "billNo": slip.bill_no,
            "billUuid": slip.bill_uuid,
            "billStatus": slip.bill_status,
            "billMessage": slip.message,
            "requestStatus": "",
            "openStatus": slip.open_status,
            "applySource": slip.apply_source,
            "blueInvoiceLine": slip.blue_line,
            "blueInvoiceNumber": slip.blue_number,
            "blueElecInvoiceNumber": slip.blue_number,
            "billTime": f"{numbers.cst(slip.created_at):%Y-%m-%d %H:%M:%S}",
            "confirmTime": (
                f"{numbers.cst(slip.confirmed_at):%Y-%m-%d %H:%M:%S}" if slip.confirmed_at else ""
            ),
            "sellerTaxNo": slip.seller_tax,
            "sellerName": slip.seller_name,
            "buyerTaxNo": slip.buyer_tax_no,
            "buyerName": slip.buyer_name,
            "taxExcludedAmount": money(slip.total_ex),
            "taxAmount": money(slip.total_tax),
            "redReason": slip.red_reason,
            "detail": [
                {
                    "blueDetailIndex": str(ln.blue_index),
                    "goodsName": ln.name,
                    "goodsCode": ln.goods_code,
                    "unit": ln.unit,
                    "specType": ln.spec,
                    "num": quantity_text(ln.num),
                    "taxExcludedPrice": quantity_text(ln.price),
                    "taxExcludedAmount": money(ln.ex),
                    "taxAmount": money(ln.tax),
                    "taxRate": quantity_text(ln.rate),
                    "favouredPolicyFlag": ln.favoured_flag,
                }
                for ln in slip.lines
            ],
        }
        if slip.red_serial:
            red = self._store.invoices[slip.red_serial]
            out.update(invoiceSerialNum=red.serial, orderNo=red.order_no)
            if red.number:
                out["redInvoiceNumber"] = red.number
        return out

    # -- fastInvoiceRed -----------------------------------------------------------------------
    def fast_red(self, caller: Caller, body: Any) -> Envelope:
        if not isinstance(body, dict):
            return _env(codes.MALFORMED, "请求报文必须是JSON对象")
        seller = self._seller_of(caller)
        if text(body, "taxNum") != seller:
            return _env("E9302", "税号taxNum与请求头userTax不一致")
        slip = next(
            (s for s in self._store.slips.values() if s.bill_no == text(body, "billNo")), None
        )
        if slip is None or slip.seller_tax != seller or slip.bill_uuid != text(body, "billUuid"):
            return _env(codes.RED_INVALID, "红字确认单不存在(billNo/billUuid)")
        if text(body, "elecInvoiceNumber") not in ("", slip.blue_number):
            return _env(codes.RED_INVALID, "elecInvoiceNumber与确认单的蓝票号码不一致")
        if slip.red_serial:  # already (auto-)issued: fastInvoiceRed just retrieves it
            return _env(codes.OK, "开票提交成功", {"invoiceSerialNum": slip.red_serial})
        if slip.bill_status not in ("01", "04"):
            return _env(codes.RED_INVALID, f"确认单状态[{slip.bill_status}]不能开具红票")
        order_no = text(body, "orderNo")
        if not order_no or len(order_no) > ORDER_NO_MAX_LEN:
            return _env(codes.MALFORMED, f"orderNo不能为空且长度不能超过{ORDER_NO_MAX_LEN}")
        if self._store.order_taken(seller, order_no) or (
            order_no != slip.order_no and self.reserved(seller, order_no)
        ):
            return _env("E9106", "订单编号或流水号不能重复")
        line = text(body, "invoiceLine") or slip.blue_line
        if line not in _PAPER_RED_LINES.get(slip.blue_line, (slip.blue_line,)):
            return _env(codes.RED_INVALID, f"蓝票票种{slip.blue_line}不能开具{line}红票")
        red = self._issue_red(slip, order_no, line, self._clock.now())
        self._store.save_slip(slip)
        return _env(codes.OK, "开票提交成功", {"invoiceSerialNum": red.serial})

    # -- confirm ------------------------------------------------------------------------------
    def confirm(self, caller: Caller, body: Any) -> Envelope:
        """The seller's answer to a buyer-initiated slip (红字确认单确认 doc).

        billUuid | billId | billNo, priority uuid > id > no; identity 0 销方; confirmAgreement
        1 同意 / 0 拒绝; orderNo = the order number of the red invoice issued on agreement.
        """
        if not isinstance(body, dict):
            return _env(codes.MALFORMED, "请求报文必须是JSON对象")
        if text(body, "identity") != "0":
            return _env(codes.MALFORMED, "沙箱只支持销方确认(identity=0)")
        agreement = text(body, "confirmAgreement")
        if agreement not in ("0", "1"):
            return _env(codes.MALFORMED, "处理意见confirmAgreement只能为0或1")
        if len(text(body, "confirmReason")) > 200:
            return _env(codes.MALFORMED, "处理理由confirmReason不能超过200个字符")
        seller = self._seller_of(caller)
        slip = self._find(seller, body)
        if slip is None:
            return _env(codes.RED_INVALID, "红字确认单不存在")
        if slip.bill_status != "03":
            return _env(codes.RED_INVALID, f"确认单状态[{slip.bill_status}]不是购方录入待销方确认")
        order_no = text(body, "orderNo")
        if order_no and order_no != slip.order_no:
            if len(order_no) > ORDER_NO_MAX_LEN:
                return _env(codes.MALFORMED, f"orderNo长度不能超过{ORDER_NO_MAX_LEN}")
            if self._store.order_taken(seller, order_no) or self.reserved(seller, order_no):
                return _env("E9106", "订单编号或流水号不能重复")
            self._by_order.pop((seller, slip.order_no), None)
            slip.order_no = order_no
            self._by_order[(seller, order_no)] = slip.bill_id
        now = self._clock.now()
        slip.confirmed_at = now
        if agreement == "1":
            slip.bill_status, slip.message = "04", "购销双方已确认"
            self._auto_issue(slip, at=now)
        else:
            slip.bill_status, slip.message = "06", "作废(购方录入销方否认)"
        self._store.save_slip(slip)
        # ASSUMPTION: the doc names result an Object without its fields; the sandbox echoes ids.
        result = {
            "billId": slip.bill_id,
            "billNo": slip.bill_no,
            "billUuid": slip.bill_uuid,
            "billStatus": slip.bill_status,
        }
        return _env(codes.OK, "请求成功", result)

    def _find(self, seller: str, body: dict[str, Any]) -> RedSlip | None:
        ids = {k: text(body, k) for k in ("billUuid", "billId", "billNo")}
        key = next(((k, v) for k, v in ids.items() if v), None)  # priority uuid > id > no
        if key is None:
            return None
        return next(
            (
                s
                for s in self._store.slips.values()
                if getattr(s, _ATTR[key[0]]) == key[1] and s.seller_tax == seller
            ),
            None,
        )

    # -- confirmInfoCancel --------------------------------------------------------------------
    def withdraw(self, caller: Caller, body: Any) -> Envelope:
        if not isinstance(body, dict):
            return _env(codes.MALFORMED, "请求报文必须是JSON对象")
        seller = self._seller_of(caller)
        ids = {k: text(body, k) for k in ("billUuid", "billId", "billNo")}
        key = next(((k, v) for k, v in ids.items() if v), None)  # priority uuid > id > no
        slip = next(
            (
                s
                for s in self._store.slips.values()
                if key and getattr(s, _ATTR[key[0]]) == key[1] and s.seller_tax == seller
            ),
            None,
        )
        if slip is None:
            return _env(codes.RED_INVALID, "红字确认单不存在")
        if slip.red_serial or slip.bill_status not in LIVE_SLIP_STATUSES:
            return _env(codes.RED_INVALID, "已开具红票或已作废的确认单不能撤销")
        slip.bill_status = "09" if slip.bill_status == "04" else "08"
        self._store.save_slip(slip)
        return _env(codes.OK, "撤销成功")


_ATTR = {"billId": "bill_id", "billNo": "bill_no", "billUuid": "bill_uuid"}
_WAITING = ("15", "02", "03")


def _day_range(start: str, end: str) -> tuple[datetime, datetime] | None:
    try:
        a = datetime.strptime(start[:10], "%Y-%m-%d")
        b = datetime.strptime(end[:10], "%Y-%m-%d")
    except ValueError:
        return None
    return (a, b) if 0 <= (b - a).days <= QUERY_RANGE_DAYS else None


def _in_days(epoch: float, start: str, end: str) -> bool:
    day = f"{numbers.cst(epoch):%Y-%m-%d}"
    return start[:10] <= day <= end[:10]
