"""How invoices look on the wire: queryInvoiceResult items (§2.9) and the /_sandbox listing.

Field names and value shapes follow the official field table and a live 2024 sandbox answer:
amounts are 2-decimal strings, times are epoch milliseconds (numbers), ``itemPrice``/``itemNum``
carry 18 decimals, and ``itemPrice``/``itemAmount`` are on the ``isIncludeTax`` basis (with
``isIncludeTax`` "true" they include tax; the tax-exclusive amount is ``itemAmount −
itemTaxAmount``). Fields that do not apply yet (no number while issuing) are omitted, as the
platform's JSON serialiser omits nulls.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from cdc_invoice.sandbox import codes, numbers
from cdc_invoice.sandbox.fields import money, order_time
from cdc_invoice.sandbox.model import FAILED, ISSUED, SIGN_FAILED, VOIDED, Invoice, Line

_EIGHTEEN_PLACES = Decimal(10) ** -18


def _ms(epoch: float) -> int:
    return int(epoch * 1000)


def _long_decimal(value: Decimal | None) -> str:
    return "" if value is None else str(value.quantize(_EIGHTEEN_PLACES))


def _order_time_ms(raw: str) -> int | None:
    parsed = order_time(raw)
    return None if parsed is None else _ms(parsed.replace(tzinfo=numbers.CST).timestamp())


def file_url(base_url: str, invoice: Invoice, ext: str) -> str:
    return f"{base_url}/_sandbox/files/{invoice.serial}.{ext}"


def query_item(invoice: Invoice, status: str, base_url: str, *, detail: bool) -> dict[str, Any]:
    x = invoice.extra
    item: dict[str, Any] = {
        "serialNo": invoice.serial,
        "orderNo": invoice.order_no,
        "status": status,
        "statusMsg": codes.STATUS_MESSAGES.get(status, ""),
        "failCause": invoice.fail_cause if status in (FAILED, SIGN_FAILED) else "",
        "invoiceCode": "",
        "invoiceNo": "",
        "allElectronicInvoiceNumber": "",
        "exTaxAmount": money(invoice.total_ex),
        "taxAmount": money(invoice.total_tax),
        "orderAmount": money(invoice.total_incl),
        "payerName": invoice.buyer.name,
        "payerTaxNo": invoice.buyer.tax_no,
        "address": invoice.buyer.address,
        "telephone": invoice.buyer.tel,
        "bankAccount": invoice.buyer.account,
        "phone": invoice.buyer.phone,
        "notifyEmail": invoice.buyer.email,
        # the kind as the 发票详情查询 doc's table has it (invoiceKind); it lists no invoiceLine
        "invoiceKind": codes.INVOICE_KINDS.get(invoice.invoice_line, ""),
        "invoiceType": "1" if invoice.kind == "blue" else "2",
        "salerTaxNum": invoice.seller_tax,
        "salerTel": x.get("salerTel", ""),
        "salerAddress": x.get("salerAddress", ""),
        "salerAccount": x.get("salerAccount", ""),
        "clerk": x.get("clerk", ""),
        "payee": x.get("payee", ""),
        "checker": x.get("checker", ""),
        "remark": x.get("remark", ""),
        "extensionNumber": x.get("extensionNumber", ""),
        "checkCode": "",
        "machineCode": "",
        "cipherText": "",
        "listFlag": "0",
        "listName": "",
        "productOilFlag": 0,
        "specificFactor": 0,
        "proxyInvoiceFlag": "0",
        "redReason": invoice.red_reason,
        "oldInvoiceCode": "",
        "oldInvoiceNo": invoice.original_number,
        "oldEleInvoiceNumber": invoice.original_number,
        "createTime": _ms(invoice.submitted_at),
        "updateTime": _ms(invoice.issued_at or invoice.submitted_at),
        "emailNotifyStatus": "4",
        "phoneNotifyStatus": "4",
    }
    order_time = _order_time_ms(x.get("invoiceDate", ""))
    if order_time is not None:
        item["invoiceDate"] = order_time
    # 24 (签章失败) exists like 2: it has its number and issue time (发票详情查询 doc).
    if status in (ISSUED, SIGN_FAILED, VOIDED) and invoice.issued_at is not None:
        electronic = not invoice.paper_no
        item.update(
            invoiceTime=_ms(invoice.issued_at),
            invoiceCode=invoice.paper_code,
            invoiceNo=invoice.number if electronic else invoice.paper_no,
            allElectronicInvoiceNumber=invoice.number,
            pdfUrl=file_url(base_url, invoice, "pdf"),
            ofdUrl=file_url(base_url, invoice, "ofd"),
            xmlUrl=file_url(base_url, invoice, "xml"),
            pictureUrl=file_url(base_url, invoice, "jpg"),
            imgUrls=file_url(base_url, invoice, "jpg"),
            qrCode=(
                f"01,32,,{invoice.number},{money(invoice.total_ex)},"
                f"{numbers.cst(invoice.issued_at):%Y%m%d},,{invoice.serial[-4:]}"
            ),
            stateUpdateTime=_ms(invoice.voided_at or invoice.issued_at),
        )
        if invoice.buyer.email:
            item["emailNotifyStatus"] = "1"
        if invoice.buyer.phone:
            item["phoneNotifyStatus"] = "1"
        if status == SIGN_FAILED:
            # ASSUMPTION (docs/platform-assumptions.md L4): no sealed file exists yet, so none
            # is offered or sent.
            for key in ("pdfUrl", "ofdUrl", "xmlUrl", "pictureUrl", "imgUrls"):
                del item[key]
            item["emailNotifyStatus"] = item["phoneNotifyStatus"] = "4"
    if status == VOIDED and invoice.voided_at is not None:
        item.update(invalidTime=str(int(invoice.voided_at)), invalidSource="2")
    if detail:
        item["invoiceItems"] = [_item(line) for line in invoice.lines]
    return item


def _item(line: Line) -> dict[str, Any]:
    return {
        "itemIndex": line.index,
        "itemName": line.name,
        "itemCode": line.goods_code,
        "itemCodeAbb": "",
        "itemSelfCode": line.self_code,
        "itemSpec": line.spec,
        "itemUnit": line.unit,
        "itemPrice": _long_decimal(line.price),
        "itemNum": _long_decimal(line.num),
        "itemTaxRate": format(line.rate.normalize(), "f"),
        "itemAmount": money(line.incl if line.with_tax else line.ex),
        "itemTaxAmount": money(line.tax),
        "isIncludeTax": "true" if line.with_tax else "false",
        "invoiceLineProperty": str(line.prop),
        "zeroRateFlag": "",
        "favouredPolicyName": "",
        "favouredPolicyFlag": line.favoured_flag,
        "deduction": "0.00",
    }


def listing_item(invoice: Invoice, status: str) -> dict[str, Any]:
    """One row of ``GET /_sandbox/invoices``: what a test asserts on."""
    return {
        "orderNo": invoice.order_no,
        "serial": invoice.serial,
        "number": invoice.number,
        "kind": invoice.kind,
        "invoiceLine": invoice.invoice_line,
        "status": status,
        "statusMsg": codes.STATUS_MESSAGES.get(status, ""),
        "failCause": invoice.fail_cause,
        "sellerTaxNo": invoice.seller_tax,
        "buyerName": invoice.buyer.name,
        "buyerTaxNo": invoice.buyer.tax_no,
        "totalExclTax": money(invoice.total_ex),
        "totalTax": money(invoice.total_tax),
        "totalInclTax": money(invoice.total_incl),
        "issuedAt": (
            numbers.cst(invoice.issued_at).isoformat() if invoice.issued_at is not None else None
        ),
        "originalNumber": invoice.original_number,
        "billNo": invoice.bill_no,
        "retries": invoice.retries,
        "deliveries": invoice.deliveries,
        "header": dict(invoice.extra),  # clerk, remark, showBankAccountType … as received
        "lines": [
            {
                "index": ln.index,
                "name": ln.name,
                "goodsCode": ln.goods_code,
                "taxRate": str(ln.rate),
                "price": None if ln.price is None else str(ln.price),
                "quantity": None if ln.num is None else str(ln.num),
                "priceIncludesTax": ln.with_tax,
                "exclTax": money(ln.ex),
                "tax": money(ln.tax),
                "inclTax": money(ln.incl),
                "property": ln.prop,
                "blueIndex": ln.blue_index,
            }
            for ln in invoice.lines
        ],
    }
