"""Red-letter slip rules for 数电 invoices (reference §2.11, §3.5, §3.7) — pure functions.

A red line reverses one blue *item*: a normal line, or a discounted line with its discount line
netted in (red invoices carry no discount lines). Per blue item, the red quantities, amounts and
taxes of every live slip together may not exceed the item (cumulative control): exceeding it, or
reversing a fully reversed invoice, is E9103. Reason constraints: 开票有误 (2) only as a full
reversal; 销货退回 (1) keeps the unit price and needs a quantity; 销售折让 (4) is amount-only (no
price, no quantity); goods codes (1xx/2xx) cannot use 服务中止 (3), services (3xx) not 销货退回,
unless the blue invoice mixes both: "兼营销售则不对红字原因进行控制" (乐企 基础版 V4.000, 红字确认单
业务校验).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import cast

from cdc_invoice.sandbox import codes
from cdc_invoice.sandbox.fields import as_amount, as_quantity, as_rate, text
from cdc_invoice.sandbox.model import Line, RedSlip, Rejection
from cdc_invoice.sandbox.rules import LINE_TAX_TOLERANCE, PRICE_TOLERANCE

LIVE_SLIP_STATUSES = frozenset({"15", "01", "02", "03", "04"})
REASONS = frozenset({"1", "2", "3", "4"})
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class BlueItem:
    index: int
    name: str
    goods_code: str
    rate: Decimal
    ex: Decimal  # net of its discount line
    tax: Decimal
    num: Decimal | None
    spec: str = ""
    unit: str = ""
    favoured_flag: str = ""

    @property
    def ex_price(self) -> Decimal | None:
        return self.ex / self.num if self.num else None


@dataclass(slots=True)
class Used:
    ex: Decimal = ZERO
    tax: Decimal = ZERO
    num: Decimal = ZERO


def blue_items(lines: Sequence[Line]) -> dict[int, BlueItem]:
    items: dict[int, BlueItem] = {}
    for line in lines:
        if line.prop == 1:  # discount line: fold into the discounted line just before it
            base = items[line.index - 1]
            items[base.index] = BlueItem(
                base.index, base.name, base.goods_code, base.rate, base.ex + line.ex,
                base.tax + line.tax, base.num, base.spec, base.unit, base.favoured_flag,
            )  # fmt: skip
            continue
        items[line.index] = BlueItem(
            line.index, line.name, line.goods_code, line.rate, line.ex, line.tax, line.num,
            line.spec, line.unit, line.favoured_flag,
        )  # fmt: skip
    return items


def used_by(slips: Iterable[RedSlip]) -> dict[int, Used]:
    used: dict[int, Used] = {}
    for slip in slips:
        if slip.bill_status not in LIVE_SLIP_STATUSES:
            continue
        for line in slip.lines:
            assert line.blue_index is not None
            u = used.setdefault(line.blue_index, Used())
            u.ex += -line.ex
            u.tax += -line.tax
            u.num += -(line.num or ZERO)
    return used


def full_reversal(
    items: Mapping[int, BlueItem], used: Mapping[int, Used]
) -> list[Line] | Rejection:
    """Reverse whatever is left of every blue item."""
    lines: list[Line] = []
    for item in items.values():
        u = used.get(item.index, Used())
        ex, tax = item.ex - u.ex, item.tax - u.tax
        if ex <= 0 and tax <= 0:
            continue
        num = None if item.num is None else item.num - u.num
        lines.append(_red_line(len(lines) + 1, item, -ex, -tax, None if num is None else -num))
    if not lines:
        return Rejection(codes.RED_EXCEEDED, "该发票已全额冲红,不能重复冲红")
    return lines


def partial_reversal(
    detail: Sequence[object],
    items: Mapping[int, BlueItem],
    used: Mapping[int, Used],
    reason: str,
) -> list[Line] | Rejection:
    if reason == "2":
        return Rejection(codes.RED_INVALID, "冲红原因为开票有误时只能全额冲红(不传detail)")
    lines: list[Line] = []
    seen: set[int] = set()
    kinds = {item.goods_code[:1] for item in items.values()}
    mixed = bool(kinds & {"1", "2"}) and "3" in kinds  # 兼营
    for position, raw in enumerate(detail, start=1):
        if not isinstance(raw, dict):
            return Rejection(codes.RED_INVALID, f"detail第{position}行必须是对象")
        line = _partial_line(
            cast(Mapping[str, object], raw), position, items, used, reason, seen, mixed=mixed
        )
        if isinstance(line, Rejection):
            return line
        lines.append(line)
    if not lines:
        return Rejection(codes.RED_INVALID, "部分冲红明细detail不能为空")
    return lines


def _partial_line(
    d: Mapping[str, object],
    position: int,
    items: Mapping[int, BlueItem],
    used: Mapping[int, Used],
    reason: str,
    seen: set[int],
    *,
    mixed: bool = False,
) -> Line | Rejection:
    raw_index = text(d, "blueDetailIndex")
    item = items.get(int(raw_index)) if raw_index.isdigit() else None
    if item is None or item.index in seen:
        return Rejection(
            codes.RED_INVALID,
            f"detail第{position}行blueDetailIndex[{raw_index}]不是蓝票的明细行(折扣行请传被折扣行序号)",
        )
    seen.add(item.index)
    where = f"明细行名称:{item.name},蓝票第{item.index}行"
    if text(d, "goodsName") != item.name or text(d, "goodsCode") != item.goods_code:
        return Rejection(codes.RED_INVALID, f"商品名称/编码必须与蓝票一致,{where}")
    if as_rate(text(d, "taxRate")) != item.rate:
        return Rejection(codes.RED_INVALID, f"税率必须与蓝票一致,{where}")
    if reason == "3" and item.goods_code[0] in "12" and not mixed:
        return Rejection(codes.RED_INVALID, f"货物类商品不能以服务中止冲红,{where}")
    if reason == "1" and item.goods_code[0] == "3" and not mixed:
        return Rejection(codes.RED_INVALID, f"服务类商品不能以销货退回冲红,{where}")
    ex, tax = as_amount(text(d, "taxExcludedAmount")), as_amount(text(d, "taxAmount"))
    if ex is None or tax is None or ex >= 0 or tax > 0:
        return Rejection(codes.RED_INVALID, f"红字金额必须为负数、税额不能为正(两位小数),{where}")
    raw_num, raw_price = text(d, "num"), text(d, "taxExcludedPrice")
    num = as_quantity(raw_num) if raw_num else None
    price = as_quantity(raw_price) if raw_price else None
    if (raw_num and (num is None or num >= 0)) or (raw_price and (price is None or price <= 0)):
        return Rejection(codes.RED_INVALID, f"红字数量必须为负数、单价必须为正数,{where}")
    if reason == "4" and (num is not None or price is not None):
        return Rejection(codes.RED_INVALID, f"销售折让只能冲减金额,数量和单价须为空,{where}")
    if reason == "1":
        if num is None or price is None:
            return Rejection(codes.RED_INVALID, f"销货退回须填写数量和单价,{where}")
        blue_price = item.ex_price
        if blue_price is not None and abs(price - blue_price) > PRICE_TOLERANCE:
            return Rejection(
                codes.RED_INVALID, f"销货退回不能改变单价(蓝票{blue_price:.8f}),{where}"
            )
    if abs(ex * item.rate - tax) > LINE_TAX_TOLERANCE:
        return Rejection("E9131", f"税额误差不能超过{LINE_TAX_TOLERANCE},{where}")
    if num is not None and price is not None and abs(price * num - ex) > PRICE_TOLERANCE:
        return Rejection(codes.MALFORMED, f"单价×数量与金额误差不能超过{PRICE_TOLERANCE},{where}")
    u = used.get(item.index, Used())
    over_num = num is not None and item.num is not None and u.num - num > item.num
    if u.ex - ex > item.ex or u.tax - tax > item.tax or over_num:
        return Rejection(
            codes.RED_EXCEEDED,
            f"红冲数量/金额/税额累计超过蓝票剩余可冲额度(剩余金额{item.ex - u.ex}),{where}",
        )
    return _red_line(position, item, ex, tax, num, price)


def _red_line(
    index: int,
    item: BlueItem,
    ex: Decimal,
    tax: Decimal,
    num: Decimal | None,
    price: Decimal | None = None,
) -> Line:
    if price is None and num:
        price = item.ex_price
    return Line(
        index=index,
        name=item.name,
        goods_code=item.goods_code,
        rate=item.rate,
        ex=ex,
        tax=tax,
        with_tax=False,  # slips carry tax-exclusive prices
        price=None if price is None else price.quantize(Decimal("0.00000001")),
        num=num,
        spec=item.spec,
        unit=item.unit,
        favoured_flag=item.favoured_flag,
        blue_index=item.index,
    )
