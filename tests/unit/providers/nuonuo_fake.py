"""A strict in-process Nuonuo platform for the adapter tests (httpx.MockTransport, no network).

The fake checks the envelope the way the real platform does: it verifies X-Nuonuo-Sign over the
exact bytes it received and the query parameters, and refuses unknown access tokens with 070301
(the sandbox's code). Tests steer it through ``on_gateway`` / ``on_token`` hooks.
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
            return httpx.Response(200, json={"code": "070302", "describe": "签名验证失败"})
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
        return httpx.Response(200, json={"code": "E9999", "describe": "unknown method"})

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
