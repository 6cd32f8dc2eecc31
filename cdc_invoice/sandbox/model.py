"""The sandbox's records: what the checks produce and what the store persists.

Records serialise to plain JSON (Decimals as strings) so the SQLite store can keep one JSON
document per invoice / slip next to a few indexed columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

# 数电 kinds only: pc 普票(电子), bs 专票(电子), ec/es paper 普/专. Legacy 税控 kinds: out of scope.
SUPPORTED_LINES = ("pc", "bs", "ec", "es")
ELECTRONIC_LINES = frozenset({"pc", "bs"})
PENDING = "20"  # stored status while issuing; 21 is derived from the clock (lifecycle.py)
ISSUED = "2"
FAILED = "22"
# 开票成功签章失败: the invoice exists (number, date) but its seal failed (发票详情查询 doc).
SIGN_FAILED = "24"
VOIDED = "3"

Kind = Literal["blue", "red"]


@dataclass(frozen=True, slots=True)
class Rejection:
    """A synchronous refusal: the envelope's code and describe."""

    code: str
    describe: str


@dataclass(frozen=True, slots=True)
class Buyer:
    name: str
    tax_no: str = ""
    address: str = ""
    tel: str = ""
    account: str = ""
    phone: str = ""
    email: str = ""


@dataclass(frozen=True, slots=True)
class Line:
    index: int  # 1-based position on the invoice (blueDetailIndex refers to it)
    name: str
    goods_code: str
    rate: Decimal
    ex: Decimal
    tax: Decimal
    with_tax: bool = True
    price: Decimal | None = None
    num: Decimal | None = None
    spec: str = ""
    unit: str = ""
    self_code: str = ""
    prop: int = 0  # 0 normal, 1 discount line, 2 discounted line
    favoured_flag: str = ""
    blue_index: int | None = None  # on red lines: the blue line they reverse

    @property
    def incl(self) -> Decimal:
        return self.ex + self.tax


@dataclass(frozen=True, slots=True)
class AcceptedOrder:
    """A requestBillingNew order that passed every synchronous check."""

    seller_tax: str
    order_no: str
    invoice_line: str
    buyer: Buyer
    lines: tuple[Line, ...]
    total_ex: Decimal
    total_tax: Decimal
    deferred_fail: str | None = None  # invoice-level rule broken: ends in status 22
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Invoice:
    """One invoice request as the platform tracks it (blue or red)."""

    serial: str
    order_no: str
    seller_tax: str
    invoice_line: str
    kind: Kind
    buyer: Buyer
    lines: tuple[Line, ...]
    total_ex: Decimal
    total_tax: Decimal
    submitted_at: float
    due_at: float
    status: str = PENDING
    deferred_fail: str | None = None
    fail_cause: str = ""
    number: str = ""  # 20-digit 数电 number once issued
    paper_code: str = ""  # es/ec only: the paper invoice's code and 8-digit number
    paper_no: str = ""
    issued_at: float | None = None
    voided_at: float | None = None
    original_number: str = ""  # red: the blue invoice's 数电 number
    bill_no: str = ""  # red: the confirmation slip that produced it
    red_reason: str = ""
    retries: int = 0  # reInvoice calls (E9613 after 20)
    sign_fail: str | None = None  # injected: ends in 24 (issued, seal failed) with this cause
    deliveries: list[dict[str, str]] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def total_incl(self) -> Decimal:
        return self.total_ex + self.total_tax

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            name: getattr(self, name) for name in self.__slots__ if name not in _SPECIAL
        }
        data["buyer"] = _buyer_json(self.buyer)
        data["lines"] = [line_json(ln) for ln in self.lines]
        data["total_ex"] = str(self.total_ex)
        data["total_tax"] = str(self.total_tax)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Invoice:
        values = dict(data)
        values["buyer"] = Buyer(**data["buyer"])
        values["lines"] = tuple(line_from_json(x) for x in data["lines"])
        values["total_ex"] = Decimal(data["total_ex"])
        values["total_tax"] = Decimal(data["total_tax"])
        return cls(**values)


_SPECIAL = frozenset({"buyer", "lines", "total_ex", "total_tax"})


def _buyer_json(buyer: Buyer) -> dict[str, str]:
    return {name: getattr(buyer, name) for name in Buyer.__slots__}


def line_json(line: Line) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in Line.__slots__:
        value = getattr(line, name)
        out[name] = str(value) if isinstance(value, Decimal) else value
    return out


def line_from_json(data: dict[str, Any]) -> Line:
    values = dict(data)
    for name in ("rate", "ex", "tax", "price", "num"):
        if values.get(name) is not None:
            values[name] = Decimal(values[name])
    return Line(**values)


@dataclass(slots=True)
class RedSlip:
    """A 红字确认单 (red-letter confirmation slip) applied for by the seller.

    billStatus: 15 申请中 → 01 无需确认 (or 02 待购方确认 → 04 已确认 / 05 购方否认 / 07 超72小时)
    → the red invoice (auto-issued for pc/bs; fastInvoiceRed for es/ec). 08/09 withdrawn.
    A buyer-initiated slip (apply_source "1") starts at 03 购方录入待销方确认 and waits for the
    seller's ``confirm`` (04 / 06 销方否认), or 07 after 72 h from its billTime.
    """

    bill_id: str
    bill_no: str
    bill_uuid: str
    seller_tax: str
    seller_name: str
    buyer_name: str
    buyer_tax_no: str
    blue_serial: str
    blue_number: str
    blue_line: str
    red_reason: str
    order_no: str  # the red invoice's order number
    lines: tuple[Line, ...]  # negative amounts, blue_index set
    created_at: float
    due_at: float  # end of 15 申请中
    needs_confirmation: bool = False
    bill_status: str = "15"
    confirmed_at: float | None = None
    message: str = ""
    open_status: str = "0"  # 1 once the red invoice exists
    red_serial: str = ""
    phone: str = ""
    email: str = ""
    apply_source: str = "0"  # 0 销方 录入 (saveInvoiceRedConfirm), 1 购方 (the buyer, 03 → confirm)

    @property
    def total_ex(self) -> Decimal:
        return sum((ln.ex for ln in self.lines), Decimal(0))

    @property
    def total_tax(self) -> Decimal:
        return sum((ln.tax for ln in self.lines), Decimal(0))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in self.__slots__}
        data["lines"] = [line_json(ln) for ln in self.lines]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RedSlip:
        values = dict(data)
        values["lines"] = tuple(line_from_json(x) for x in data["lines"])
        return cls(**values)
