"""Nuonuo transport: token requests, the signed gateway envelope (§2.3, §2.4) and error mapping.

This module and its HTTP engine (transport.py) are the only ones that see httpx. Transport
failures and non-protocol answers become ``cdc_invoice.errors`` exceptions here, once, chosen
by one question: could the platform have acted on the request? If nothing was sent (connect
failures) or the call only reads (queries, tokens), the answer is ProviderUnavailable; if a
creating call was sent and no protocol answer came back, it is OutcomeUnknown, so the daemon
queries by order number before trying again.

Business codes are not mapped here: ``call`` returns them as an ``Answer`` so the adapter can
refresh the token or treat "not found" as empty before it turns the rest into errors.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import logging
import math
import secrets
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import metadata
from typing import Any, Final
from urllib.parse import urlencode

import httpx

from cdc_invoice.errors import (
    OutcomeUnknown,
    ProviderAuthError,
    ProviderError,
    ProviderThrottled,
    ProviderUnavailable,
)
from cdc_invoice.providers.nuonuo import codes, signing
from cdc_invoice.providers.nuonuo.token import CachedToken, Clock
from cdc_invoice.providers.nuonuo.transport import AiohttpTransport


class _NoCookies(http.cookiejar.CookieJar):
    """The gateway is stateless: a cookie it set would only carry state from one call (or one
    seller) to the next, and parsing Set-Cookie on every answer cost CPU."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


logger = logging.getLogger(__name__)

# The token host is not the gateway host (创建应用.md: POST https://open.nuonuo.com/accessToken;
# arion/node-nuonuo uses it with the sandbox gateway too). Our sandbox serves {its url}/accessToken,
# which a sandbox user names explicitly.
TOKEN_URL: Final = "https://open.nuonuo.com/accessToken"  # noqa: S105 - a URL, not a password
DEFAULT_TOKEN_LIFETIME: Final = 86_400.0  # the documented default when expires_in is unusable
# What to do after a creating call whose answer was lost (the adapter passes a method's own).
DEFAULT_UNKNOWN_HINT: Final = "query by order number before issuing again"

# Failures that happen before the request leaves this process: the platform cannot have acted.
_NOT_SENT: Final = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
)


def _version() -> str:
    try:
        return metadata.version("cdc-invoice")
    except metadata.PackageNotFoundError:
        return "0"


DEFAULT_USER_AGENT: Final = f"cdc-invoice/{_version()} httpx/{httpx.__version__}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """A self-use app's key and secret (one per seller). The secret never appears in a repr."""

    app_key: str
    app_secret: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(app_key={self.app_key!r}, app_secret=<hidden>)"


@dataclass(frozen=True, slots=True)
class Answer:
    """A protocol answer from the gateway: ``{"code", "describe", "result"}``.

    ``extra`` keeps any other top-level keys: some methods answer outside ``result`` (the
    queryInvoiceRedConfirm doc puts ``total`` and ``list`` next to ``code``).
    """

    code: str
    describe: str
    result: object
    extra: Mapping[str, object] = field(default_factory=dict)


def dumps(content: Mapping[str, object]) -> str:
    """The body, serialised once: compact and UTF-8 (not \\u escapes), as the platform signs it."""
    return json.dumps(content, ensure_ascii=False, separators=(",", ":"))


def _redact(text: str, *hidden: str) -> str:
    # Defence in depth: some transport errors quote header values (h11 on an illegal header).
    for value in hidden:
        if value:
            text = text.replace(value, "<redacted>")
    return text


def _ssl_context(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    if isinstance(verify, str):  # a CA bundle path (httpx 0.28 deprecates passing paths)
        return ssl.create_default_context(cafile=verify)
    return verify


class NuonuoClient:
    """One keep-alive connection pool for the token endpoint and the gateway.

    :param base_url: e.g. ``https://sdk.nuonuo.com`` or ``http://127.0.0.1:8708`` (the sandbox);
        the gateway is ``{base_url}/open/v1/services``.
    :param token_url: defaults to the documented ``https://open.nuonuo.com/accessToken`` (创建应用
        doc), whatever the gateway; our sandbox's is ``{sandbox url}/accessToken``.
    :param timeout: seconds for each of connect / read / write / pool wait; a whole exchange is
        additionally capped at three times this, so a server that drips bytes cannot hold a call.
    :param transport: for tests (``httpx.MockTransport``); ``verify`` is then ignored. By
        default aiohttp sends (``transport.AiohttpTransport``).
    """

    def __init__(
        self,
        *,
        base_url: str,
        token_url: str | None = None,
        timeout: float = 10.0,
        max_connections: int = 64,
        verify: bool | str | ssl.SSLContext = True,
        max_response_bytes: int = 2_000_000,
        user_agent: str = DEFAULT_USER_AGENT,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = time.time,
    ) -> None:
        base = base_url.rstrip("/")
        self.gateway_url = httpx.URL(base + signing.GATEWAY_PATH)
        self.token_url = httpx.URL(token_url or TOKEN_URL)
        self._max_response_bytes = max_response_bytes
        self._deadline = timeout * 3
        self._clock = clock
        # httpx is the API; aiohttp sends (transport.py): httpcore's pool, which walks every
        # connection and queued request on each request (encode/httpcore#1035), and its
        # pure-Python layers were a fifth to a third of the daemon's CPU.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            transport=transport
            or AiohttpTransport(
                max_connections=max_connections,
                verify=_ssl_context(verify),
                total_timeout=self._deadline,
            ),
            headers={"User-Agent": user_agent, "Accept": "application/json"},
            # a redirected POST could be replayed elsewhere: treat it as an error
            follow_redirects=False,
            cookies=_NoCookies(),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------ token

    async def fetch_token(self, credentials: Credentials) -> CachedToken:
        """Ask the platform for a new access token (uses one of the 50 per 30 days)."""
        form = urlencode(
            {
                "client_id": credentials.app_key,
                "client_secret": credentials.app_secret,
                "grant_type": "client_credentials",
            }
        )
        request = self._http.build_request(
            "POST",
            self.token_url,
            content=form.encode("utf-8"),
            headers={"Content-Type": "application/x-www-form-urlencoded;charset=UTF-8"},
        )
        what = "accessToken"
        hidden = (credentials.app_secret,)
        status, body, ctype = await self._exchange(
            request, what=what, mutating=False, hidden=hidden
        )
        payload = _json(body)
        if isinstance(payload, dict):
            error = payload.get("error")
            if error:
                code = str(error)
                describe = _redact(str(payload.get("error_description") or ""), *hidden)
                raise ProviderAuthError(
                    f"{what}: {code} {describe}".rstrip(),
                    code=code,
                    hint=codes.HINTS.get(code, codes.HINTS["070304"]),
                    method=what,
                )
            token = payload.get("access_token")
            if status < 300 and isinstance(token, str) and token:
                logger.info("fetched a new Nuonuo access token for app %s", _mask(credentials))
                return CachedToken(
                    access_token=token,
                    expires_at=self._clock() + _lifetime(payload.get("expires_in")),
                )
        raise ProviderUnavailable(
            f"{what}: unexpected answer (HTTP {status}, {ctype or 'no content type'}, "
            f"{len(body)} bytes)",
            method=what,
        )

    # ------------------------------------------------------------ gateway

    async def call(
        self,
        *,
        method: str,
        content: str,
        credentials: Credentials,
        access_token: str,
        user_tax: str,
        mutating: bool,
        order_no: str | None = None,
        unknown_hint: str = DEFAULT_UNKNOWN_HINT,
    ) -> Answer:
        """Send one signed gateway request whose body is exactly ``content`` (see ``dumps``).

        :param mutating: True if the method changes something on the platform (issue, red-letter
            slip, void): then a lost answer is OutcomeUnknown instead of ProviderUnavailable.
        :param order_no: the call's idempotency key, for the debug log only.
        :param unknown_hint: the OutcomeUnknown hint (how to find out whether the call acted).
        """
        hint = unknown_hint if mutating else None
        senid = uuid.uuid4().hex
        nonce = str(secrets.randbelow(90_000_000) + 10_000_000)  # 8 digits, no leading zero
        timestamp = str(int(self._clock()))
        signature = signing.sign(
            app_secret=credentials.app_secret,
            app_key=credentials.app_key,
            senid=senid,
            nonce=nonce,
            timestamp=timestamp,
            content=content,
            path=self.gateway_url.path,
        )
        request = self._http.build_request(
            "POST",
            self.gateway_url,
            params={
                "senid": senid,
                "nonce": nonce,
                "timestamp": timestamp,
                "appkey": credentials.app_key,
            },
            content=content.encode("utf-8"),
            headers={
                "Content-Type": "application/json; charset=UTF-8",
                "X-Nuonuo-Sign": signature,
                "accessToken": access_token,
                "userTax": user_tax,
                "method": method,
            },
        )
        started = time.perf_counter()
        outcome = "error"
        try:
            status, body, ctype = await self._exchange(
                request,
                what=method,
                mutating=mutating,
                hidden=(credentials.app_secret, access_token),
                hint=hint,
            )
            if status == 429:
                # HTTP's "Too Many Requests": refused, not acted on (docs/platform-assumptions.md)
                outcome = "429"
                raise ProviderThrottled(
                    f"{method}: HTTP 429 Too Many Requests", code="HTTP429", method=method
                )
            answer = _answer(status, body)
            if answer is None:
                error = OutcomeUnknown if mutating else ProviderUnavailable
                raise error(
                    f"{method}: unexpected answer (HTTP {status}, {ctype or 'no content type'}, "
                    f"{len(body)} bytes)",
                    method=method,
                    hint=hint,
                )
            outcome = answer.code
            # The describe text ends up in exceptions and the audit log: never let it echo secrets.
            describe = _redact(answer.describe, credentials.app_secret, access_token)
            return Answer(
                code=answer.code, describe=describe, result=answer.result, extra=answer.extra
            )
        finally:
            logger.debug(
                "nuonuo %s orderNo=%s %s in %.1f ms",
                method,
                order_no or "-",
                outcome,
                (time.perf_counter() - started) * 1000,
            )

    # ------------------------------------------------------------ the boundary

    async def _exchange(
        self,
        request: httpx.Request,
        *,
        what: str,
        mutating: bool,
        hidden: tuple[str, ...],
        hint: str | None = None,
    ) -> tuple[int, bytes, str]:
        """Send, read a bounded body, and map every transport failure: (status, body, type)."""
        after_send: type[ProviderError] = OutcomeUnknown if mutating else ProviderUnavailable
        host = request.url.host
        try:
            async with asyncio.timeout(self._deadline):
                response = await self._http.send(request, stream=True)
                try:
                    body = await self._read_bounded(response, what, after_send, hint)
                finally:
                    await response.aclose()
        except _NOT_SENT as exc:
            raise ProviderUnavailable(
                _redact(f"{what}: cannot reach {host}: {type(exc).__name__}: {exc}", *hidden),
                method=what,
                hint="check the base URL, the network and (for TLS errors) the CA bundle",
            ) from exc
        except httpx.RequestError as exc:
            raise after_send(
                _redact(f"{what}: no answer from {host}: {type(exc).__name__}: {exc}", *hidden),
                method=what,
                hint=hint,
            ) from exc
        except TimeoutError as exc:
            raise after_send(
                f"{what}: no complete answer from {host} within {self._deadline:g} s",
                method=what,
                hint=hint,
            ) from exc
        return response.status_code, body, response.headers.get("content-type", "")

    async def _read_bounded(
        self,
        response: httpx.Response,
        what: str,
        error: type[ProviderError],
        hint: str | None,
    ) -> bytes:
        limit = self._max_response_bytes
        too_large = error(
            f"{what}: answer larger than {limit} bytes (HTTP {response.status_code})",
            method=what,
            hint=hint,
        )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for chunk in response.aiter_bytes():  # decoded bytes: bounds gzip bombs too
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)


def _json(body: bytes) -> object:
    try:
        # Decimal for floats: amounts must never pass through binary floating point.
        return json.loads(body, parse_float=Decimal)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None


def _answer(status: int, body: bytes) -> Answer | None:
    """The protocol answer in ``body``, or None if this is not one (5xx, HTML, garbage…)."""
    if status >= 500:
        return None  # even with a JSON body: a failing gateway's word is not the platform's
    payload = _json(body)
    if not isinstance(payload, dict):
        return None
    code = payload.get("code")
    describe = payload.get("describe")
    if code is None and payload.get("error"):
        # The token family (0703xx) may come back in the token endpoint's shape.
        code, describe = payload.get("error"), payload.get("error_description")
    if code is None or isinstance(code, (dict, list, bool)) or str(code) == "":
        return None
    extra = {k: v for k, v in payload.items() if k not in ("code", "describe", "result")}
    return Answer(
        code=str(code), describe=str(describe or ""), result=payload.get("result"), extra=extra
    )


def _lifetime(expires_in: object) -> float:
    try:
        seconds = float(str(expires_in))
    except ValueError:
        return DEFAULT_TOKEN_LIFETIME
    return seconds if 0 < seconds < math.inf else DEFAULT_TOKEN_LIFETIME


def _mask(credentials: Credentials) -> str:
    # The app key is an identifier, not a secret, but logs need only enough to tell apps apart.
    return credentials.app_key[:4] + "…"
