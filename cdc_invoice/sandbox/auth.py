"""Token issuance (§2.2) and gateway request authentication (§2.3, §2.4).

Gateway checks, in order: Content-Type → appkey known (070101) → senid/nonce/timestamp present and
the signature verifies over the body exactly as received, decoded as UTF-8 (070601 签名不匹配,
as the real sandbox answers: jellyfrank/nuonuo-sdk docs/sandbox-validation.md) → timestamp
within ±``timestamp_window_s`` of the real clock (070601) → accessToken issued to this app and not
expired on the sandbox clock (070301) → method known (070303).

ASSUMPTION: 070301 (token), 070303 (method) and 070601 for a stale timestamp are our choice — the
real codes are undocumented. See codes.py for the full list.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Container, Mapping
from dataclasses import dataclass

from cdc_invoice.providers.nuonuo import signing
from cdc_invoice.sandbox import codes
from cdc_invoice.sandbox.lifecycle import Clock
from cdc_invoice.sandbox.model import Rejection
from cdc_invoice.sandbox.options import TOKEN_WINDOW_S, SandboxOptions
from cdc_invoice.sandbox.store import Store, Token


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated gateway request."""

    app_key: str
    user_tax: str
    method: str
    content: str  # the body, decoded: what was signed


@dataclass(frozen=True, slots=True)
class TokenError:
    code: str
    description: str

    def to_json(self) -> dict[str, str]:
        return {"error": self.code, "error_description": self.description}


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


class Auth:
    def __init__(self, options: SandboxOptions, store: Store, clock: Clock) -> None:
        self._options = options
        self._store = store
        self._clock = clock
        self.apps = {options.app_key: options.app_secret}

    def issue_token(self, content_type: str, form: Mapping[str, str]) -> Token | TokenError:
        if media_type(content_type) != "application/x-www-form-urlencoded":
            return TokenError(codes.TOKEN_BAD_CONTENT_TYPE, "Incorrect content-type")
        if form.get("grant_type") != "client_credentials":
            # A self-use app only has the client-credentials grant; the ISV grants are refused.
            return TokenError(codes.TOKEN_BAD_APP_TYPE, "Incorrect appType")
        app_key = form.get("client_id", "")
        secret = self.apps.get(app_key)
        if secret is None:
            return TokenError(codes.TOKEN_BAD_CLIENT_ID, "Incorrect clientId")
        # bytes: compare_digest refuses non-ASCII str, and secrets may well be non-ASCII
        if not secrets.compare_digest(form.get("client_secret", "").encode(), secret.encode()):
            return TokenError(codes.TOKEN_BAD_SECRET, "Incorrect clientSecret")
        now = self._clock.now()
        recent = sum(
            1 for t in self._store.tokens_of(app_key) if t.issued_at > now - TOKEN_WINDOW_S
        )
        if recent >= self._options.token_limit:
            return TokenError(
                codes.TOKEN_LIMIT,
                f"token requests exceeded {self._options.token_limit} per 30 days",
            )
        # Earlier tokens stay valid until they expire: daemons sharing one token keep working.
        token = Token(
            token=secrets.token_hex(16).upper(),
            app_key=app_key,
            issued_at=now,
            expires_at=now + self._options.token_ttl_s,
        )
        self._store.save_token(token)
        return token

    def check_gateway(
        self,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        methods: Container[str],
    ) -> Caller | Rejection:
        if media_type(headers.get("Content-Type", "")) != "application/json":
            return Rejection(codes.BAD_CONTENT_TYPE, "Content-Type必须为application/json")
        app_key = query.get("appkey", "")
        secret = self.apps.get(app_key)
        if secret is None:
            return Rejection(codes.UNKNOWN_APP, "获取app密钥失败或appkey无效")
        senid, nonce, timestamp = (query.get(k, "") for k in ("senid", "nonce", "timestamp"))
        signature = headers.get("X-Nuonuo-Sign", "")
        if not (senid and nonce and timestamp.isdigit() and signature):
            return Rejection(
                codes.BAD_SIGNATURE, "签名不匹配:缺少senid/nonce/timestamp或X-Nuonuo-Sign"
            )
        try:
            content = body.decode("utf-8")
        except UnicodeDecodeError:
            return Rejection(codes.BAD_SIGNATURE, "签名不匹配:报文不是UTF-8编码")
        if not signing.verify(
            signature,
            app_secret=secret,
            app_key=app_key,
            senid=senid,
            nonce=nonce,
            timestamp=timestamp,
            content=content,
        ):
            return Rejection(codes.BAD_SIGNATURE, "签名不匹配")
        # Real time, not the sandbox clock: clients sign with their own wall clock.
        if abs(time.time() - int(timestamp)) > self._options.timestamp_window_s:
            return Rejection(
                codes.BAD_SIGNATURE,
                f"签名不匹配:timestamp与服务器时间相差超过{self._options.timestamp_window_s}秒",
            )
        token = self._store.tokens.get(headers.get("accessToken", ""))
        if token is None or token.app_key != app_key or token.expires_at <= self._clock.now():
            return Rejection(codes.TOKEN_INVALID, "accessToken无效或已过期")
        method = headers.get("method", "")
        if method not in methods:
            return Rejection(codes.UNKNOWN_METHOD, f"method[{method}]不存在或未授权")
        return Caller(
            app_key=app_key,
            user_tax=headers.get("userTax", ""),
            method=method,
            content=content,
        )
