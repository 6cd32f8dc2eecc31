"""The invoice rules, as checks that return every ``Problem`` at once (never the first only).

``validate_order`` checks an order before any computation: what the finance user or the DBA must
fix in the document view, the mapping tables or the seller row. ``order_warnings`` lists what is
suspicious but allowed (logged, not refused). ``check_invoice`` checks a computed invoice against
the platform's arithmetic rules (nuonuo.md §3.3–3.5); compute.py runs it on every draft, so an
invoice that the platform would reject never leaves the domain.

Decisions where the sources are silent or unverified (nuonuo.md §3.2, §3.10, §6):
- Rate 0 needs policy flag 03 (免税) or 04 (不征税); 1.5 % needs flag 10 and flag 10 needs 1.5 %;
  flags 08/09 (按3%/5%简易征收) need 3 %/5 %. Export zero rating (legacy zeroRateFlag 3) is not
  modelled: 数电 sends no zeroRateFlag.
- Invoice kinds: only the 数电 kinds pc, bs, es, ec. The legacy 税控 kinds p, c, s, b take other
  flag fields ("favouredPolicyFlag 0,不使用;1,使用" + favouredPolicyName, zeroRateFlag 1/2/3,
  requestBillingNew) that cdc-invoice does not send, so they are refused rather than half-sent.
- Tax codes: 19 digits, first digit 1–6, and not a 篇-level code (one digit then 18 zeros), which is
  always a summary (汇总项) — except the telecom 汇总项 the 乐企 document allows, each with the rate
  it requires (taxcodes.py). Deeper 汇总项 need the bureau's code table, which only the platform
  has (it answers E9121/E9138). Codes of special businesses (特定要素) are refused (taxcodes.py).
- goodsName ≤ 90, specType ≤ 40, unit ≤ 20 characters (Nuonuo field lengths; whether the platform
  counts GBK bytes is unverified), buyer name ≤ 100, email ≤ 50 (E9104), remark ≤ 200 (数电),
  buyer address ≤ 80 and phone ≤ 50 and both together ≤ 100, clerk/payee/checker ≤ 20, price and
  num ≤ 16 characters as sent (requestBillingNew field table).
- Quantities and prices with more than 8 decimals are rounded half up to 8 for the platform while
  the amount stays quantity × price of the document; the line is refused only if that rounding
  moves price × quantity more than 0.01 away from the amount (``check_invoice``).
- An order-level discount is on the price basis of the lines, so all lines must share one basis.
- Every line must come to at least 0.01 and the order to a positive total after discounts.
- Tax numbers: 15–20 ASCII digits or capitals; an 18-character one must carry the GB 32100-2015
  check character: refused on a 专票 (the buyer deducts input tax with it), only warned on a 普票.
"""

from __future__ import annotations

import re
from collections import Counter
from decimal import Decimal

from cdc_invoice.errors import Problem
from cdc_invoice.invoice import money
from cdc_invoice.invoice.model import (
    Buyer,
    InvoiceDraft,
    InvoiceLine,
    LineProperty,
    Order,
    OrderLine,
    Seller,
)
from cdc_invoice.invoice.taxcodes import TELECOM_SUMMARY_RATES, special_business
from cdc_invoice.invoice.uscc import uscc_problem

ALLOWED_RATES = frozenset(
    Decimal(r) for r in ("0.13", "0.09", "0.06", "0.05", "0.03", "0.015", "0.01", "0")
)
POLICY_FLAGS = frozenset(f"{i:02d}" for i in range(1, 19))  # 数电 favouredPolicyFlag 01..18
ZERO_RATE_FLAGS = frozenset({"03", "04"})  # 免税, 不征税
FLAG_RATES = {
    "03": Decimal(0),
    "04": Decimal(0),
    "08": Decimal("0.03"),
    "09": Decimal("0.05"),
    "10": Decimal("0.015"),
}
SPECIAL_INVOICE_LINES = frozenset({"bs", "es"})  # 数电专票: buyer tax number mandatory
SUPPORTED_INVOICE_LINES = frozenset({"pc", "bs", "es", "ec"})
LEGACY_INVOICE_LINES = {"p": "pc", "c": "ec", "s": "es", "b": "bs"}  # 税控 kind → its 数电 kind
PLATFORM_MAX_LINES = 2000  # Nuonuo invoiceDetail, discount lines included
MAX_NAME, MAX_SPEC, MAX_UNIT = 90, 40, 20
MAX_BUYER_NAME, MAX_EMAIL, MAX_REMARK = 100, 50, 200
MAX_ADDRESS, MAX_PHONE, MAX_ADDRESS_PHONE = 80, 50, 100  # buyerAddress, buyerTel, together
MAX_PERSON = 20  # clerk, payee, checker
MAX_NUMBER_TEXT = 16  # price and num as sent ("price String N 16", "num String N 16")
SHOW_BANK_ACCOUNT = {"none": "0", "seller": "1", "buyer": "2", "both": "3"}  # showBankAccountType
SURVEY_ANSWER_TYPES = frozenset({"1", "2", "3"})  # surveyAnswerType
PRICE_TOLERANCE = Decimal("0.01")  # |price × quantity − amount|
LINE_TAX_TOLERANCE = Decimal("0.06")  # |amount × rate − tax| per line (E9131)
INVOICE_TAX_TOLERANCE = Decimal("1.27")  # |Σ amount × rate − total tax| per invoice

TAX_CODE = re.compile(r"[0-9]{19}")
TAX_NUMBER = re.compile(r"[0-9A-Z]{15,20}")

_VIEW = "the document view"


def validate_order(order: Order, seller: Seller) -> list[Problem]:
    """Every reason the order cannot be invoiced as it stands (empty list: it can)."""
    problems = _seller_problems(seller)
    problems += _header_problems(order)
    if not order.lines:
        problems.append(
            Problem(
                "the order has no lines",
                field="lines",
                fix=f"make {_VIEW} return one row per invoice line for this order",
            )
        )
        return problems
    for line_no, count in Counter(line.line_no for line in order.lines).items():
        if count > 1:
            problems.append(
                Problem(
                    f"line_no {line_no} appears {count} times",
                    line_no=line_no,
                    field="line_no",
                    fix=f"make line_no unique within the order in {_VIEW}",
                )
            )
    for line in order.lines:
        problems += line_problems(line)
    if not any(p.field in {"quantity", "unit_price", "discount"} for p in problems):
        problems += _discount_problems(order)
    return problems


def _seller_problems(seller: Seller) -> list[Problem]:
    problems: list[Problem] = []

    def fix(assignment: str) -> str:
        return f"UPDATE cdc_invoice.seller SET {assignment} WHERE seller_id = {seller.seller_id!r};"

    if not TAX_NUMBER.fullmatch(seller.tax_number or ""):
        problems.append(
            Problem(
                f"seller tax number {seller.tax_number!r} is not 15–20 digits or capitals",
                field="seller.tax_number",
                fix=fix("tax_number = '<统一社会信用代码>'"),
            )
        )
    if not 2 <= seller.max_lines <= PLATFORM_MAX_LINES:
        problems.append(
            Problem(
                f"seller max_lines {seller.max_lines} is outside 2..{PLATFORM_MAX_LINES} "
                "(the platform allows 2000 lines per invoice, and a discount pair needs 2)",
                field="seller.max_lines",
                fix=fix(f"max_lines = {PLATFORM_MAX_LINES}"),
            )
        )
    clerk = (seller.clerk or "").strip()
    if not clerk:
        problems.append(
            Problem(
                "the seller has no clerk (开票人): the platform needs the name of the issuing "
                "account's 开票员 (requestBillingNew: "
                "数电票时需要传入和开票登录账号对应的开票员姓名)",
                field="seller.clerk",
                fix=fix("clerk = '<开票员姓名>'") + " (the name shown for the account on the "
                "platform), then retry",
            )
        )
    for name, value, label in (
        ("clerk", clerk, "开票人"),
        ("payee", seller.payee, "收款人"),
        ("checker", seller.checker, "复核人"),
    ):
        if value and len(value.strip()) > MAX_PERSON:
            problems.append(
                Problem(
                    f"seller {name} ({label}) has {len(value.strip())} characters, "
                    f"more than the platform's {MAX_PERSON}",
                    field=f"seller.{name}",
                    fix=fix(f"{name} = '<at most {MAX_PERSON} characters>'"),
                )
            )
    if seller.show_bank_account not in SHOW_BANK_ACCOUNT:
        problems.append(
            Problem(
                f"seller show_bank_account {seller.show_bank_account!r} is not one of "
                + ", ".join(SHOW_BANK_ACCOUNT),
                field="seller.show_bank_account",
                fix=fix("show_bank_account = 'none'"),
            )
        )
    survey = seller.survey_answer_type
    if survey is not None and survey not in SURVEY_ANSWER_TYPES:
        problems.append(
            Problem(
                f"seller survey_answer_type {survey!r} is not 1, 2 or 3 (surveyAnswerType)",
                field="seller.survey_answer_type",
                fix=fix("survey_answer_type = NULL"),
            )
        )
    limit = seller.max_invoice_amount
    if limit is not None and not (limit.is_finite() and limit > 0):
        problems.append(
            Problem(
                f"seller max_invoice_amount {limit} is not a positive amount",
                field="seller.max_invoice_amount",
                fix=fix("max_invoice_amount = NULL"),
            )
        )
    return problems


def _header_problems(order: Order) -> list[Problem]:
    problems = buyer_problems(order.buyer, order.invoice_line)
    legacy = LEGACY_INVOICE_LINES.get(order.invoice_line)
    if legacy is not None:
        problems.append(
            Problem(
                f"invoice kind {order.invoice_line!r} is a legacy 税控 kind, which takes other "
                "flag fields than 数电 (favouredPolicyFlag 0/1 with favouredPolicyName, "
                "zeroRateFlag); cdc-invoice issues 数电 invoices only",
                field="invoice_line",
                fix=f"use the 数电 kind {legacy!r}: set invoice_type in cdc_invoice.buyer or "
                f"invoice_line in cdc_invoice.seller to {legacy!r}",
            )
        )
    elif order.invoice_line not in SUPPORTED_INVOICE_LINES:
        problems.append(
            Problem(
                f"invoice kind {order.invoice_line!r} is not supported",
                field="invoice_line",
                fix="set invoice_type in cdc_invoice.buyer or invoice_line in cdc_invoice.seller "
                "to one of " + ", ".join(sorted(SUPPORTED_INVOICE_LINES)),
            )
        )
    if order.remark is not None and len(order.remark) > MAX_REMARK:
        problems.append(
            Problem(
                f"remark has {len(order.remark)} characters, more than {MAX_REMARK} (the most "
                "a 数电 invoice allows, requestBillingNew remark: 数电票时最长为200字符)",
                field="remark",
                fix=f"shorten the remark column of {_VIEW} (or the seller's remark_template) "
                f"to {MAX_REMARK} characters",
            )
        )
    return problems


def order_warnings(order: Order) -> list[Problem]:
    """What is allowed but probably wrong: logged by compute.py, the invoice is still issued."""
    warnings: list[Problem] = []
    tax_number = order.buyer.tax_number
    if (
        tax_number
        and TAX_NUMBER.fullmatch(tax_number)
        and order.invoice_line not in (SPECIAL_INVOICE_LINES)
    ):
        why = uscc_problem(tax_number)
        if why is not None:
            warnings.append(
                Problem(
                    f"buyer tax number {tax_number} does not look like a valid "
                    f"统一社会信用代码 ({why}); the 普票 is issued with it as given",
                    field="buyer_tax_number",
                    fix="check the tax number in cdc_invoice.buyer against the buyer's licence",
                )
            )
    return warnings


def buyer_problems(buyer: Buyer, invoice_line: str) -> list[Problem]:
    """The buyer rules of nuonuo.md §3.8 for an invoice of kind ``invoice_line``."""
    problems: list[Problem] = []
    name = (buyer.name or "").strip()
    fix_name = "give the customer a name in cdc_invoice.buyer or a buyer_name column in " + _VIEW
    if not name:
        problems.append(Problem("the buyer name is missing", field="buyer_name", fix=fix_name))
    elif len(name) > MAX_BUYER_NAME:
        problems.append(
            Problem(
                f"the buyer name has {len(name)} characters, more than {MAX_BUYER_NAME}",
                field="buyer_name",
                fix="shorten the buyer name",
            )
        )
    # "buyerAddress … 80", "buyerTel … 50", "购方地址+电话总共不超100字符" (requestBillingNew).
    address, phone = (buyer.address or "").strip(), (buyer.phone or "").strip()
    for field, value, limit in (
        ("buyer_address", address, MAX_ADDRESS),
        ("buyer_phone", phone, MAX_PHONE),
    ):
        if len(value) > limit:
            problems.append(
                Problem(
                    f"the buyer's {field.removeprefix('buyer_')} has {len(value)} characters, "
                    f"more than the platform's {limit}",
                    field=field,
                    fix=f"shorten {field.removeprefix('buyer_')} in cdc_invoice.buyer"
                    + (f" or {field} in {_VIEW}" if field == "buyer_phone" else ""),
                )
            )
    if len(address) + len(phone) > MAX_ADDRESS_PHONE:
        problems.append(
            Problem(
                f"the buyer's address and phone have {len(address) + len(phone)} characters "
                f"together, more than the platform's {MAX_ADDRESS_PHONE}",
                field="buyer_address",
                fix="shorten address or phone in cdc_invoice.buyer",
            )
        )
    tax_number = buyer.tax_number
    if tax_number:
        why = uscc_problem(tax_number) if TAX_NUMBER.fullmatch(tax_number) else None
        if why is not None and invoice_line in SPECIAL_INVOICE_LINES:
            problems.append(
                Problem(
                    f"buyer tax number {tax_number} is not a valid 统一社会信用代码: {why}; a "
                    "专票 with a wrong number cannot be deducted by the buyer",
                    field="buyer_tax_number",
                    fix="correct the tax number in cdc_invoice.buyer (or buyer_tax_number in "
                    f"{_VIEW}) from the buyer's business licence",
                )
            )
        if not TAX_NUMBER.fullmatch(tax_number):
            problems.append(
                Problem(
                    f"buyer tax number {tax_number!r} is not 15–20 digits or upper-case letters",
                    field="buyer_tax_number",
                    fix="correct the tax number (统一社会信用代码, upper case, no spaces)",
                )
            )
    elif invoice_line in SPECIAL_INVOICE_LINES:
        problems.append(
            Problem(
                f"a 专票 (invoice kind {invoice_line!r}) needs the buyer's tax number",
                field="buyer_tax_number",
                fix="set tax_number in cdc_invoice.buyer (or buyer_tax_number in "
                f"{_VIEW}), or issue a 普票 (invoice_type 'pc')",
            )
        )
    if buyer.natural_person:
        if invoice_line != "pc":
            problems.append(
                Problem(
                    f"a natural-person buyer can only get a 数电普票 ('pc'), not {invoice_line!r}",
                    field="invoice_line",
                    fix="set invoice_type = 'pc' for this buyer, or natural_person = false",
                )
            )
        if len(name) == 1:
            problems.append(
                Problem(
                    "a natural-person buyer's name must have more than one character",
                    field="buyer_name",
                    fix="give the buyer's full name",
                )
            )
    email = buyer.email
    if email and (len(email) > MAX_EMAIL or "@" not in email):
        problems.append(
            Problem(
                f"buyer email {email!r} is not an address of at most {MAX_EMAIL} characters",
                field="buyer_email",
                fix="correct the email in cdc_invoice.buyer or buyer_email in " + _VIEW,
            )
        )
    return problems


def line_problems(line: OrderLine) -> list[Problem]:
    """Everything wrong with one order line, each naming the line and the fix."""
    problems: list[Problem] = []

    def add(message: str, field: str, fix: str) -> None:
        problems.append(Problem(message, line_no=line.line_no, field=field, fix=fix))

    name = line.name.strip() if line.name else ""
    if not name:
        add("the item name is empty", "item_name", f"give item_name in {_VIEW}")
    for field, text, limit in (
        ("item_name", name, MAX_NAME),
        ("spec", line.spec, MAX_SPEC),
        ("unit", line.unit, MAX_UNIT),
    ):
        if text and len(text) > limit:
            add(
                f"{field} has {len(text)} characters, more than the platform's {limit}",
                field,
                f"shorten {field} in {_VIEW} to {limit} characters",
            )
    problems += _tax_problems(line)
    for field, value in (("quantity", line.quantity), ("unit_price", line.unit_price)):
        if not value.is_finite():
            add(f"{field} {value} is not a number", field, f"give a finite {field}")
        elif value <= 0:
            add(
                f"{field} {value} is not positive",
                field,
                f"give a positive {field}; returns are red-letter reversals, not negative lines",
            )
        elif value > money.MAX_AMOUNT:
            add(f"{field} {value} is absurdly large", field, f"check the {field} and its unit")
        elif money.round_quantity(value) == 0:
            add(
                f"{field} {value} rounds to 0 at the platform's 8 decimals",
                field,
                f"express {field} in a larger unit",
            )
    discount = line.discount
    if not discount.is_finite() or discount < 0:
        add(
            f"discount {discount} is not a non-negative amount",
            "discount",
            "give the line discount as a positive amount (or 0)",
        )
    if not any(p.field in {"quantity", "unit_price", "discount"} for p in problems):
        amount = money.line_amount(line.quantity, line.unit_price)
        if amount > money.MAX_AMOUNT:
            add(
                f"quantity × unit_price = {amount} is absurdly large",
                "quantity",
                "check quantity and unit_price and their units",
            )
        elif amount == 0:
            add(
                f"quantity × unit_price = {line.quantity * line.unit_price} rounds to 0.00",
                "quantity",
                "an invoice line needs an amount of at least 0.01; drop the line or "
                "invoice a larger quantity",
            )
        elif money.cents(discount) > amount:
            add(
                f"discount {discount} exceeds the line amount {amount}",
                "discount",
                "the discount cannot exceed quantity × unit_price",
            )
    return problems


def _tax_problems(line: OrderLine) -> list[Problem]:
    problems: list[Problem] = []

    def add(message: str, field: str, fix: str) -> None:
        problems.append(Problem(message, line_no=line.line_no, field=field, fix=fix))

    item = f"item {line.item_ref!r}" if line.item_ref else "the item"
    # The fix names where the value came from: the view's column wins over the mapping table.
    where = (
        f"in {_VIEW} (its column overrides cdc_invoice.item_tax)"
        if line.tax_from_view
        else "in cdc_invoice.item_tax"
    )
    set_rate = f"set tax_rate of {item} {where}"
    rate, flag, code = line.tax_rate, line.policy_flag or None, line.tax_code or ""
    if not rate.is_finite():
        add(f"tax rate {rate} is not a number", "tax_rate", f"{set_rate} to a number")
    elif rate not in ALLOWED_RATES:
        if rate >= 1 and rate / 100 in ALLOWED_RATES:
            add(
                f"tax rate {rate} looks like a percentage",
                "tax_rate",
                f"{set_rate} to the fraction {rate / 100} (not {rate})",
            )
        else:
            allowed = ", ".join(str(r) for r in sorted(ALLOWED_RATES, reverse=True))
            add(f"tax rate {rate} is not an allowed rate", "tax_rate", f"{set_rate} to {allowed}")
    set_flag = f"set policy_flag of {item} in cdc_invoice.item_tax"  # only the mapping has it
    if flag is not None and flag not in POLICY_FLAGS:
        add(
            f"policy flag {flag!r} is not a 数电 favouredPolicyFlag (01–18)",
            "policy_flag",
            f"{set_flag} to a two-digit code 01–18, or NULL",
        )
    elif flag in FLAG_RATES and rate != FLAG_RATES[flag]:
        add(
            f"policy flag {flag} requires tax rate {FLAG_RATES[flag]}, not {rate}",
            "policy_flag",
            f"{set_rate} to {FLAG_RATES[flag]}, or change policy_flag",
        )
    elif rate == 0 and flag not in ZERO_RATE_FLAGS:
        add(
            "a 0 % rate needs policy flag 03 (免税) or 04 (不征税)",
            "policy_flag",
            f"{set_flag} to '03' or '04'",
        )
    elif rate == Decimal("0.015") and flag != "10":
        add(
            "a 1.5 % rate needs policy flag 10 (按5%简易征收减按1.5%计征)",
            "policy_flag",
            f"{set_flag} to '10'",
        )
    set_code = f"set tax_code of {item} {where} to its 19-digit 税收分类编码"
    special = special_business(code) if TAX_CODE.fullmatch(code) else None
    if not TAX_CODE.fullmatch(code):
        add(f"tax code {code!r} is not 19 digits", "tax_code", set_code)
    elif code[0] not in "123456":
        add(f"tax code {code} does not start with 1–6", "tax_code", set_code)
    elif code in TELECOM_SUMMARY_RATES:
        # 乐企 基础版 2.2.4.3: telecom 汇总项 codes are allowed, each at one rate only.
        needed = TELECOM_SUMMARY_RATES[code]
        if rate != needed:
            add(
                f"tax code {code} (电信服务汇总项) must be issued at rate {needed}, not {rate} "
                "(乐企: 使用该编码开票时税率必须为" + f"{needed * 100:.0f}%)",
                "tax_rate",
                f"{set_rate} to {needed}",
            )
        elif needed == 0 and flag != "04":
            add(
                f"tax code {code} (电信服务汇总项) needs policy flag 04 (不征税)",
                "policy_flag",
                f"{set_flag} to '04'",
            )
    elif special is not None:
        add(
            f"tax code {code} is a {special.kind} code: a {special.kind} invoice is a special "
            f"business (特定要素 {special.factor}) with its own fields, and cdc-invoice issues "
            "ordinary 数电 invoices only (乐企 基础版: 特定要素 必须为空; code range from "
            f"{special.source})",
            "tax_code",
            "issue this item's invoices on the platform directly; if the code is wrong, "
            + set_code,
        )
    elif code[1:] == "0" * 18:
        add(f"tax code {code} is a summary (汇总项) code", "tax_code", set_code + " (a leaf code)")
    elif code[0] == "6" and (flag != "04" or rate != 0):
        add(
            f"tax code {code} (未发生销售行为的不征税项目) needs rate 0 and policy flag 04",
            "tax_code",
            f"{set_rate} to 0 and policy_flag to '04'",
        )
    return problems


def _discount_problems(order: Order) -> list[Problem]:
    problems: list[Problem] = []
    discount = order.order_discount
    if not discount.is_finite() or discount < 0:
        return [
            Problem(
                f"order discount {discount} is not a non-negative amount",
                field="order_discount",
                fix="give order_discount as a positive amount (or 0)",
            )
        ]
    net = sum(
        (
            money.line_amount(line.quantity, line.unit_price) - money.cents(line.discount)
            for line in order.lines
        ),
        money.ZERO,
    )
    if discount > 0 and len({line.price_includes_tax for line in order.lines}) > 1:
        problems.append(
            Problem(
                "an order discount needs every line on the same price basis "
                "(some prices include tax, some do not)",
                field="order_discount",
                fix="give the discount per line (discount column) instead",
            )
        )
    if money.cents(discount) > net:
        problems.append(
            Problem(
                f"order discount {discount} exceeds the order amount {net}",
                field="order_discount",
                fix="the order discount cannot exceed the lines' total after line discounts",
            )
        )
    elif net - money.cents(discount) <= 0:
        problems.append(
            Problem(
                "the order's total after discounts is 0",
                field="order_discount",
                fix="an invoice needs a positive total; do not invoice a free order",
            )
        )
    return problems


def check_invoice(
    draft: InvoiceDraft, *, max_lines: int, max_amount: Decimal | None
) -> list[Problem]:
    """The platform's arithmetic and structure rules on a computed invoice (§3.3–3.5)."""
    problems: list[Problem] = []
    lines = draft.lines
    if len(lines) > max_lines:
        problems.append(
            Problem(f"the invoice has {len(lines)} lines, more than {max_lines}", fix=_INTERNAL)
        )
    for position, line in enumerate(lines, 1):
        previous = lines[position - 2] if position > 1 else None
        following = lines[position] if position < len(lines) else None
        problems += [
            Problem(message, line_no=line.source_line_no, field="amount", fix=_INTERNAL)
            for message in _line_rule_breaks(position, line, previous, following)
        ]
        problems += number_text_problems(line)
    drift = sum((money.mul(ln.amount_excl_tax, ln.tax_rate) for ln in lines), money.ZERO)
    drift -= draft.total_tax
    if abs(drift) > INVOICE_TAX_TOLERANCE:
        problems.append(
            Problem(f"Σ amount × rate differs from the total tax by {drift}", fix=_INTERNAL)
        )
    for field, total in (
        ("excl", draft.total_excl_tax),
        ("tax", draft.total_tax),
        ("incl", draft.total_incl_tax),
    ):
        if total != sum((_amount(ln, field) for ln in lines), money.ZERO):
            problems.append(Problem(f"total {field} is not the sum of the lines", fix=_INTERNAL))
    if draft.kind == "blue" and draft.total_incl_tax <= 0:
        problems.append(
            Problem(
                f"invoice part {draft.part} of {draft.parts} would hold only lines discounted to "
                "zero, and the platform refuses a blue invoice whose total is not positive",
                fix="raise cdc_invoice.seller.max_lines so that those lines share an invoice "
                "with others, or leave free lines out of the document view",
            )
        )
    if max_amount is not None and draft.total_incl_tax > max_amount:
        problems.append(
            Problem(f"invoice total {draft.total_incl_tax} exceeds {max_amount}", fix=_INTERNAL)
        )
    return problems


_INTERNAL = "this is a cdc-invoice bug or an extreme quantity; report it with the order"


def as_sent(value: Decimal) -> str:
    """A number as the payload sends it: the shortest plain decimal ("3099", "0.13")."""
    return "0" if value.is_zero() else format(value.normalize(), "f")


def number_text_problems(line: InvoiceLine) -> list[Problem]:
    """price and num go as text of at most 16 characters ("price String N 16", "num String N
    16", requestBillingNew); the platform refuses longer ones, so refuse them here first."""
    problems: list[Problem] = []
    for field, value in (("quantity", line.quantity), ("unit_price", line.unit_price)):
        if value is None:
            continue
        sent = as_sent(value)
        if len(sent) > MAX_NUMBER_TEXT:
            problems.append(
                Problem(
                    f"{field} {sent} has {len(sent)} characters as sent, more than the "
                    f"platform's {MAX_NUMBER_TEXT}",
                    line_no=line.source_line_no,
                    field=field,
                    fix=f"give {field} with fewer digits in {_VIEW} (at most "
                    f"{MAX_NUMBER_TEXT} characters with the point, e.g. 4 decimals), or "
                    "invoice in a larger unit",
                )
            )
    return problems


def _amount(line: InvoiceLine, field: str) -> Decimal:
    return {"excl": line.amount_excl_tax, "tax": line.tax, "incl": line.amount_incl_tax}[field]


def _line_rule_breaks(
    position: int, line: InvoiceLine, previous: InvoiceLine | None, following: InvoiceLine | None
) -> list[str]:
    breaks: list[str] = []
    at = f"invoice line {position}"
    excl, tax, incl = line.amount_excl_tax, line.tax, line.amount_incl_tax
    if any(money.decimals(a) > 2 for a in (excl, tax, incl)):
        breaks.append(f"{at}: amounts are not rounded to cents")
    if excl + tax != incl:
        breaks.append(f"{at}: amount {excl} + tax {tax} ≠ {incl}")
    if abs(money.mul(excl, line.tax_rate) - tax) > LINE_TAX_TOLERANCE:
        breaks.append(f"{at}: tax {tax} is more than 0.06 from {excl} × {line.tax_rate}")
    if line.property == LineProperty.DISCOUNT:
        if previous is None or previous.property != LineProperty.DISCOUNTED:
            breaks.append(f"{at}: a discount line must directly follow its discounted line")
        elif not _same_item(line, previous):
            breaks.append(f"{at}: a discount line must repeat its discounted line's item")
        elif any(-_amount(line, f) > _amount(previous, f) for f in ("excl", "tax", "incl")):
            breaks.append(f"{at}: the discount exceeds the discounted line")
        has_quantity = line.quantity is not None or line.unit_price is not None
        if has_quantity or excl >= 0 or tax > 0 or incl >= 0:
            breaks.append(f"{at}: a discount line has negative amounts and no quantity or price")
        return breaks
    if line.property == LineProperty.DISCOUNTED and (
        following is None or following.property != LineProperty.DISCOUNT
    ):
        breaks.append(f"{at}: a discounted line must be followed by its discount line")
    if line.quantity is None or line.unit_price is None:
        breaks.append(f"{at}: quantity and unit price are missing")
        return breaks
    if excl < 0 or tax < 0:
        breaks.append(f"{at}: a blue line has negative amounts")
    for value in (line.quantity, line.unit_price):
        if money.decimals(value) > money.MAX_DECIMALS:
            breaks.append(f"{at}: {value} has more than 8 decimals")
    basis = incl if line.price_includes_tax else excl
    gap = abs(money.mul(line.quantity, line.unit_price) - basis)
    if gap > PRICE_TOLERANCE:
        breaks.append(
            f"{at}: price {line.unit_price} × quantity {line.quantity} is {gap} from "
            f"the amount {basis} (limit 0.01)"
        )
    return breaks


def _same_item(a: InvoiceLine, b: InvoiceLine) -> bool:
    return (a.name, a.short_name, a.tax_code, a.tax_rate, a.policy_flag) == (
        b.name,
        b.short_name,
        b.tax_code,
        b.tax_rate,
        b.policy_flag,
    )
