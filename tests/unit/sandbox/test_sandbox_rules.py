"""requestBillingNew checks: one crafted payload per rejection code (reference §2.10, §3.3, §5.3)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sandbox_orders import BUYER_TAX, SELLER, discount_pair, line, order

from cdc_invoice.sandbox.model import AcceptedOrder, Rejection
from cdc_invoice.sandbox.rules import check_billing


def check(body: Any, *, user_tax: str = SELLER, taken: set[str] | None = None) -> Any:
    taken = taken or set()
    return check_billing(
        body,
        user_tax=user_tax,
        sellers={SELLER},
        is_duplicate=lambda seller, order_no: order_no in taken,
    )


def code_of(body: Any, **kwargs: Any) -> str:
    result = check(body, **kwargs)
    assert isinstance(result, Rejection), f"expected a rejection, got {result}"
    return result.code


def test_the_reference_example_is_accepted_with_exact_totals() -> None:
    result = check(order())
    assert isinstance(result, AcceptedOrder)
    assert (result.total_ex, result.total_tax) == (Decimal("5484.96"), Decimal("713.04"))
    assert result.lines[0].incl == Decimal("6198.00")
    assert result.deferred_fail is None


def test_discount_pair_is_accepted() -> None:
    result = check(order(lines=discount_pair()))
    assert isinstance(result, AcceptedOrder)
    assert result.total_ex == Decimal("2742.48") - Decimal("87.61")


def test_missing_amounts_are_computed_from_price_times_quantity() -> None:
    result = check(order(lines=[line(taxIncludedAmount=None, taxExcludedAmount=None, tax=None)]))
    assert isinstance(result, AcceptedOrder)
    assert (result.lines[0].ex, result.lines[0].tax) == (Decimal("5484.96"), Decimal("713.04"))


def test_the_zero_flags_of_the_requestbillingnew_doc_example_are_accepted() -> None:
    # requestBillingNew doc (1.诺诺开放平台诺税通saas请求开具发票接口…【外部用】.md), 请求示例: a 数电
    # line with "favouredPolicyFlag":"0", "zeroRateFlag":"0", "deduction":"0" — a twin accepts it.
    flags = {"favouredPolicyFlag": "0", "zeroRateFlag": "0", "deduction": "0"}
    assert isinstance(check(order(lines=[line(**flags)])), AcceptedOrder)


@pytest.mark.parametrize(
    ("body", "kwargs", "code"),
    [
        (order(salerTaxNum="339902999999789114"), {}, "E9302"),
        (order(), {"user_tax": "339902999999789114"}, "E9302"),
        (order(salerTaxNum="91110000000000000X"), {"user_tax": "91110000000000000X"}, "E9301"),
        (order(invoiceType="3"), {}, "E9101"),
        (order(invoiceType="2"), {}, "E9101"),  # 数电 red goes through the red-letter slip
        (order(email="a" * 45 + "@x.com"), {}, "E9104"),
        (order(invoiceDetail=[]), {}, "E9122"),
        (order(invoiceDetail=None), {}, "E9122"),
        ({"notAnOrder": {}}, {}, "E4000"),
        (order(invoiceLine="p"), {}, "E4000"),  # legacy 税控 kinds are refused
        (order(invoiceLine="bs", buyerTaxNum=None), {}, "E4000"),  # 专票 needs the buyer tax no.
        (order(invoiceDate="2025/01/01"), {}, "E4000"),
        (order(clerk=""), {}, "E4000"),
        (order(pushMode="0"), {}, "E4000"),  # e-mail push without an e-mail
        (order("X" * 21), {}, "E4000"),  # orderNo longer than the documented 20
    ],
)
def test_header_rejections(body: Any, kwargs: dict[str, Any], code: str) -> None:
    assert code_of(body, **kwargs) == code


def test_bs_with_buyer_tax_number_is_accepted() -> None:
    assert isinstance(check(order(invoiceLine="bs", buyerTaxNum=BUYER_TAX)), AcceptedOrder)


def test_duplicate_order_number_wins_over_later_problems() -> None:
    assert code_of(order("SO-1"), taken={"SO-1"}) == "E9106"
    assert code_of(order("SO-1", invoiceDetail=[]), taken={"SO-1"}) == "E9106"
    # …but the seller check comes first (§5.3 order).
    assert code_of(order("SO-1", salerTaxNum="1" * 18), taken={"SO-1"}) == "E9302"


def _pair(**discount: Any) -> list[dict[str, Any]]:
    pair = discount_pair()
    pair[1].update(discount)
    return pair


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        (_pair(goodsName="鼠标"), "E9105"),
        (_pair(taxIncludedAmount="-3100.00", taxExcludedAmount="-2743.36", tax="-356.64"), "E9108"),
        (_pair(taxIncludedAmount="99.00", taxExcludedAmount="87.61", tax="11.39"), "E9108"),
        ([discount_pair()[1]], "E9110"),  # a discount line with nothing before it
        ([discount_pair()[0]], "E9110"),  # a discounted line without its discount line
        ([*discount_pair()[:1], line(), *discount_pair()[1:]], "E9110"),  # not directly after
        (_pair(num="1"), "E9111"),
        (_pair(taxRate="0.09", taxExcludedAmount="-90.83", tax="-8.17"), "E9112"),
        ([discount_pair()[0] | {"num": "-1"}, discount_pair()[1]], "E9114"),
    ],
)
def test_discount_rules(lines: list[dict[str, Any]], code: str) -> None:
    assert code_of(order(lines=lines)) == code


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"price": None}, "E9123"),  # price empty but num given
        ({"price": None, "num": None, "tax": None}, "E9123"),  # …and an amount missing
        ({"num": None}, "E9123"),
        ({"taxIncludedAmount": "1" * 21}, "E9124"),
        ({"taxIncludedAmount": "6198.001"}, "E9125"),
        ({"taxExcludedAmount": "9" * 21}, "E9126"),
        ({"taxExcludedAmount": "abc"}, "E9127"),
        ({"tax": "7" * 21}, "E9128"),
        ({"tax": "1e3"}, "E9129"),
        ({"taxIncludedAmount": "6198.01"}, "E9130"),  # ex + tax ≠ incl, by one cent
        ({"price": "3100"}, "E4000"),  # 3100 × 2 − 6198.00 = 2.00 > 0.01
        ({"goodsCode": "109051103"}, "E9121"),
        ({"goodsCode": None}, "E9138"),
        ({"taxRate": "0.17"}, "E4000"),  # not an available rate
        ({"withTaxFlag": "2"}, "E4000"),
        ({"favouredPolicyFlag": "1"}, "E4000"),  # legacy flag; 数电 wants 01..18
    ],
)
def test_line_rejections(overrides: dict[str, Any], code: str) -> None:
    assert code_of(order(lines=[line(**overrides)])) == code


def test_line_tax_tolerance_is_0_06_and_names_the_line() -> None:
    ok = line(price="113.06", num="1", taxIncludedAmount="113.06", taxExcludedAmount="100.00")
    ok["tax"] = "13.06"  # |100 × 0.13 − 13.06| = 0.06: still allowed
    assert isinstance(check(order(lines=[line(), ok])), AcceptedOrder)
    bad = dict(ok, price="113.07", taxIncludedAmount="113.07", tax="13.07", goodsName="键盘")
    result = check(order(lines=[line(), bad]))
    assert isinstance(result, Rejection)
    assert result.code == "E9131"
    assert "明细行名称:键盘,第2行" in result.describe


def test_price_times_quantity_uses_the_price_basis() -> None:
    # Tax-exclusive price: 2742.48 × 2 = 5484.96 must match taxExcludedAmount, not the total.
    assert isinstance(check(order(lines=[line(withTaxFlag="0", price="2742.48")])), AcceptedOrder)
    assert code_of(order(lines=[line(withTaxFlag="0")])) == "E4000"


def test_line_count_limit_is_2000_including_discount_lines() -> None:
    small = line(price="1.13", num="1", taxIncludedAmount="1.13", taxExcludedAmount="1.00")
    small["tax"] = "0.13"
    assert isinstance(check(order(lines=[small] * 2000)), AcceptedOrder)
    result = check(order(lines=[small] * 2001))
    assert isinstance(result, Rejection) and "2000" in result.describe


def test_invoice_tax_over_1_27_is_accepted_then_deferred_to_status_22() -> None:
    # Each line is 0.05 off (within 0.06); 30 lines add up to 1.50 > 1.27.
    skew = line(price="113.05", num="1", taxIncludedAmount="113.05", taxExcludedAmount="100.00")
    skew["tax"] = "13.05"
    result = check(order(lines=[skew] * 30))
    assert isinstance(result, AcceptedOrder)
    assert result.deferred_fail is not None and "1.27" in result.deferred_fail
    fine = check(order(lines=[skew] * 25))  # 1.25: within the tolerance
    assert isinstance(fine, AcceptedOrder) and fine.deferred_fail is None


def test_negative_normal_line_is_refused_on_a_blue_invoice() -> None:
    neg = line(num="-2", taxIncludedAmount="-6198.00", taxExcludedAmount="-5484.96", tax="-713.04")
    assert code_of(order(lines=[line(), neg])) == "E4000"


def test_numbers_may_be_json_numbers_without_float_loss() -> None:
    result = check(
        order(lines=[line(price=Decimal("3099"), num=2, taxIncludedAmount=Decimal("6198.00"))])
    )
    assert isinstance(result, AcceptedOrder)


@pytest.mark.parametrize(
    ("fields", "describe"),
    [
        # requestBillingNew: "buyerAddress String N 杭州市 80", "buyerTel String N … 50"
        ({"buyerAddress": "杭" * 81}, "购方地址buyerAddress不能超过80个字符"),
        ({"buyerTel": "0" * 51}, "购方电话buyerTel不能超过50个字符"),
        ({"buyerAddress": "杭" * 60, "buyerTel": "0" * 41}, "购方地址和电话合计不能超过100个字符"),
        ({"payee": "名" * 21}, "收款人payee不能超过20个字符"),
        ({"checker": "名" * 21}, "复核人checker不能超过20个字符"),
        ({"showBankAccountType": "4"}, "showBankAccountType只能为0/1/2/3"),
        ({"surveyAnswerType": "0"}, "surveyAnswerType只能为1/2/3"),
    ],
)
def test_finance_header_fields_are_checked_as_documented(
    fields: dict[str, str], describe: str
) -> None:
    result = check(order(**fields))
    assert isinstance(result, Rejection) and result.describe == describe


def test_finance_header_fields_within_the_limits_are_accepted_and_kept() -> None:
    body = order(
        buyerAddress="杭" * 80, buyerTel="0" * 20, payee="名" * 20, checker="名" * 20,
        showBankAccountType="3", surveyAnswerType="1", remark="备" * 200,
    )  # fmt: skip
    result = check(body)
    assert isinstance(result, AcceptedOrder)
    assert (result.extra["showBankAccountType"], result.extra["surveyAnswerType"]) == ("3", "1")
