"""The sandbox's HTTP face (aiohttp): the two Nuonuo endpoints plus /_sandbox/* for tests.

Protocol endpoints:
  POST /accessToken                 form: client_id, client_secret, grant_type=client_credentials
  POST /open/v1/services?senid&nonce&timestamp&appkey   signed JSON, method in the header
Test endpoints (not part of the platform; no auth — bind the sandbox to localhost):
  GET  /_sandbox/invoices[?orderNo=&serial=&number=]   everything issued, as a test asserts on it
  GET  /_sandbox/slips                                  red-letter slips
  POST /_sandbox/slips/{billId}/confirm {"agree": bool}  the buyer answers a 02 slip
  POST /_sandbox/slips/buyer {"blueInvoiceNumber", "redReason", "detail"?}
                                                        the buyer starts a slip (status 03)
  GET  /_sandbox/callbacks                              callbacks sent (with --callback-url)
  GET|POST /_sandbox/config                             runtime knobs (options.RuntimeConfig)
  GET  /_sandbox/stats                                  calls by method / code, faults injected,
                                                        ``throttled`` (calls over rate_limit_per_s)
  POST /_sandbox/clock {"advance_seconds": N}           move the sandbox clock forward
  GET  /_sandbox/files/{serial}.{pdf|ofd|xml|jpg}       the invoice files (files.py)
  GET  /_sandbox/health
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections import Counter
from typing import Any

from aiohttp import web

from cdc_invoice.sandbox import codes, files
from cdc_invoice.sandbox.api import Envelope, Platform, rejected
from cdc_invoice.sandbox.auth import Auth, TokenError, media_type
from cdc_invoice.sandbox.callbacks import CallbackSender
from cdc_invoice.sandbox.faults import (
    ERROR_503_HTML,
    ERROR_504_HTML,
    GARBAGE_BODY,
    FaultInjector,
)
from cdc_invoice.sandbox.lifecycle import Clock
from cdc_invoice.sandbox.model import ISSUED, VOIDED, Invoice, Rejection
from cdc_invoice.sandbox.options import RuntimeConfig, SandboxOptions
from cdc_invoice.sandbox.ratelimit import SlidingWindow
from cdc_invoice.sandbox.store import Store
from cdc_invoice.sandbox.views import listing_item

MAX_BODY = 16 * 1024 * 1024  # 2000 invoice lines fit with room to spare


def _dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=_dumps(data), status=status, content_type="application/json", charset="utf-8"
    )


class SandboxServer:
    """Owns the state and the aiohttp application; ``start_sandbox`` runs it."""

    def __init__(self, options: SandboxOptions) -> None:
        options.runtime.validate()
        self.options = options
        self.store = Store(options.state_path)
        self.clock = Clock(self.store)
        self.config = RuntimeConfig(**{k: getattr(options.runtime, k) for k in _CONFIG_FIELDS})
        self.faults = FaultInjector(options.seed)
        self.auth = Auth(options, self.store, self.clock)
        self.scheme = "https" if options.tls_cert else "http"
        self.base_url = f"{self.scheme}://{options.host}:{options.port}"
        self.platform = Platform(
            options, self.store, self.clock, self.config, self.faults, lambda: self.base_url
        )
        self.callbacks: CallbackSender | None = None
        if options.callback_url:
            self.callbacks = CallbackSender(
                options.callback_url, self.store, self.platform.advance, lambda: self.base_url
            )
        self.by_method: Counter[str] = Counter()
        self.by_code: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.rate_window = SlidingWindow()
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.add_routes(
            [
                web.post("/accessToken", self.access_token),
                web.post("/open/v1/services", self.gateway),
                web.get("/_sandbox/invoices", self.list_invoices),
                web.get("/_sandbox/slips", self.list_slips),
                web.post("/_sandbox/slips/buyer", self.buyer_slip),
                web.post("/_sandbox/slips/{bill_id}/confirm", self.confirm_slip),
                web.get("/_sandbox/callbacks", self.list_callbacks),
                web.get("/_sandbox/config", self.get_config),
                web.post("/_sandbox/config", self.set_config),
                web.get("/_sandbox/stats", self.get_stats),
                web.post("/_sandbox/clock", self.advance_clock),
                web.get("/_sandbox/files/{name}", self.file),
                web.get("/_sandbox/health", self.health),
            ]
        )

    # -- protocol -----------------------------------------------------------------------------
    async def access_token(self, request: web.Request) -> web.Response:
        self.counts["token_requests"] += 1
        content_type = request.headers.get("Content-Type", "")
        form: dict[str, str] = {}
        if media_type(content_type) == "application/x-www-form-urlencoded":
            form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        result = self.auth.issue_token(content_type, form)
        if isinstance(result, TokenError):
            self.by_code[result.code] += 1
            return _json(result.to_json())
        await self.store.commit()
        self.counts["tokens_issued"] += 1
        return _json({"access_token": result.token, "expires_in": str(self.options.token_ttl_s)})

    async def gateway(self, request: web.Request) -> web.StreamResponse:
        self.counts["gateway_requests"] += 1
        self.by_method[request.headers.get("method", "")] += 1
        self.rate_window.observe()
        if not self.rate_window.allow(
            request.query.get("appkey", ""), self.config.rate_limit_per_s
        ):
            # Over the app's limit: refused before anything else, not acted on (ratelimit.py).
            self.by_code[codes.THROTTLED] += 1
            return _json(envelope_throttled())
        fault = self.faults.decide(self.config)
        # Network latency: half on the way in, half on the way back, after the platform acted —
        # so a client that dies while waiting leaves an invoice behind, as in real life.
        half = self.config.latency_ms / 2000
        if half:
            await asyncio.sleep(half)
        if fault == "5xx":
            return web.Response(status=503, text=ERROR_503_HTML, content_type="text/html")
        if fault == "timeout":
            await asyncio.sleep(self.config.timeout_fault_s)
            return web.Response(status=504, text=ERROR_504_HTML, content_type="text/html")
        if fault == "garbage":
            return web.Response(status=200, text=GARBAGE_BODY, content_type="application/json")
        body = await request.read()
        caller = self.auth.check_gateway(
            request.query, request.headers, body, self.platform.handlers
        )
        env: Envelope
        if isinstance(caller, Rejection):
            env = rejected(caller)
        else:
            env = await self.platform.call(caller)
        self.by_code[env["code"]] += 1
        if fault == "lost_response":
            # The platform acted and committed; the answer never arrives (outcome unknown).
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # aiohttp drops the request without writing
        if half:
            await asyncio.sleep(half)
        return _json(env)

    # -- test endpoints -----------------------------------------------------------------------
    async def list_invoices(self, request: web.Request) -> web.Response:
        self.platform.advance()
        await self.store.commit()
        query = request.query
        candidates: list[Invoice | None]
        if "serial" in query:  # indexed look-ups first: chaos runs poll this with big states
            candidates = [self.store.invoices.get(query["serial"])]
        elif "number" in query:
            candidates = [self.store.invoice_by_number(query["number"])]
        elif "orderNo" in query:
            sellers = self.options.seller_tax_numbers
            candidates = [self.store.invoice_by_order(s, query["orderNo"]) for s in sellers]
        else:
            candidates = list(self.store.invoices.values())  # insertion order = acceptance order
        wanted = [(_FILTERS[k], v) for k, v in query.items() if k in _FILTERS]
        status_of = self.platform.lifecycle.status
        rows = [
            listing_item(inv, status_of(inv))
            for inv in candidates
            if inv is not None and all(getattr(inv, attr) == v for attr, v in wanted)
        ]
        return _json(rows)

    async def list_slips(self, _request: web.Request) -> web.Response:
        self.platform.advance()
        await self.store.commit()
        red = self.platform.red
        return _json([red.view(s) for s in self.store.slips.values()])

    async def confirm_slip(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        agree = body.get("agree", True) if isinstance(body, dict) else None
        if not isinstance(agree, bool):
            return _json({"error": 'body must be {"agree": true|false}'}, 400)
        try:
            slip = self.platform.red.buyer_confirms(request.match_info["bill_id"], agree)
        except KeyError:
            return _json({"error": "no such slip"}, 404)
        except ValueError as exc:
            return _json({"error": str(exc)}, 409)
        await self.store.commit()
        return _json(self.platform.red.view(slip))

    async def buyer_slip(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _json({"error": 'body must be {"blueInvoiceNumber", "redReason"}'}, 400)
        try:
            slip = self.platform.red.buyer_applies(
                str(body.get("blueInvoiceNumber", "")),
                str(body.get("redReason", "1")),
                body.get("detail"),
            )
        except KeyError:
            return _json({"error": "no issued blue invoice with this number"}, 404)
        except ValueError as exc:
            return _json({"error": str(exc)}, 409)
        await self.store.commit()
        return _json(self.platform.red.view(slip))

    async def list_callbacks(self, _request: web.Request) -> web.Response:
        return _json(self.callbacks.delivered if self.callbacks else [])

    async def get_config(self, _request: web.Request) -> web.Response:
        return _json(self.config.to_json())

    async def set_config(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _json({"error": "body must be a JSON object of settings"}, 400)
        try:
            self.config.update(body)
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        return _json(self.config.to_json())

    async def get_stats(self, _request: web.Request) -> web.Response:
        self.platform.advance()
        await self.store.commit()
        status_of = self.platform.lifecycle.status
        by_status = Counter(status_of(inv) for inv in self.store.invoices.values())
        return _json(
            {
                **self.counts,
                "by_method": dict(self.by_method),
                "by_code": dict(self.by_code),
                "faults": dict(self.faults.injected),
                "throttled": self.rate_window.throttled,
                "peak_calls_per_s": self.rate_window.peak,
                "invoices_by_status": dict(by_status),
                "invoices": len(self.store.invoices),
                "slips": len(self.store.slips),
                "sqlite_commits": self.store.commits,
            }
        )

    async def advance_clock(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        seconds = body.get("advance_seconds") if isinstance(body, dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            return _json({"error": 'body must be {"advance_seconds": N} with N >= 0'}, 400)
        self.clock.advance(float(seconds))
        self.platform.advance()
        await self.store.commit()
        return _json({"offset_seconds": self.clock.offset, "now": self.clock.now()})

    async def file(self, request: web.Request) -> web.Response:
        serial, _, ext = request.match_info["name"].partition(".")
        invoice = self.store.invoices.get(serial)
        if (
            ext not in files.CONTENT_TYPES
            or invoice is None
            or invoice.status not in (ISSUED, VOIDED)
        ):
            raise web.HTTPNotFound()
        return web.Response(body=files.render(invoice, ext), content_type=files.CONTENT_TYPES[ext])

    async def health(self, _request: web.Request) -> web.Response:
        return _json({"status": "ok", "code": codes.OK})


_FILTERS = {"orderNo": "order_no", "serial": "serial", "number": "number"}


def envelope_throttled() -> Envelope:
    return {"code": codes.THROTTLED, "describe": "请求过于频繁，请稍后再试"}


_CONFIG_FIELDS = tuple(RuntimeConfig.__dataclass_fields__)


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"{}")
    except ValueError:
        return None


class RunningSandbox:
    """A started sandbox: ``url`` to talk to, ``server`` for in-process inspection."""

    def __init__(self, server: SandboxServer, runner: web.AppRunner, port: int) -> None:
        self.server = server
        self.port = port
        self.url = server.base_url
        # the real token host differs from the gateway (创建应用 doc); the sandbox serves both
        self.token_url = f"{self.url}/accessToken"
        self._runner = runner

    async def stop(self) -> None:
        if self.server.callbacks is not None:
            await self.server.callbacks.stop()
        await self._runner.cleanup()
        self.server.store.close()


async def start_sandbox(options: SandboxOptions) -> RunningSandbox:
    """Open the state file, bind (port 0 picks a free port) and serve until ``stop()``."""
    server = SandboxServer(options)
    # Short shutdown grace: in-flight "timeout" faults would otherwise hold a stop for 60 s.
    runner = web.AppRunner(server.app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    ssl_context = None
    if options.tls_cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(options.tls_cert, options.tls_key)
    site = web.TCPSite(runner, options.host, options.port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        server.store.close()
        raise
    port = int(runner.addresses[0][1])
    host = f"[{options.host}]" if ":" in options.host else options.host
    server.base_url = f"{server.scheme}://{host}:{port}"
    if server.callbacks is not None:
        server.callbacks.start()
    return RunningSandbox(server, runner, port)
