"""The sandbox as a real process, spoken to over a real socket with signed Nuonuo requests.

The client below is written here from the protocol (reference §2.2-§2.5) instead of importing the
adapter, so this file tests the sandbox, not the adapter's idea of the protocol.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from cdc_invoice.providers.nuonuo.signing import sign
from cdc_invoice.sandbox import RuntimeConfig, SandboxOptions, start_sandbox

pytestmark = pytest.mark.e2e

APP_KEY = "e2e-app"
SECRET = "e2e-secret-不要外传"
SELLER = "339902999999789113"
ISSUE = "nuonuo.OpeMplatform.requestBillingNew"
QUERY = "nuonuo.OpeMplatform.queryInvoiceResult"
READY = re.compile(r"^sandbox listening on (http://127\.0\.0\.1:(\d+))$")


class Sandbox:
    """A ``python -m cdc_invoice.sandbox`` process on port 0."""

    def __init__(self, state: Path, *args: str, secret_env: bool = True) -> None:
        env = dict(os.environ)
        env.pop("CDC_INVOICE_SANDBOX_APP_SECRET", None)
        if secret_env:
            env["CDC_INVOICE_SANDBOX_APP_SECRET"] = SECRET
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdc_invoice.sandbox", "--listen", "127.0.0.1:0",
             "--state", str(state), "--app-key", APP_KEY, "--seller-tax-number", SELLER, *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = self._readline(deadline=time.monotonic() + 30)
        match = READY.match(line.strip())
        assert match, f"unexpected first line {line!r}; stderr: {self._stderr()}"
        self.url = match.group(1)
        assert int(match.group(2)) > 0  # port 0 was replaced by the real one

    def _readline(self, deadline: float) -> str:
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                return self.proc.stdout.readline()
            if self.proc.poll() is not None:
                break
        raise AssertionError(f"sandbox did not start; stderr: {self._stderr()}")

    def _stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(running)"
        return self.proc.stderr.read()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=15)
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()

    def admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        if body is None:
            return httpx.get(self.url + path, timeout=10).json()
        return httpx.post(self.url + path, json=body, timeout=10).json()


class Client:
    """Just enough of the protocol: token, signed gateway calls."""

    def __init__(self, url: str, *, timeout: float = 10) -> None:
        self.http = httpx.Client(base_url=url, timeout=timeout)
        self._token: str | None = None

    def close(self) -> None:
        self.http.close()

    def token(self) -> str:
        if self._token is None:
            r = self.http.post(
                "/accessToken",
                data={"client_id": APP_KEY, "client_secret": SECRET,
                      "grant_type": "client_credentials"},
            )  # fmt: skip
            self._token = r.json()["access_token"]
        return self._token

    def send(
        self,
        method: str,
        body: Any,
        *,
        tamper: bytes | None = None,
        timeout: float | None = None,
        **headers: str,
    ) -> httpx.Response:
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        senid, nonce, ts = uuid.uuid4().hex, "12345678", str(int(time.time()))
        signature = sign(
            app_secret=SECRET, app_key=APP_KEY, senid=senid, nonce=nonce, timestamp=ts,
            content=content,
        )  # fmt: skip
        return self.http.post(
            "/open/v1/services",
            params={"senid": senid, "nonce": nonce, "timestamp": ts, "appkey": APP_KEY},
            headers={
                "Content-Type": "application/json; charset=UTF-8",
                "X-Nuonuo-Sign": signature,
                "accessToken": self.token(),
                "userTax": SELLER,
                "method": method,
                **headers,
            },
            content=tamper if tamper is not None else content.encode(),
            timeout=timeout if timeout is not None else self.http.timeout,
        )

    def call(self, method: str, body: Any, **kwargs: Any) -> dict[str, Any]:
        response = self.send(method, body, **kwargs)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def issue(self, order_no: str, **overrides: Any) -> dict[str, Any]:
        return self.call(ISSUE, order(order_no, **overrides))

    def wait_final(self, serial: str, timeout: float = 10) -> tuple[dict[str, Any], list[str]]:
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.call(QUERY, {"serialNos": [serial], "isOfferInvoiceDetail": "1"})
            assert answer["code"] == "E0000", answer
            item: dict[str, Any] = answer["result"][0]
            if not seen or seen[-1] != item["status"]:
                seen.append(item["status"])
            if item["status"] in ("2", "22", "24"):
                return item, seen
            time.sleep(0.05)
        raise AssertionError(f"invoice {serial} stuck in {seen}")


def order(order_no: str, **overrides: Any) -> dict[str, Any]:
    detail = {
        "goodsName": "电脑", "goodsCode": "1090511030000000000", "specType": "y460", "unit": "台",
        "withTaxFlag": "1", "price": "3099", "num": "2", "taxRate": "0.13",
        "taxIncludedAmount": "6198.00", "taxExcludedAmount": "5484.96", "tax": "713.04",
        "invoiceLineProperty": "0",
    }  # fmt: skip
    body = {
        "buyerName": "杭州某某贸易有限公司", "buyerTaxNum": "91330106MA2AYNWD8M",
        "salerTaxNum": SELLER, "salerTel": "0571-77777777", "salerAddress": "杭州市西湖区",
        "orderNo": order_no, "invoiceDate": "2025-01-01 10:00:00", "clerk": "张三",
        "invoiceType": "1", "invoiceLine": "pc", "pushMode": "-1", "invoiceDetail": [detail],
    }  # fmt: skip
    body.update(overrides)
    return {"order": body}


@pytest.fixture(scope="module")
def shared_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    state = tmp_path_factory.mktemp("sandbox") / "state.db"
    running = Sandbox(state, "--issue-delay-ms", "300")
    yield running
    assert running.stop() == 0


@pytest.fixture
def client(shared_sandbox: Sandbox) -> Iterator[Client]:
    c = Client(shared_sandbox.url)
    yield c
    c.close()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


# -- the CLI --------------------------------------------------------------------------------------


def test_help_teaches_the_flags_and_the_secret_variable() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cdc_invoice.sandbox", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for needle in ("--issue-delay-ms", "--fault-lost-response", "--seed", "--state",
                   "CDC_INVOICE_SANDBOX_APP_SECRET", "Example"):  # fmt: skip
        assert needle in out


def test_no_secret_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CDC_INVOICE_SANDBOX_APP_SECRET"}
    done = subprocess.run(
        [sys.executable, "-m", "cdc_invoice.sandbox", "--state", str(tmp_path / "s.db"),
         "--app-key", APP_KEY, "--seller-tax-number", SELLER],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert "CDC_INVOICE_SANDBOX_APP_SECRET" in done.stderr


# -- the protocol ---------------------------------------------------------------------------------


def test_signed_issue_is_queried_through_20_21_to_2(
    shared_sandbox: Sandbox, client: Client
) -> None:
    order_no = unique("E2E")
    accepted = client.issue(order_no)
    assert accepted["code"] == "E0000", accepted
    serial = accepted["result"]["invoiceSerialNum"]
    assert re.fullmatch(r"\d{20}", serial)

    item, seen = client.wait_final(serial)
    assert seen[-1] == "2" and set(seen) <= {"20", "21", "2"} and seen[0] in ("20", "21")
    number = item["allElectronicInvoiceNumber"]
    assert re.fullmatch(r"\d{20}", number) and number == item["invoiceNo"]
    assert number[:2] == datetime.now().strftime("%y")
    assert item["invoiceCode"] == "" and isinstance(item["invoiceTime"], int)
    assert (item["exTaxAmount"], item["taxAmount"], item["orderAmount"]) == (
        "5484.96", "713.04", "6198.00",
    )  # fmt: skip
    assert (item["payerName"], item["payerTaxNo"]) == ("杭州某某贸易有限公司", "91330106MA2AYNWD8M")
    assert item["invoiceItems"][0]["itemTaxAmount"] == "713.04"
    assert httpx.get(item["pdfUrl"], timeout=10).status_code == 200

    by_order = client.call(QUERY, {"orderNos": [order_no]})
    assert by_order["result"][0]["serialNo"] == serial
    listed = shared_sandbox.admin(f"/_sandbox/invoices?orderNo={order_no}")
    assert [(r["number"], r["kind"], r["totalInclTax"]) for r in listed] == [
        (number, "blue", "6198.00")
    ]


def test_reused_order_number_is_e9106_even_after_a_failed_issue(client: Client) -> None:
    order_no = unique("DUP")
    first = client.issue(order_no)
    assert first["code"] == "E0000"
    assert client.issue(order_no)["code"] == "E9106"

    # An invoice that fails later (invoice tax off by 1.50 > 1.27) still holds its number.
    skew = {
        "goodsName": "服务费", "goodsCode": "3049900000000000000", "withTaxFlag": "1",
        "price": "113.05", "num": "1", "taxRate": "0.13", "taxIncludedAmount": "113.05",
        "taxExcludedAmount": "100.00", "tax": "13.05",
    }  # fmt: skip
    failing = unique("FAIL")
    serial = client.issue(failing, invoiceDetail=[skew] * 30)["result"]["invoiceSerialNum"]
    item, _ = client.wait_final(serial)
    assert item["status"] == "22" and "1.27" in item["failCause"]
    assert client.issue(failing)["code"] == "E9106"


def test_bad_signature_and_bad_token_are_refused_without_acting(
    shared_sandbox: Sandbox, client: Client
) -> None:
    order_no = unique("SIG")
    signed_for_other = json.dumps(order(order_no), ensure_ascii=False).encode()  # spaces differ
    answer = client.call(ISSUE, order(order_no), tamper=signed_for_other)
    assert answer == {"code": "070601", "describe": "签名不匹配"}
    answer = client.call(ISSUE, order(order_no), accessToken="not-a-token")
    assert answer == {"code": "070301", "describe": "accessToken无效或已过期"}
    assert shared_sandbox.admin(f"/_sandbox/invoices?orderNo={order_no}") == []
    assert client.issue(order_no)["code"] == "E0000"  # the number was never taken


def test_token_endpoint_errors(client: Client) -> None:
    bad = client.http.post(
        "/accessToken",
        data={"client_id": APP_KEY, "client_secret": "wrong", "grant_type": "client_credentials"},
    ).json()
    assert bad["error"] == "070305" and "error_description" in bad
    good = client.http.post(
        "/accessToken",
        data={"client_id": APP_KEY, "client_secret": SECRET, "grant_type": "client_credentials"},
    ).json()
    assert good["expires_in"] == "86400" and len(good["access_token"]) >= 16


def test_query_errors(client: Client) -> None:
    assert client.call(QUERY, {})["code"] == "E9611"
    assert client.call(QUERY, {"serialNos": [str(n) for n in range(51)]})["code"] == "E9601"
    assert client.call(QUERY, {"orderNos": [unique("NONE")]})["code"] == "E9500"


def test_red_letter_reversal_and_void_refusal(client: Client) -> None:
    serial = client.issue(unique("RED"))["result"]["invoiceSerialNum"]
    blue, _ = client.wait_final(serial)
    void = client.call(
        "nuonuo.electronInvoice.invoiceCancellation",
        {"invoiceId": serial, "invoiceCode": "", "invoiceNo": blue["invoiceNo"]},
    )
    assert void["code"] == "E9201"  # 数电 electronic invoices are never voided

    slip_body = {
        "blueInvoiceLine": "pc", "applySource": "0",
        "blueElecInvoiceNumber": blue["allElectronicInvoiceNumber"], "sellerTaxNo": SELLER,
        "sellerName": "沙箱销方", "buyerName": blue["payerName"], "buyerTaxNo": blue["payerTaxNo"],
        "redReason": "2", "orderNo": unique("R"),
    }  # fmt: skip
    saved = client.call("nuonuo.OpeMplatform.saveInvoiceRedConfirm", slip_body)
    assert saved["code"] == "E0000", saved
    bill_id = saved["result"]
    deadline = time.monotonic() + 10
    while True:
        listing = client.call(
            "nuonuo.OpeMplatform.queryInvoiceRedConfirm", {"identity": "0", "billId": bill_id}
        )
        # 红字确认单查询 doc, 响应参数: code "0000", total and list at the top level
        assert listing["code"] == "0000" and "result" not in listing, listing
        assert listing["total"] == "1"
        slip = listing["list"][0]
        if slip.get("invoiceSerialNum") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert slip["billStatus"] == "01" and slip["openStatus"] == "1"
    red, _ = client.wait_final(slip["invoiceSerialNum"])
    assert red["invoiceType"] == "2" and red["exTaxAmount"] == "-5484.96"
    assert red["oldEleInvoiceNumber"] == blue["allElectronicInvoiceNumber"]

    again = client.call(
        "nuonuo.OpeMplatform.saveInvoiceRedConfirm", slip_body | {"orderNo": unique("R")}
    )
    assert again["code"] == "E9103"


def test_redelivery(client: Client) -> None:
    serial = client.issue(unique("DLV"))["result"]["invoiceSerialNum"]
    item, _ = client.wait_final(serial)
    body = {"taxnum": SELLER, "invoiceCode": "", "invoiceNum": item["invoiceNo"],
            "mail": "buyer@example.com"}  # fmt: skip
    assert client.call("nuonuo.OpeMplatform.deliveryInvoice", body)["code"] == "E0000"
    missing = body | {"invoiceNum": "2" * 20}
    assert client.call("nuonuo.OpeMplatform.deliveryInvoice", missing)["code"] == "E9999"


# -- restarts and faults ----------------------------------------------------------------------------


def test_restart_mid_issue_keeps_everything_acknowledged(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    args = ("--app-secret-file", str(secret_file), "--issue-delay-ms", "800")
    first = Sandbox(state, *args, secret_env=False)
    client = Client(first.url)
    done_serial = client.issue("KEEP-1")["result"]["invoiceSerialNum"]
    done, _ = client.wait_final(done_serial)
    pending_serial = client.issue("KEEP-2")["result"]["invoiceSerialNum"]  # status 20 now
    token = client.token()
    client.close()
    assert first.stop() == 0

    second = Sandbox(state, *args, secret_env=False)
    try:
        client = Client(second.url)
        client._token = token  # tokens survive restarts too
        again = client.call(QUERY, {"serialNos": [done_serial, pending_serial]})
        assert [i["serialNo"] for i in again["result"]] == [done_serial, pending_serial]
        assert (
            again["result"][0]["allElectronicInvoiceNumber"] == done["allElectronicInvoiceNumber"]
        )
        pending, _ = client.wait_final(pending_serial)
        assert pending["status"] == "2"
        assert pending["allElectronicInvoiceNumber"] != done["allElectronicInvoiceNumber"]
        assert client.issue("KEEP-1")["code"] == "E9106"
        client.close()
    finally:
        assert second.stop() == 0


def test_faults_are_injected_counted_and_configurable(tmp_path: Path) -> None:
    sb = Sandbox(tmp_path / "state.db", "--fault-5xx", "1", "--issue-delay-ms", "0")
    client = Client(sb.url, timeout=2)
    try:
        response = client.send(ISSUE, order("F-5XX"))
        assert response.status_code == 503 and "text/html" in response.headers["content-type"]

        sb.admin("/_sandbox/config", {"fault_5xx": 0, "fault_garbage": 1})
        garbage = client.send(ISSUE, order("F-GARBAGE"))
        assert garbage.status_code == 200
        with pytest.raises(ValueError):
            garbage.json()

        sb.admin("/_sandbox/config", {"fault_garbage": 0, "fault_lost_response": 1})
        with pytest.raises(httpx.TransportError):  # the connection drops, no answer
            client.send(ISSUE, order("F-LOST"))
        sb.admin("/_sandbox/config", {"fault_lost_response": 0, "latency_ms": 300})
        started = time.monotonic()
        assert client.issue("F-LOST")["code"] == "E9106"  # …but it was acted on
        assert time.monotonic() - started >= 0.3

        sb.admin("/_sandbox/config", {"latency_ms": 0, "fault_timeout": 1})
        with pytest.raises(httpx.ReadTimeout):
            client.send(ISSUE, order("F-TIMEOUT"), timeout=0.5)

        listed = {row["orderNo"] for row in sb.admin("/_sandbox/invoices")}
        assert listed == {"F-LOST"}  # 5xx, garbage and timeout did not act
        stats = sb.admin("/_sandbox/stats")
        assert stats["faults"] == {"5xx": 1, "garbage": 1, "lost_response": 1, "timeout": 1}
        assert stats["by_method"][ISSUE] == 5
        refused = httpx.post(sb.url + "/_sandbox/config", json={"fault_5xx": 2}, timeout=5)
        assert refused.status_code == 400
    finally:
        client.close()
        assert sb.stop() == 0  # promptly, although a "timeout" request is still stalled


def test_seeded_faults_repeat_exactly(tmp_path: Path) -> None:
    patterns = []
    for run in range(2):
        sb = Sandbox(tmp_path / f"s{run}.db", "--fault-5xx", "0.5", "--seed", "42")
        client = Client(sb.url)
        patterns.append([client.send(QUERY, {"serialNos": ["1"]}).status_code for _ in range(16)])
        client.close()
        assert sb.stop(signal.SIGINT) == 0
    assert patterns[0] == patterns[1] and set(patterns[0]) == {200, 503}


async def test_programmatic_start_on_port_zero(tmp_path: Path) -> None:
    options = SandboxOptions(
        app_key=APP_KEY,
        app_secret=SECRET,
        seller_tax_numbers=(SELLER,),
        state_path=tmp_path / "state.db",
        port=0,
        runtime=RuntimeConfig(issue_delay_ms=0),
    )
    running = await start_sandbox(options)
    try:
        assert running.port > 0 and running.url.endswith(f":{running.port}")
        async with httpx.AsyncClient(base_url=running.url) as http:
            assert (await http.get("/_sandbox/health")).json()["status"] == "ok"
    finally:
        await running.stop()


def test_confirmation_expiry_paper_kinds_retry_and_listing(tmp_path: Path) -> None:
    """The §2.11 extras on their own process: they move the clock and change the config."""
    sb = Sandbox(tmp_path / "state.db", "--issue-delay-ms", "0")
    client = Client(sb.url)
    try:
        # Slips that need the buyer: 02 → buyer agrees → 04 → red issued automatically.
        sb.admin("/_sandbox/config", {"red_requires_confirmation": True})
        blue, _ = client.wait_final(client.issue("X-BLUE")["result"]["invoiceSerialNum"])
        slip_body = {
            "blueInvoiceLine": "pc", "applySource": "0",
            "blueElecInvoiceNumber": blue["allElectronicInvoiceNumber"], "sellerTaxNo": SELLER,
            "sellerName": "沙箱销方", "buyerName": blue["payerName"],
            "buyerTaxNo": blue["payerTaxNo"], "redReason": "1", "orderNo": "X-RED-1",
            "detail": [{
                "blueDetailIndex": "1", "goodsName": "电脑", "goodsCode": "1090511030000000000",
                "num": "-1", "taxExcludedPrice": "2742.48", "taxExcludedAmount": "-2742.48",
                "taxAmount": "-356.52", "taxRate": "0.13",
            }],
        }  # fmt: skip
        first = client.call("nuonuo.OpeMplatform.saveInvoiceRedConfirm", slip_body)["result"]
        slips = {s["billId"]: s for s in sb.admin("/_sandbox/slips")}
        assert slips[first]["billStatus"] == "02" and slips[first]["openStatus"] == "0"
        confirmed = sb.admin(f"/_sandbox/slips/{first}/confirm", {"agree": True})
        assert confirmed["billStatus"] == "04" and confirmed["invoiceSerialNum"]
        red, _ = client.wait_final(confirmed["invoiceSerialNum"])
        assert red["exTaxAmount"] == "-2742.48"

        # A second slip nobody confirms dies after 72 h; the token (24 h) dies with the clock.
        second = client.call(
            "nuonuo.OpeMplatform.saveInvoiceRedConfirm", slip_body | {"orderNo": "X-RED-2"}
        )["result"]
        sb.admin("/_sandbox/clock", {"advance_seconds": 72 * 3600 + 1})
        assert client.call(QUERY, {"orderNos": ["X-BLUE"]})["code"] == "070301"
        client._token = None
        slip = client.call(
            "nuonuo.OpeMplatform.queryInvoiceRedConfirm", {"identity": "0", "billId": second}
        )["list"][0]
        assert slip["billStatus"] == "07"
        sb.admin("/_sandbox/config", {"red_requires_confirmation": False})

        # Paper 数电 (ec): voidable with its paper code and number; red needs fastInvoiceRed.
        paper, _ = client.wait_final(
            client.issue("X-PAPER", invoiceLine="ec")["result"]["invoiceSerialNum"]
        )
        assert len(paper["invoiceNo"]) == 8 and len(paper["invoiceCode"]) == 12
        void = {"invoiceId": paper["serialNo"], "invoiceCode": paper["invoiceCode"],
                "invoiceNo": paper["invoiceNo"]}  # fmt: skip
        assert client.call("nuonuo.electronInvoice.invoiceCancellation", void)["code"] == "E0000"
        assert client.call(QUERY, {"orderNos": ["X-PAPER"]})["result"][0]["status"] == "3"

        paper2, _ = client.wait_final(
            client.issue("X-PAPER2", invoiceLine="ec")["result"]["invoiceSerialNum"]
        )
        bill_id = client.call(
            "nuonuo.OpeMplatform.saveInvoiceRedConfirm",
            slip_body | {"blueInvoiceLine": "ec", "redReason": "2", "orderNo": "X-RED-3",
                         "detail": None,
                         "blueElecInvoiceNumber": paper2["allElectronicInvoiceNumber"]},
        )["result"]  # fmt: skip
        time.sleep(0.05)
        slip = client.call(
            "nuonuo.OpeMplatform.queryInvoiceRedConfirm", {"identity": "0", "billId": bill_id}
        )["list"][0]
        assert slip["billStatus"] == "01" and slip["openStatus"] == "0"  # paper: no auto issue
        fast = client.call(
            "nuonuo.OpeMplatform.fastInvoiceRed",
            {"orderNo": "X-RED-3", "taxNum": SELLER, "billNo": slip["billNo"],
             "billUuid": slip["billUuid"], "elecInvoiceNumber": slip["blueElecInvoiceNumber"]},
        )  # fmt: skip
        assert fast["code"] == "E0000"
        red3, _ = client.wait_final(fast["result"]["invoiceSerialNum"])
        assert (red3["status"], red3["orderAmount"]) == ("2", "-6198.00")

        # reInvoice: a failed invoice is retried under the same serial.
        sb.admin("/_sandbox/config", {"fault_issue_fail": 1})
        serial = client.issue("X-RETRY")["result"]["invoiceSerialNum"]
        failed, _ = client.wait_final(serial)
        assert failed["status"] == "22"
        sb.admin("/_sandbox/config", {"fault_issue_fail": 0})
        retried = client.call("nuonuo.OpeMplatform.reInvoice", {"fpqqlsh": serial})
        assert retried["code"] == "E0000"
        assert client.wait_final(serial)[0]["status"] == "2"
        # 开票重试 doc: an issued invoice is not retried ("发票已生成，无需再重试开票").
        again = client.call("nuonuo.OpeMplatform.reInvoice", {"fpqqlsh": serial})
        assert again["code"] != "E0000" and "无需再重试" in again["describe"]
        # 24 (开票成功签章失败) exists too: number and date, never retried.
        sb.admin("/_sandbox/config", {"fault_sign_failed": 1})
        sealed = client.issue("X-SEAL")["result"]["invoiceSerialNum"]
        sign_failed, _ = client.wait_final(sealed)
        sb.admin("/_sandbox/config", {"fault_sign_failed": 0})
        assert (
            sign_failed["status"] == "24" and len(sign_failed["allElectronicInvoiceNumber"]) == 20
        )
        assert sign_failed["invoiceTime"] and sign_failed["failCause"]
        refused = client.call("nuonuo.OpeMplatform.reInvoice", {"fpqqlsh": sealed})
        assert "无需再重试" in refused["describe"]

        listing = client.call("nuonuo.OpeMplatform.queryInvoiceList", {"pageSize": "50"})
        assert listing["result"]["total"] == len(sb.admin("/_sandbox/invoices"))
    finally:
        client.close()
        assert sb.stop() == 0
