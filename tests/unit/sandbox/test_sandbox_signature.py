"""Signature: the published vectors (reference §2.4) and the sandbox's gateway checks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdc_invoice.providers.nuonuo import signing
from cdc_invoice.sandbox import codes
from cdc_invoice.sandbox.auth import Auth, Caller, TokenError
from cdc_invoice.sandbox.lifecycle import Clock
from cdc_invoice.sandbox.model import Rejection
from cdc_invoice.sandbox.options import SandboxOptions
from cdc_invoice.sandbox.store import Store, Token

VECTOR_2_CONTENT = (
    '{"taxNo":"91140100586192037X","customerOrderNo":"NN20200922114058tIRje367477953",'
    '"amount":"2000.0","subject":"扫码支付","returnUrl":"","billingType":"0",'
    '"sn":"1809CA884901","sellerNote":"zhyw廉生","deptId":"8F0095616A17484DAD2C17925C04B78E",'
    '"timeExpire":"15","appKey":"nPjzeluO"}'
)


@pytest.mark.parametrize(
    ("secret", "key", "senid", "nonce", "ts", "content", "expected"),
    [
        (
            "SD886A11B0EE428F",
            "SD58292829",
            "20200918125249803",
            "2124",
            "1600404769",
            '{"invoiceCode": "11111","invoiceNo": "2222","inTaxAmount": "","exTaxAmount": ""}',
            "Cb6YthKcFJ5oXtV6HRllGmAs2g0=",
        ),
        (
            "430367F22509482D",
            "nPjzeluO",
            "44dc89d9e6f0425e8ecabeaf57708459",
            "496648396",
            "1600746050",
            VECTOR_2_CONTENT,
            "A7MIBwspggk6mx+PqbUPiPq0u8U=",
        ),
        ("secret", "app", "a" * 32, "12345678", "1700000000", '{"name":"中文"}',
         "4BzcKzrcoqxPis0W/W3X2ae0uIo="),
    ],
)  # fmt: skip
def test_published_vectors_verify(
    secret: str, key: str, senid: str, nonce: str, ts: str, content: str, expected: str
) -> None:
    kwargs = dict(
        app_secret=secret, app_key=key, senid=senid, nonce=nonce, timestamp=ts, content=content
    )
    assert signing.verify(expected, **kwargs)
    assert not signing.verify(expected, **(kwargs | {"content": content + " "}))
    assert not signing.verify(expected, **(kwargs | {"app_secret": secret.lower() + "x"}))


SELLER = "339902999999789113"
METHODS = {"nuonuo.OpeMplatform.requestBillingNew"}


@pytest.fixture
def auth(tmp_path: Path) -> Iterator[tuple[Auth, Store]]:
    store = Store(tmp_path / "s.db")
    options = SandboxOptions(
        app_key="app", app_secret="sec", seller_tax_numbers=(SELLER,), state_path=tmp_path
    )
    now = time.time()
    store.save_token(Token("TOK", "app", now, now + 3600))
    store.save_token(Token("OLD", "app", now - 7200, now - 1))
    yield Auth(options, store, Clock(store)), store
    store.close()


def signed(body: str = '{"order":{}}', **changes: str) -> tuple[dict[str, str], dict[str, str]]:
    query = {"senid": "b" * 32, "nonce": "87654321", "timestamp": str(int(time.time()))}
    query["appkey"] = "app"
    sig = signing.sign(
        app_secret="sec",
        app_key="app",
        senid=query["senid"],
        nonce=query["nonce"],
        timestamp=query["timestamp"],
        content=body,
    )
    headers = {
        "Content-Type": "application/json; charset=UTF-8",
        "X-Nuonuo-Sign": sig,
        "accessToken": "TOK",
        "userTax": SELLER,
        "method": "nuonuo.OpeMplatform.requestBillingNew",
    }
    for key, value in changes.items():
        (query if key in query else headers)[key] = value
    return query, headers


def test_a_correctly_signed_request_passes(auth: tuple[Auth, Store]) -> None:
    query, headers = signed('{"name":"中文"}')
    caller = auth[0].check_gateway(query, headers, '{"name":"中文"}'.encode(), METHODS)
    assert isinstance(caller, Caller) and caller.user_tax == SELLER


@pytest.mark.parametrize(
    ("changes", "body", "code"),
    [
        ({"Content-Type": "text/plain"}, None, codes.BAD_CONTENT_TYPE),
        ({"appkey": "other"}, None, codes.UNKNOWN_APP),
        ({"X-Nuonuo-Sign": "Cb6YthKcFJ5oXtV6HRllGmAs2g0="}, None, codes.BAD_SIGNATURE),
        ({"nonce": ""}, None, codes.BAD_SIGNATURE),
        ({}, b'{"order":{} }', codes.BAD_SIGNATURE),  # one byte more than what was signed
        ({}, b"\xff\xfe", codes.BAD_SIGNATURE),  # not UTF-8
        ({"accessToken": "NOPE"}, None, codes.TOKEN_INVALID),
        ({"accessToken": "OLD"}, None, codes.TOKEN_INVALID),  # expired
        ({"method": "nuonuo.OpeMplatform.nothing"}, None, codes.UNKNOWN_METHOD),
    ],
)
def test_gateway_rejections(
    auth: tuple[Auth, Store], changes: dict[str, str], body: bytes | None, code: str
) -> None:
    query, headers = signed(**changes)
    result = auth[0].check_gateway(query, headers, body or b'{"order":{}}', METHODS)
    assert isinstance(result, Rejection) and result.code == code


def test_stale_timestamp_is_rejected_even_when_signed(auth: tuple[Auth, Store]) -> None:
    body = '{"order":{}}'
    stale = str(int(time.time()) - 301)
    query, headers = signed(body, timestamp=stale)
    headers["X-Nuonuo-Sign"] = signing.sign(
        app_secret="sec", app_key="app", senid=query["senid"], nonce=query["nonce"],
        timestamp=stale, content=body,
    )  # fmt: skip
    result = auth[0].check_gateway(query, headers, body.encode(), METHODS)
    assert isinstance(result, Rejection) and result.code == codes.BAD_SIGNATURE
    assert "300" in result.describe


def form(**changes: str) -> dict[str, str]:
    return {
        "client_id": "app",
        "client_secret": "sec",
        "grant_type": "client_credentials",
    } | changes


@pytest.mark.parametrize(
    ("content_type", "data", "code"),
    [
        ("application/json", form(), codes.TOKEN_BAD_CONTENT_TYPE),
        ("application/x-www-form-urlencoded", form(client_id="x"), codes.TOKEN_BAD_CLIENT_ID),
        ("application/x-www-form-urlencoded", form(client_secret="x"), codes.TOKEN_BAD_SECRET),
        ("application/x-www-form-urlencoded", form(grant_type="refresh_token"), "070307"),
    ],
)
def test_token_errors(
    auth: tuple[Auth, Store], content_type: str, data: dict[str, str], code: str
) -> None:
    result = auth[0].issue_token(content_type, data)
    assert isinstance(result, TokenError) and result.code == code
    assert set(result.to_json()) == {"error", "error_description"}


def test_fifty_tokens_per_thirty_days(auth: tuple[Auth, Store]) -> None:
    issuer, store = auth
    ct = "application/x-www-form-urlencoded;charset=UTF-8"
    issued = [issuer.issue_token(ct, form()) for _ in range(48)]  # 2 exist already
    assert all(isinstance(t, Token) for t in issued)
    limited = issuer.issue_token(ct, form())
    assert isinstance(limited, TokenError) and limited.code == codes.TOKEN_LIMIT
    # Earlier tokens stay valid: several daemons may share one.
    assert isinstance(issued[0], Token) and issued[0].token in store.tokens
