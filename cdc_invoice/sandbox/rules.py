"""requestBillingNew checks, written from reference/nuonuo.md §2.7, §2.10, §3.3-§3.5 and §5.3.

Pure functions: the only state they need (is this orderNo taken?) comes in as a callable, so every
rejection code can be tested with a crafted payload. This module deliberately does not import the
domain (cdc_invoice.invoice): the sandbox must not share the mistakes of the code it checks.

Checks run in the order of the simulator checklist (§5.3), and the first failure wins:
E9302 → E9301 → orderNo → E9106 → header fields → E9122 → discount rules → E9123 → E9124-E9129
→ E9130 → E9131 → price × quantity → goods code → line count ≤ 2000. The invoice-level tax rule
(|Σ(ex×rate) − Σtax| ≤ 1.27) is only decidable by the bureau, so it does not reject the request:
it becomes ``AcceptedOrder.deferred_fail`` and the invoice later ends in status 22.

Codes: E4000 (documented on the requestBillingNew page: "必填字段没有传值，或者传的值不对") for a
missing or malformed field that has no code of its own, |price × num − amount| > 0.01 included
(the page lists no code for it). E9124-E9129 are documented per field, as in ``_AMOUNT_FIELDS``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Mapping, Sequence
from decimal import Decimal
from typing import cast

from cdc_invoice.sandbox import codes
from cdc_invoice.sandbox.fields import (
    as_amount,
    as_quantity,
    as_rate,
    loose_decimal,
    order_time,
    round2,
    text,
)
from cdc_invoice.sandbox.model import (
    SUPPORTED_LINES,
    AcceptedOrder,
    Buyer,
    Line,
    Rejection,
)

MAX_LINES = 2000  # Nuonuo API limit, discount lines included (§2.7)
ORDER_NO_MAX_LEN = 20  # the official doc says 20; SDKs allow 64 — be as strict as the doc
LINE_TAX_TOLERANCE = Decimal("0.06")
INVOICE_TAX_TOLERANCE = Decimal("1.27")
PRICE_TOLERANCE = Decimal("0.01")
# 可用税率 of a general taxpayer plus the 征收率 (§3.2); anything else is a typo in a mapping.
ALLOWED_RATES = frozenset(
    Decimal(r) for r in ("0", "0.01", "0.015", "0.03", "0.05", "0.06", "0.09", "0.13")
)
_TAX_NO_RE = re.compile(r"^[0-9A-Z]{15,20}$")
_GOODS_CODE_RE = re.compile(r"^[1-6]\d{18}$")
# 数电 favouredPolicyFlag 01..18, or "0" = none: the requestBillingNew doc's own request example
# sends "favouredPolicyFlag":"0" (with "zeroRateFlag":"0", "deduction":"0") on a 数电 line.
_FAVOURED_RE = re.compile(r"^(0|0[1-9]|1[0-8])$")

# (field, code when too long, code when not a 2-decimal number) — assumed split of E9124-E9129.
_AMOUNT_FIELDS = (
    ("taxIncludedAmount", "E9124", "E9125"),
    ("taxExcludedAmount", "E9126", "E9127"),
    ("tax", "E9128", "E9129"),
)

IsDuplicate = Callable[[str, str], bool]
Detail = Mapping[str, object]


def check_billing(
    body: object, *, user_tax: str, sellers: Container[str], is_duplicate: IsDuplicate
) -> AcceptedOrder | Rejection:
    """Validate a requestBillingNew body; accepted orders carry the normalised lines."""
    if not isinstance(body, dict) or not isinstance(body.get("order"), dict):
        return Rejection(codes.MALFORMED, "请求报文格式错误:缺少order对象")
    order = cast(Mapping[str, object], body["order"])

    seller = text(order, "salerTaxNum")
    if seller != user_tax:
        return Rejection("E9302", f"销方税号[{seller}]与请求头userTax[{user_tax}]不一致")
    if seller not in sellers:
        return Rejection("E9301", f"企业[{seller}]未在平台注册(企业资质)")
    order_no = text(order, "orderNo")
    if not order_no or len(order_no) > ORDER_NO_MAX_LEN:
        return Rejection(
            codes.MALFORMED, f"订单编号orderNo不能为空且长度不能超过{ORDER_NO_MAX_LEN}"
        )
    if is_duplicate(seller, order_no):
        return Rejection("E9106", "订单编号或流水号不能重复")

    header = _check_header(order)
    if isinstance(header, Rejection):
        return header
    invoice_line, buyer = header

    raw_details = order.get("invoiceDetail")
    if not isinstance(raw_details, list) or not raw_details:
        return Rejection("E9122", "发票明细不能为空")
    if not all(isinstance(d, dict) for d in raw_details):
        return Rejection(codes.MALFORMED, "发票明细invoiceDetail的每一行必须是对象")
    details = cast(list[Detail], raw_details)

    rejected = _check_discounts(details)
    if rejected:
        return rejected
    lines: list[Line] = []
    for index, detail in enumerate(details, start=1):
        line = _check_line(detail, index)
        if isinstance(line, Rejection):
            return line
        lines.append(line)
    if len(lines) > MAX_LINES:
        return Rejection(codes.MALFORMED, f"发票明细行数不能超过{MAX_LINES}行(含折扣行)")

    total_ex = sum((ln.ex for ln in lines), Decimal(0))
    total_tax = sum((ln.tax for ln in lines), Decimal(0))
    if total_ex + total_tax <= 0:
        return Rejection(codes.MALFORMED, "蓝字发票价税合计必须大于0")
    return AcceptedOrder(
        seller_tax=seller,
        order_no=order_no,
        invoice_line=invoice_line,
        buyer=buyer,
        lines=tuple(lines),
        total_ex=total_ex,
        total_tax=total_tax,
        deferred_fail=invoice_tax_failure(lines),
        extra={k: text(order, k) for k in _ECHOED_FIELDS},
    )


_ECHOED_FIELDS = (
    "clerk",
    "payee",
    "checker",
    "remark",
    "salerTel",
    "salerAddress",
    "salerAccount",
    "invoiceDate",
    "extensionNumber",
    "showBankAccountType",
    "surveyAnswerType",
    "pushMode",
    "callBackUrl",
)


def invoice_tax_failure(lines: Sequence[Line]) -> str | None:
    """乐企 invoice rule: |Σ(ex_i × rate_i) − Σ tax_i| ≤ 1.27, unrounded products (§3.3)."""
    expected = sum((ln.ex * ln.rate for ln in lines), Decimal(0))
    actual = sum((ln.tax for ln in lines), Decimal(0))
    if abs(expected - actual) > INVOICE_TAX_TOLERANCE:
        return (
            f"发票整体税额误差超过{INVOICE_TAX_TOLERANCE}:Σ(金额×税率)={expected},合计税额={actual}"
        )
    return None


def _check_header(order: Mapping[str, object]) -> tuple[str, Buyer] | Rejection:
    invoice_type = text(order, "invoiceType")
    if invoice_type not in ("1", "2"):
        return Rejection("E9101", "开票类型invoiceType只能为1或2")
    invoice_line = text(order, "invoiceLine") or "p"  # the platform's default is 税控 p
    if invoice_line not in SUPPORTED_LINES:
        return Rejection(
            codes.MALFORMED, f"沙箱只支持数电票种{'/'.join(SUPPORTED_LINES)},收到[{invoice_line}]"
        )
    if invoice_type == "2":
        return Rejection("E9101", "数电发票不能用invoiceType=2红冲,请使用红字确认单")

    buyer = Buyer(
        name=text(order, "buyerName"),
        tax_no=text(order, "buyerTaxNum"),
        address=text(order, "buyerAddress"),
        tel=text(order, "buyerTel"),
        account=text(order, "buyerAccount"),
        phone=text(order, "buyerPhone"),
        email=text(order, "email"),
    )
    if not buyer.name or len(buyer.name) > 100:
        return Rejection(codes.MALFORMED, "购方名称buyerName不能为空且不能超过100个字符")
    if buyer.tax_no and not _TAX_NO_RE.match(buyer.tax_no):
        return Rejection(
            codes.MALFORMED, f"购方税号[{buyer.tax_no}]格式错误(15-20位数字或大写字母)"
        )
    if invoice_line in ("bs", "es") and not buyer.tax_no:
        return Rejection(codes.MALFORMED, "数电专票购方税号buyerTaxNum不能为空")
    # requestBillingNew: "buyerTel String N … 50", "buyerAddress String N … 80", "购方地址+电话总共
    # 不超100字符".
    if len(buyer.address) > 80:
        return Rejection(codes.MALFORMED, "购方地址buyerAddress不能超过80个字符")
    if len(buyer.tel) > 50:
        return Rejection(codes.MALFORMED, "购方电话buyerTel不能超过50个字符")
    if len(buyer.address) + len(buyer.tel) > 100:
        return Rejection(codes.MALFORMED, "购方地址和电话合计不能超过100个字符")
    if len(buyer.email) > 50:
        return Rejection("E9104", "邮箱长度不能超过50")
    push_mode = text(order, "pushMode")
    if push_mode not in ("", "-1", "0", "1", "2"):
        return Rejection(codes.MALFORMED, "推送方式pushMode只能为-1/0/1/2")
    if push_mode in ("0", "2") and not buyer.email:
        return Rejection(codes.MALFORMED, "推送方式为邮箱时email不能为空")
    if push_mode in ("1", "2") and not buyer.phone:
        return Rejection(codes.MALFORMED, "推送方式为手机时buyerPhone不能为空")
    clerk = text(order, "clerk")
    if not clerk or len(clerk) > 20:
        return Rejection(codes.MALFORMED, "开票员clerk不能为空且不能超过20个字符")
    for key, label in (("payee", "收款人"), ("checker", "复核人")):
        if len(text(order, key)) > 20:
            return Rejection(codes.MALFORMED, f"{label}{key}不能超过20个字符")
    # "showBankAccountType … 不传默认为0：都不显示；传1…；传2…；传3…"
    if text(order, "showBankAccountType") not in ("", "0", "1", "2", "3"):
        return Rejection(codes.MALFORMED, "showBankAccountType只能为0/1/2/3")
    # "surveyAnswerType … 对应值：1-…；2-…；3-…"
    if text(order, "surveyAnswerType") not in ("", "1", "2", "3"):
        return Rejection(codes.MALFORMED, "surveyAnswerType只能为1/2/3")
    if order_time(text(order, "invoiceDate")) is None:
        return Rejection(codes.MALFORMED, "订单时间invoiceDate格式必须为yyyy-MM-dd HH:mm:ss")
    if len(text(order, "remark")) > 200:
        return Rejection(codes.MALFORMED, "数电发票备注remark不能超过200个字符")
    return invoice_line, buyer


def _prop(detail: Detail) -> str:
    return text(detail, "invoiceLineProperty") or "0"


def _basis_amount(detail: Detail) -> Decimal | None:
    """The amount a discount is compared on: tax-inclusive when given, else tax-exclusive."""
    for key in ("taxIncludedAmount", "taxExcludedAmount"):
        value = loose_decimal(text(detail, key))
        if value is not None:
            return value
    return None


def _check_discounts(details: Sequence[Detail]) -> Rejection | None:
    """Discount pairs (§3.5): 2 = discounted line, 1 = its discount line, directly after it."""
    for i, detail in enumerate(details):
        row = i + 1
        prop = _prop(detail)
        if prop not in ("0", "1", "2"):
            return Rejection(codes.MALFORMED, f"第{row}行发票行性质invoiceLineProperty只能为0/1/2")
        num = loose_decimal(text(detail, "num"))
        if prop == "2":
            if i + 1 >= len(details) or _prop(details[i + 1]) != "1":
                return Rejection("E9110", f"第{row}行被折扣行后必须紧跟折扣行")
            if num is not None and num <= 0:
                return Rejection("E9114", f"第{row}行蓝票被折扣行数量必须为正数")
            continue
        if prop != "1":
            continue
        if i == 0 or _prop(details[i - 1]) != "2":
            return Rejection("E9110", f"第{row}行折扣行必须紧跟在被折扣行之后")
        base = details[i - 1]
        if text(detail, "goodsName") != text(base, "goodsName") or text(
            detail, "goodsCode"
        ) != text(base, "goodsCode"):
            return Rejection("E9105", f"第{row}行折扣行商品名称/编码必须与被折扣行一致")
        if num is not None and num >= 0:
            return Rejection("E9111", f"第{row}行蓝票折扣行数量必须为负数")
        if loose_decimal(text(detail, "taxRate")) != loose_decimal(text(base, "taxRate")):
            return Rejection("E9112", f"第{row}行折扣行税率必须与被折扣行一致")
        discount, discounted = _basis_amount(detail), _basis_amount(base)
        if (
            discount is not None
            and discounted is not None
            and (discount >= 0 or -discount > discounted)
        ):
            return Rejection("E9108", f"第{row}行折扣金额必须为负且不能大于被折扣行金额")
    return None


def _check_line(detail: Detail, row: int) -> Line | Rejection:
    name = text(detail, "goodsName")
    where = f"明细行名称:{name},第{row}行"
    if not name or len(name) > 90:
        return Rejection(codes.MALFORMED, f"商品名称goodsName不能为空且不能超过90个字符,第{row}行")
    spec, unit = text(detail, "specType"), text(detail, "unit")
    if len(spec) > 40 or len(unit) > 20:
        return Rejection(codes.MALFORMED, f"规格型号不能超过40个字符、单位不能超过20个字符,{where}")
    with_tax = text(detail, "withTaxFlag")
    if with_tax not in ("0", "1"):
        return Rejection(codes.MALFORMED, f"含税标志withTaxFlag只能为0或1,{where}")
    rate = as_rate(text(detail, "taxRate"))
    if rate is None or rate not in ALLOWED_RATES:
        return Rejection(codes.MALFORMED, f"税率taxRate[{text(detail, 'taxRate')}]不可用,{where}")
    favoured = text(detail, "favouredPolicyFlag")
    if favoured and not _FAVOURED_RE.match(favoured):
        return Rejection(codes.MALFORMED, f"数电优惠政策标识favouredPolicyFlag应为01-18,{where}")

    # E9123: without a price the three amounts are the only source of truth.
    raw_price, raw_num = text(detail, "price"), text(detail, "num")
    raw_amounts = [text(detail, key) for key, _, _ in _AMOUNT_FIELDS]
    if not raw_price and (raw_num or not all(raw_amounts)):
        return Rejection("E9123", f"单价为空时数量必须为空且含税金额、不含税金额、税额必填,{where}")
    if raw_price and not raw_num:
        return Rejection("E9123", f"单价不为空时数量不能为空,{where}")
    price = as_quantity(raw_price) if raw_price else None
    num = as_quantity(raw_num) if raw_num else None
    if (raw_price and price is None) or (raw_num and num is None):
        return Rejection(codes.MALFORMED, f"单价/数量必须为数字且不超过8位小数、16个字符,{where}")

    amounts: list[Decimal] = []
    for (key, too_long, not_number), raw in zip(_AMOUNT_FIELDS, raw_amounts, strict=True):
        if not raw:
            continue
        value = as_amount(raw)
        if value is None:
            code = too_long if len(raw) > 20 else not_number
            return Rejection(code, f"{key}[{raw}]长度超过20或不是两位小数的数字,{where}")
        amounts.append(value)
    if len(amounts) == 3:
        incl, ex, tax = amounts
    else:
        # The platform computes missing amounts from price × num ("may differ, pass all three").
        assert price is not None and num is not None
        incl, ex, tax = _computed(price * num, rate, with_tax == "1")

    if ex + tax != incl:
        return Rejection("E9130", f"不含税金额+税额不等于含税金额,{where}")
    if abs(ex * rate - tax) > LINE_TAX_TOLERANCE:
        return Rejection("E9131", f"税额误差不能超过{LINE_TAX_TOLERANCE},{where}")
    if price is not None and num is not None:
        basis = incl if with_tax == "1" else ex
        if abs(price * num - basis) > PRICE_TOLERANCE:
            return Rejection(
                codes.MALFORMED, f"单价×数量与金额误差不能超过{PRICE_TOLERANCE},{where}"
            )
    prop = int(_prop(detail))
    if prop != 1 and ex < 0:
        return Rejection(codes.MALFORMED, f"蓝字发票非折扣行金额不能为负,{where}")

    goods_code = text(detail, "goodsCode")
    if not goods_code:
        # Real platform auto-matches, but the sandbox's matching is "unstable" (§4): require it.
        return Rejection("E9138", f"商品编码goodsCode为空,自动赋码失败,{where}")
    if not _GOODS_CODE_RE.match(goods_code):
        return Rejection("E9121", f"税收分类编码[{goods_code}]必须为19位数字,{where}")
    return Line(
        index=row,
        name=name,
        goods_code=goods_code,
        self_code=text(detail, "selfCode"),
        spec=spec,
        unit=unit,
        with_tax=with_tax == "1",
        price=price,
        num=num,
        rate=rate,
        ex=ex,
        tax=tax,
        prop=prop,
        favoured_flag=favoured,
    )


def _computed(gross: Decimal, rate: Decimal, with_tax: bool) -> tuple[Decimal, Decimal, Decimal]:
    """What the platform derives from price × num (§3.3 recommended algorithm)."""
    if with_tax:
        incl = round2(gross)
        ex = round2(incl / (1 + rate))
        return incl, ex, incl - ex
    ex = round2(gross)
    tax = round2(ex * rate)
    return ex + tax, ex, tax
