"""A strict in-process Nuonuo platform for the adapter tests (httpx.MockTransport, no network).

The fake checks the envelope the way the real platform does: it verifies X-Nuonuo-Sign over the
exact bytes it received and the query parameters, and refuses unknown access tokens with 070301
(the sandbox's code). Only verified requests reach ``calls``. Tests steer it through
``on_gateway`` / ``on_token`` hooks, or by editing ``invoices`` / ``slips`` / ``listed_at``.

Lifecycle methods keep just enough state for the adapter tests: red-letter slips by billId
(answered in the sandbox's ``{"total", "list"}`` shape), fastInvoiceRed serials, void, delivery by
number, and a queryInvoiceList that pages over ``invoices`` in serial order.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from cdc_invoice.providers.nuonuo import signing

APP_KEY = "AK-main-4711"
APP_SECRET = "S3CRET-do-not-log-8c1f"  # searched for in logs and exceptions
TAX_NUMBER = "339902999999789113"
BASE_URL = "http://nuonuo.test"
NOW = 1_735_696_800.0  # 2025-01-01 10:00:00 Asia/Shanghai

Hook = Callable[[httpx.Request, str, Any], "httpx.Response | Awaitable[httpx.Response] | None"]


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Received:
    method: str
    raw: bytes
    body: Any
    request: httpx.Request


@dataclass
class FakeNuonuo:
    token_delay: float = 0.01  # lets concurrent callers pile up behind one fetch
    expires_in: object = "86400"
    token_fetches: int = 0
    issued_tokens: list[str] = field(default_factory=list)
    valid_tokens: set[str] = field(default_factory=set)
    calls: list[Received] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    on_token: Callable[[httpx.Request], httpx.Response | None] | None = None
    on_gateway: Hook | None = None
    serial_seq: int = 0
    invoices: dict[str, dict[str, Any]] = field(default_factory=dict)
    slips: dict[str, dict[str, Any]] = field(default_factory=dict)
    bill_seq: int = 0
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    # serial -> "yyyy-MM-dd HH:mm:ss" for queryInvoiceList's time filter (absent: always listed)
    listed_at: dict[str, str] = field(default_factory=dict)

    def add_invoice(self, **fields: Any) -> dict[str, Any]:
        """An invoice the platform already has (status 2 unless given)."""
        self.serial_seq += 1
        serial = fields.pop("serialNo", f"2501011000{self.serial_seq:010d}")
        item = {"serialNo": serial, "orderNo": f"o-{self.serial_seq}", "status": "2", **fields}
        self.invoices[serial] = item
        return item

    def revoke_all(self) -> None:
        self.valid_tokens.clear()

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/accessToken":
            return await self._token(request)
        if request.url.path == signing.GATEWAY_PATH:
            return await self._gateway(request)
        return httpx.Response(404, text="<html>not found</html>")

    async def _token(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(self.token_delay)
        if request.headers.get("content-type") != "application/x-www-form-urlencoded;charset=UTF-8":
            return httpx.Response(200, json={"error": "070315", "error_description": "bad type"})
        form = dict(urllib.parse.parse_qsl(request.content.decode()))
        if self.on_token is not None and (answer := self.on_token(request)) is not None:
            return answer
        if form.get("client_id") != APP_KEY:
            return httpx.Response(200, json={"error": "070304", "error_description": "bad id"})
        if form.get("client_secret") != APP_SECRET or form.get("grant_type") != (
            "client_credentials"
        ):
            return httpx.Response(200, json={"error": "070305", "error_description": "bad secret"})
        self.token_fetches += 1
        token = f"TOKEN-{self.token_fetches:04d}-f00dfeed"
        self.issued_tokens.append(token)
        self.valid_tokens = {token}  # a new token replaces the old one, as on the platform
        return httpx.Response(200, json={"access_token": token, "expires_in": self.expires_in})

    def _violation(self, text: str) -> httpx.Response:
        self.violations.append(text)
        return httpx.Response(200, json={"code": "X0000", "describe": f"violation: {text}"})

    async def _gateway(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        senid, nonce, ts = (
            params.get("senid", ""),
            params.get("nonce", ""),
            params.get("timestamp", ""),
        )
        if not re.fullmatch(r"[0-9a-f]{32}", senid):
            return self._violation(f"senid {senid!r}")
        if not re.fullmatch(r"[1-9][0-9]{7}", nonce):
            return self._violation(f"nonce {nonce!r}")
        if not re.fullmatch(r"[0-9]{10}", ts):
            return self._violation(f"timestamp {ts!r}")
        if params.get("appkey") != APP_KEY:
            return self._violation("appkey")
        if request.headers.get("content-type") != "application/json; charset=UTF-8":
            return self._violation("content-type")
        if request.headers.get("userTax") != TAX_NUMBER:
            return self._violation("userTax")
        method = request.headers.get("method", "")
        raw = request.content
        content = raw.decode("utf-8")
        if not signing.verify(
            request.headers.get("X-Nuonuo-Sign", ""),
            app_secret=APP_SECRET,
            app_key=APP_KEY,
            senid=senid,
            nonce=nonce,
            timestamp=ts,
            content=content,
            path=request.url.path,
        ):
            return httpx.Response(200, json={"code": "070601", "describe": "签名不匹配"})
        if request.headers.get("accessToken") not in self.valid_tokens:
            return httpx.Response(200, json={"code": "070301", "describe": "token无效"})
        body = json.loads(content)
        self.calls.append(Received(method, raw, body, request))
        if self.on_gateway is not None:
            answer = self.on_gateway(request, method, body)
            if answer is not None:
                return answer if isinstance(answer, httpx.Response) else await answer
        if method == "nuonuo.OpeMplatform.requestBillingNew":
            return self._issue(body)
        if method == "nuonuo.OpeMplatform.queryInvoiceResult":
            return self._query(body)
        handler = {
            "nuonuo.OpeMplatform.saveInvoiceRedConfirm": self._save_red,
            "nuonuo.OpeMplatform.queryInvoiceRedConfirm": self._query_red,
            "nuonuo.OpeMplatform.fastInvoiceRed": self._fast_red,
            "nuonuo.electronInvoice.invoiceCancellation": self._void,
            "nuonuo.OpeMplatform.deliveryInvoice": self._deliver,
            "nuonuo.OpeMplatform.queryInvoiceList": self._list,
        }.get(method)
        if handler is None:
            return self._violation(f"unknown method {method!r}")
        return handler(body)

    @staticmethod
    def _ok(result: Any = None, describe: str = "成功") -> httpx.Response:
        answer: dict[str, Any] = {"code": "E0000", "describe": describe}
        if result is not None:
            answer["result"] = result
        return httpx.Response(200, json=answer)

    @staticmethod
    def _code(code: str, describe: str) -> httpx.Response:
        return httpx.Response(200, json={"code": code, "describe": describe})

    def _save_red(self, body: Any) -> httpx.Response:
        if body.get("sellerTaxNo") != TAX_NUMBER:
            return self._code("E9302", "销方税号与userTax不一致")
        bill_id = body["billId"]
        if bill_id in self.slips:
            return self._code("E9999", "申请号重复")
        self.bill_seq += 1
        self.slips[bill_id] = {
            "billId": bill_id,
            "billNo": f"2025010110{self.bill_seq:011d}",
            "billUuid": f"{self.bill_seq:032x}",
            "billStatus": "15",
            "billMessage": "",
            "requestStatus": "",
            "openStatus": "0",
            "blueInvoiceLine": body["blueInvoiceLine"],
            "redReason": body["redReason"],
            "_orderNo": body.get("orderNo", ""),  # the red invoice's, once issued
        }
        return self._ok(bill_id, "红字确认单申请成功")

    def _query_red(self, body: Any) -> httpx.Response:
        if body.get("identity") != "0":
            return self._violation(f"identity {body.get('identity')!r}")
        found = [
            {k: v for k, v in slip.items() if not k.startswith("_")}
            for slip in self.slips.values()
            if slip["billId"] == body.get("billId")
        ]
        return self._ok({"total": len(found), "list": found}, "查询成功")

    def _fast_red(self, body: Any) -> httpx.Response:
        if body.get("taxNum") != TAX_NUMBER:
            return self._code("E9302", "税号taxNum与请求头userTax不一致")
        slip = next((s for s in self.slips.values() if s["billNo"] == body.get("billNo")), None)
        if slip is None or slip["billUuid"] != body.get("billUuid"):
            return self._code("E9400", "红字确认单不存在")
        if slip.get("invoiceSerialNum"):
            return self._ok({"invoiceSerialNum": slip["invoiceSerialNum"]}, "开票提交成功")
        red = self.add_invoice(orderNo=body["orderNo"], status="20", invoiceType="2")
        slip.update(openStatus="1", invoiceSerialNum=red["serialNo"], orderNo=red["orderNo"])
        return self._ok({"invoiceSerialNum": red["serialNo"]}, "开票提交成功")

    def _void(self, body: Any) -> httpx.Response:
        invoice = self.invoices.get(body.get("invoiceId", ""))
        if invoice is None:
            return self._code("E9500", "发票不存在")
        invoice["status"] = "31"
        return self._ok(invoice["serialNo"], "作废提交成功")

    def _deliver(self, body: Any) -> httpx.Response:
        if body.get("taxnum") != TAX_NUMBER:
            return self._code("E9302", "税号与userTax不一致")
        if not body.get("phone") and not body.get("mail"):
            return self._code("E4000", "手机号和邮箱至少填写一个")
        number, code = body.get("invoiceNum"), body.get("invoiceCode", "")
        if not any(
            number in (i.get("allElectronicInvoiceNumber"), i.get("invoiceNo"))
            and code == i.get("invoiceCode", "")
            for i in self.invoices.values()
        ):
            return self._code("E9999", "发票不存在不能重新交付")
        self.deliveries.append(body)
        return self._ok(describe="交付成功")

    def _list(self, body: Any) -> httpx.Response:
        page_no, page_size = int(body["pageNo"]), int(body["pageSize"])
        if page_no < 1 or not 1 <= page_size <= 50:
            return self._code("E4000", "pageNo从1开始,pageSize为1-50")
        start, end = body["startTime"], body["endTime"]
        rows = [
            self.invoices[serial]
            for serial in sorted(self.invoices)
            if start <= self.listed_at.get(serial, start) <= end
        ]
        page = rows[(page_no - 1) * page_size : page_no * page_size]
        return self._ok({"total": len(rows), "list": page}, "查询成功")

    def _issue(self, body: Any) -> httpx.Response:
        order = body["order"]
        if any(i["orderNo"] == order["orderNo"] for i in self.invoices.values()):
            return httpx.Response(
                200, json={"code": "E9106", "describe": "订单编号或流水号不能重复"}
            )
        self.serial_seq += 1
        serial = f"2501011000{self.serial_seq:010d}"
        self.invoices[serial] = {
            "serialNo": serial,
            "orderNo": order["orderNo"],
            "status": "20",
            "payerName": order["buyerName"],
        }
        return httpx.Response(
            200,
            json={
                "code": "E0000",
                "describe": "开票提交成功",
                "result": {"invoiceSerialNum": serial},
            },
        )

    def _query(self, body: Any) -> httpx.Response:
        if "serialNos" in body:
            found = [self.invoices[s] for s in body["serialNos"] if s in self.invoices]
        else:
            wanted = set(body.get("orderNos", ()))
            found = [i for i in self.invoices.values() if i["orderNo"] in wanted]
        if not found:
            return httpx.Response(200, json={"code": "E9500", "describe": "发票不存在"})
        return httpx.Response(200, json={"code": "E0000", "describe": "成功", "result": found})
