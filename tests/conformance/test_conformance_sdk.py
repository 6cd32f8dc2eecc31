"""A third-party client (jellyfrank/nuonuo-sdk, MIT) drives the sandbox over TLS.

Each answer must have the documented shape and codes (the doc page is named per check):
token (创建应用.md), issue (requestBillingNew 响应示例), duplicate (E9106, same page's 返回码),
query by order number and by serial (发票详情查询 响应参数), delivery (发票重新交付), red-slip save
(红字确认单申请) and query (红字确认单查询: code "0000", top-level total/list), and a bad signature
(070601 签名不匹配, as the SDK's own live run on sandbox.nuonuocs.cn recorded it).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from nuonuo import Nuonuo

from cdc_invoice import harness
from tests.conformance.conftest import SELLER, fixture

CHINA = timezone(timedelta(hours=8))
STATUSES = {"2", "20", "21", "22", "24", "3", "31"}  # 发票详情查询 doc, status


def order(order_no: str) -> dict[str, Any]:
    """An ordinary 数电普票 in the field names and types of the requestBillingNew doc example."""
    return {
        "buyerName": "浙江诺诺网络科技有限公司",
        "buyerTaxNum": "339901999999198",
        "salerTaxNum": SELLER,
        "salerTel": "0571-88888888",
        "salerAddress": "杭州市西湖区",
        "orderNo": order_no,
        "invoiceDate": f"{datetime.now(CHINA):%Y-%m-%d %H:%M:%S}",
        "clerk": "张三",
        "pushMode": "-1",
        "invoiceType": "1",
        "invoiceLine": "pc",
        "invoiceDetail": [
            {
                "goodsName": "电脑",
                "goodsCode": "1090511030000000000",
                "withTaxFlag": "1",
                "taxRate": "0.13",
                "num": "1",
                "price": "1",
                "taxIncludedAmount": "1",
                "taxExcludedAmount": "0.88",
                "tax": "0.12",
                "invoiceLineProperty": "0",
                "favouredPolicyFlag": "0",
                "zeroRateFlag": "0",
                "deduction": "0",
            }
        ],
    }


def new_order_no() -> str:
    return uuid.uuid4().hex[:20]  # ≤ 20 characters (requestBillingNew doc)


def wait_issued(sdk: Nuonuo, serial: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        answer = sdk.nst.query(serial_nos=[serial], include_details=True)
        item: dict[str, Any] = answer["result"][0]
        if item["status"] not in ("20", "21") or time.monotonic() > deadline:
            return item
        time.sleep(0.1)


def test_token_has_the_documented_shape(sdk: Nuonuo) -> None:
    # 创建应用.md 响应示例: {"access_token": "54871544ED15874564115", "expires_in": "86400"}
    example = fixture("accessToken")["response_example"]
    answer = sdk.get_merchant_token()
    assert set(answer) == set(example)
    assert all(isinstance(answer[k], type(v)) for k, v in example.items())
    assert answer["expires_in"] == "86400"


def test_issue_duplicate_query_and_delivery(sdk: Nuonuo) -> None:
    number = new_order_no()
    issued = sdk.nst.issue(order(number))
    example = fixture("requestBillingNew")["response_example"]
    # requestBillingNew 响应示例: code E0000, describe, result.invoiceSerialNum
    assert issued["code"] == example["code"] == "E0000"
    assert set(issued) == set(example) and set(issued["result"]) == set(example["result"])
    serial = issued["result"]["invoiceSerialNum"]
    assert isinstance(serial, str) and serial.isdigit()

    again = sdk.nst.issue(order(number))
    assert again["code"] == "E9106"  # 订单编号或流水号不能重复
    assert "result" not in again or again["result"] in (None, "", {})

    item = wait_issued(sdk, serial)
    fields = {name for name, _ in fixture("queryInvoiceResult")["response_fields"]}
    assert item["status"] == "2" and item["serialNo"] == serial and item["orderNo"] == number
    for key in ("serialNo", "orderNo", "status", "statusMsg", "exTaxAmount", "taxAmount"):
        assert key in fields and key in item
    invoice_number = item["allElectronicInvoiceNumber"]
    assert len(invoice_number) == 20 and invoice_number.isdigit()  # 数电: 20 digits
    assert Decimal(item["exTaxAmount"]) == Decimal("0.88")
    assert Decimal(item["taxAmount"]) == Decimal("0.12")

    by_order = sdk.nst.query(order_nos=[number])
    assert by_order["code"] == "E0000" and by_order["result"][0]["serialNo"] == serial
    missing = sdk.nst.query(order_nos=[new_order_no()])
    assert missing["code"] == "E9500"  # 发票详情查询 返回码: 发票不存在

    delivered = sdk.call(
        "nuonuo.OpeMplatform.deliveryInvoice",
        {"taxnum": SELLER, "invoiceCode": "", "invoiceNum": invoice_number, "mail": "a@b.cn"},
    )
    assert delivered["code"] == "E0000"  # 发票重新交付: E0000 交付成功
    unknown = sdk.call(
        "nuonuo.OpeMplatform.deliveryInvoice",
        {"taxnum": SELLER, "invoiceCode": "", "invoiceNum": "9" * 20, "mail": "a@b.cn"},
    )
    assert unknown["code"] == "E9999"  # 发票不存在不能重新交付


def test_red_slip_save_and_query(sdk: Nuonuo) -> None:
    serial = sdk.nst.issue(order(new_order_no()))["result"]["invoiceSerialNum"]
    blue = wait_issued(sdk, serial)
    # 红字确认单申请 doc example: the 20-digit number in blueInvoiceNumber, blueElecInvoiceNumber ""
    saved = sdk.call(
        "nuonuo.OpeMplatform.saveInvoiceRedConfirm",
        {
            "billId": "",
            "blueInvoiceLine": "pc",
            "applySource": "0",
            "blueInvoiceNumber": blue["allElectronicInvoiceNumber"],
            "blueElecInvoiceNumber": "",
            "sellerTaxNo": SELLER,
            "sellerName": "航信培训企业789113",
            "buyerName": blue["payerName"],
            "buyerTaxNo": blue["payerTaxNo"],
            "redReason": "2",
            "orderNo": new_order_no(),
        },
    )
    assert saved["code"] == "E0000" and isinstance(saved["result"], str)
    bill_id = saved["result"]
    listed = sdk.call(
        "nuonuo.OpeMplatform.queryInvoiceRedConfirm", {"identity": "0", "billId": bill_id}
    )
    # 红字确认单查询 响应参数: code (0000), describe, total, list — no result wrapper
    table = {name for name, _ in fixture("queryInvoiceRedConfirm")["response_fields"]}
    assert {"code", "describe", "total", "list"} <= table
    assert listed["code"] == "0000" and "result" not in listed
    assert listed["total"] == "1" and isinstance(listed["list"], list)
    slip = listed["list"][0]
    assert (
        slip["billId"] == bill_id
        and slip["blueInvoiceNumber"] == blue["allElectronicInvoiceNumber"]
    )
    assert slip["billStatus"] in {"15", "01"} and slip["applySource"] == "0"
    for key in ("billNo", "billUuid", "billStatus", "openStatus", "redReason", "detail"):
        assert key in table and key in slip


def test_a_bad_signature_is_070601(sdk: Nuonuo, tls_sandbox: harness.Sandbox) -> None:
    with Nuonuo(
        tls_sandbox.app_key,
        "not-the-secret",
        tax_number=SELLER,
        base_url=f"{tls_sandbox.url}/open/v1/services",
        token_url=tls_sandbox.token_url,
    ) as wrong:
        wrong.set_access_token(str(sdk.get_merchant_token()["access_token"]))
        answer = wrong.nst.query(order_nos=["X"])
    # nuonuo-sdk docs/sandbox-validation.md: 070601 签名不匹配 (live, sandbox.nuonuocs.cn)
    assert answer["code"] == "070601" and answer["describe"] == "签名不匹配"
