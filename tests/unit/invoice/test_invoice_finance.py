"""What finance needs on a real invoice (issue 15), each rule quoted from its source.

Sources: Nuonuo requestBillingNew (PowerLms 诺诺网接口/数电发票/1.…请求开具发票接口…md), the bureau's
乐企 基础版 capability document V4.000 and the special-business documents (qinqiang2000/
agent-harness …/reference/乐企/), GB 32100-2015 for the credit code.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from cdc_invoice.errors import InvalidOrder
from cdc_invoice.invoice.compute import build_invoices
from cdc_invoice.invoice.mapping import build_order, item_name
from cdc_invoice.invoice.model import Buyer, ItemTax, Order, OrderLine, Seller
from cdc_invoice.invoice.taxcodes import special_business
from cdc_invoice.invoice.uscc import check_character, uscc_problem
from cdc_invoice.providers.nuonuo import payload

D = Decimal
SELLER = Seller("main", "339902999999789113", "航信培训企业", clerk="张三")
BUYERS = {"C1": Buyer("杭州某某贸易有限公司", tax_number="91350100M000100Y43")}
ITEMS = {"PC": ItemTax("PC", "1090511030000000000", D("0.13"))}
DATE = datetime(2025, 1, 1, 2, 0, tzinfo=UTC)


def row(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "customer_ref": "C1",
        "line_no": 1,
        "item_ref": "PC",
        "item_name": "电脑",
        "quantity": 1,
        "unit_price": 100,
    }
    return base | kw


def order(*lines: OrderLine, buyer: Buyer | None = None, kind: str = "pc") -> Order:
    return Order("shop", "SO1", buyer or BUYERS["C1"], lines, invoice_line=kind)


def line(code: str = "1090511030000000000", rate: str = "0.13", **kw: Any) -> OrderLine:
    return OrderLine(1, "PC", "电脑", code, D(rate), D(1), D(100), **kw)


def problems(o: Order, seller: Seller = SELLER) -> list[str]:
    with pytest.raises(InvalidOrder) as err:
        build_invoices(o, seller)
    return [p.message for p in err.value.problems]


# ---- 1. remark ------------------------------------------------------------------------------


def test_remark_is_the_first_non_null_of_the_order_rows_in_line_order() -> None:
    rows = [row(line_no=2, remark="PO-2"), row(line_no=1, remark=None), row(line_no=3, remark="x")]
    assert build_order("shop", "SO1", rows, BUYERS, ITEMS, SELLER).remark == "PO-2"


def test_seller_template_when_the_view_gives_no_remark() -> None:
    seller = replace(SELLER, remark_template="订单 {order_ref}（{source}）")
    assert build_order("shop", "SO1", [row()], BUYERS, ITEMS, seller).remark == "订单 SO1（shop）"
    given = build_order("shop", "SO1", [row(remark="合同 HT-1")], BUYERS, ITEMS, seller)
    assert given.remark == "合同 HT-1"


def test_a_template_with_an_unknown_field_is_refused_with_the_fix() -> None:
    seller = replace(SELLER, remark_template="客户 {customer}")
    with pytest.raises(InvalidOrder) as err:
        build_order("shop", "SO1", [row()], BUYERS, ITEMS, seller)
    [problem] = err.value.problems
    assert "unknown field {customer}" in problem.message
    assert problem.fix and "remark_template = '订单 {order_ref}'" in problem.fix


def test_remark_of_201_characters_is_refused_and_200_is_sent() -> None:
    # requestBillingNew remark: "数电票时最长为200字符"
    rows = [row(remark="备" * 201)]
    assert any("remark has 201 characters, more than 200" in m for m in problems(
        build_order("shop", "SO1", rows, BUYERS, ITEMS, SELLER)
    ))  # fmt: skip
    (draft,) = build_invoices(
        build_order("shop", "SO1", [row(remark="备" * 200)], BUYERS, ITEMS, SELLER), SELLER
    )
    sent: Any = payload.build_order(SELLER, draft, "o", invoice_date=DATE)["order"]
    assert sent["remark"] == "备" * 200


# ---- 2. showBankAccountType, surveyAnswerType -----------------------------------------------


@pytest.mark.parametrize(
    ("setting", "sent"), [("none", "0"), ("seller", "1"), ("buyer", "2"), ("both", "3")]
)
def test_show_bank_account_type_follows_the_seller_setting(setting: str, sent: str) -> None:
    # "不传默认为0：都不显示；传1：备注仅显示销方开户行及账号；传2：备注仅显示购方开户行及账号；
    # 传3：购销方开户行及账号都显示"
    seller = replace(SELLER, show_bank_account=setting)
    (draft,) = build_invoices(order(line()), seller)
    out: Any = payload.build_order(seller, draft, "o", invoice_date=DATE)["order"]
    assert out["showBankAccountType"] == sent


def test_unknown_show_bank_account_setting_is_refused() -> None:
    assert any(
        "show_bank_account 'all'" in m
        for m in problems(order(line()), replace(SELLER, show_bank_account="all"))
    )


def test_survey_answer_type_goes_with_1_or_3_percent_lines_only() -> None:
    # "surveyAnswerType … 3%、1%税率开具理由（企业为小规模/点下户时才需要）"
    seller = replace(SELLER, survey_answer_type="3")
    (three,) = build_invoices(order(line(rate="0.03")), seller)
    (thirteen,) = build_invoices(order(line()), seller)
    assert (
        payload.build_order(seller, three, "o", invoice_date=DATE)["order"][  # type: ignore[index]
            "surveyAnswerType"
        ]
        == "3"
    )
    assert (
        "surveyAnswerType"
        not in payload.build_order(  # type: ignore[operator]
            seller, thirteen, "o", invoice_date=DATE
        )["order"]
    )
    assert any(
        "survey_answer_type '4'" in m
        for m in problems(order(line()), replace(SELLER, survey_answer_type="4"))
    )


# ---- 3. clerk, payee, checker ---------------------------------------------------------------


def test_a_seller_without_clerk_is_refused_with_the_update_that_fixes_it() -> None:
    # "clerk String Y 张三 20 开票员（数电票时需要传入和开票登录账号对应的开票员姓名）"
    with pytest.raises(InvalidOrder) as err:
        build_invoices(order(line()), replace(SELLER, clerk=None))
    [problem] = err.value.problems
    assert problem.field == "seller.clerk" and "no clerk (开票人)" in problem.message
    assert problem.fix and "UPDATE cdc_invoice.seller SET clerk = '<开票员姓名>'" in problem.fix


@pytest.mark.parametrize("field", ["clerk", "payee", "checker"])
def test_clerk_payee_and_checker_at_most_20_characters(field: str) -> None:
    seller = replace(SELLER, **{field: "名" * 21})
    assert any(f"seller {field}" in m and "21 characters" in m for m in problems(
        order(line()), seller
    ))  # fmt: skip
    build_invoices(order(line()), replace(SELLER, **{field: "名" * 20}))


def test_payee_and_checker_are_sent() -> None:
    seller = replace(SELLER, payee="李四", checker="王五")
    (draft,) = build_invoices(order(line()), seller)
    out: Any = payload.build_order(seller, draft, "o", invoice_date=DATE)["order"]
    assert (out["clerk"], out["payee"], out["checker"]) == ("张三", "李四", "王五")


# ---- 4. special businesses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("1070101020100000000", "成品油"),  # 航空煤油 (乐企 成品油)
        ("1020403030000000000", "稀土"),  # 102040303开头 (乐企 稀土)
        ("1080314030500000000", "稀土"),  # 1080314030200000000至1080314031400000000
        ("2010100000000000000", "稀土"),  # 稀土产品加工费
        ("3050300000000000000", "建筑服务"),  # *建筑服务*修缮服务
        ("3019902000000000000", "货物运输服务"),  # *运输服务*其他货物运输
        ("5010102000000000000", "不动产销售"),  # 取得的住宅
        ("3040502020102000000", "不动产经营租赁服务"),  # 个人出租住房
    ],
)
def test_special_business_codes_are_refused_with_the_reason(code: str, kind: str) -> None:
    business = special_business(code)
    assert business is not None and business.kind == kind
    [message] = problems(order(line(code=code, rate="0.09")))
    assert f"tax code {code} is a {kind} code" in message and "特定要素 必须为空" in message


@pytest.mark.parametrize(
    "code",
    ["1080314031500000000", "1070102000000000000", "3049900000000000000", "2010200000000000000"],
)
def test_neighbouring_ordinary_codes_are_not_special(code: str) -> None:
    assert special_business(code) is None


# ---- 5. legacy kinds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("legacy", "digital"), [("p", "pc"), ("c", "ec"), ("s", "es"), ("b", "bs")]
)
def test_legacy_kinds_are_refused_naming_the_digital_kind(legacy: str, digital: str) -> None:
    with pytest.raises(InvalidOrder) as err:
        build_invoices(order(line(), kind=legacy), SELLER)
    [problem] = [p for p in err.value.problems if p.field == "invoice_line"]
    assert f"invoice kind {legacy!r} is a legacy 税控 kind" in problem.message
    assert problem.fix and f"use the 数电 kind {digital!r}" in problem.fix


# ---- 6. checks that move failures earlier ---------------------------------------------------


def test_price_and_quantity_at_most_16_characters_as_sent() -> None:
    # "price String N 16", "num String N 16": 12345678.1234567 is 16, 123456789.1234567 is 17
    ok = replace(line(), quantity=D(1), unit_price=D("1234567.12345678"))
    build_invoices(order(ok), SELLER)
    too_long = replace(ok, quantity=D("0.12345678"), unit_price=D("123456789.1234567"))
    messages = problems(order(too_long))
    assert (
        "unit_price 123456789.1234567 has 17 characters as sent, more than the platform's 16"
        in (messages)
    )


def test_gb32100_check_character() -> None:
    # GB 32100-2015's own example and two published codes; one character changed breaks it
    for code in ("91350100M000100Y43", "91110000802100433B", "9144030071526726XG"):
        assert uscc_problem(code) is None
    assert check_character("91350100M000100Y4") == "3"
    assert uscc_problem("91350100M000100Y44") == (
        "its check character is '4', GB 32100-2015 gives '3'"
    )
    assert "no I, O, Z, S, V" in (uscc_problem("91350100M000100YI3") or "")
    assert uscc_problem("339902999999789") is None  # 15 characters: another kind of number


def test_a_bad_credit_code_is_refused_on_a_special_invoice_and_warned_on_a_normal_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = replace(BUYERS["C1"], tax_number="91350100M000100Y44")
    assert any(
        "not a valid 统一社会信用代码" in m for m in problems(order(line(), buyer=bad, kind="bs"))
    )
    with caplog.at_level(logging.WARNING):
        build_invoices(order(line(), buyer=bad, kind="pc"), SELLER)
    assert "does not look like a valid 统一社会信用代码" in caplog.text


def test_a_short_name_prefix_in_the_item_name_is_stripped() -> None:
    # the platform prints "*简称*名称" itself; "*计算机*电脑" would print "*计算机**计算机*电脑"
    assert item_name("*计算机*电脑") == "电脑"
    assert item_name("电脑 *特价*") == "电脑 *特价*"
    built = build_order("shop", "SO1", [row(item_name="*计算机*电脑")], BUYERS, ITEMS, SELLER)
    assert built.lines[0].name == "电脑"


@pytest.mark.parametrize(
    ("code", "rate", "flag", "ok"),
    [
        ("3030100000000000000", "0.09", None, True),  # 基础电信服务: 税率必须为9%
        ("3030100000000000000", "0.06", None, False),
        ("3030200000000000000", "0.06", None, True),  # 增值电信服务: 税率必须为6%
        ("3030000000000000000", "0", "04", True),  # 电信服务汇总项: 0%, 04 不征税
        ("3030000000000000000", "0.06", None, False),
    ],
)
def test_telecom_summary_codes_need_the_rate_the_document_gives(
    code: str, rate: str, flag: str | None, ok: bool
) -> None:
    o = order(line(code=code, rate=rate, policy_flag=flag))
    if ok:
        build_invoices(o, SELLER)
    else:
        assert any("电信服务汇总项" in m for m in problems(o))
