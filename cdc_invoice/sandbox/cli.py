"""``cdc-invoice sandbox``: run a local platform that speaks the Nuonuo protocol, strictly."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

import click

from cdc_invoice.sandbox.options import (
    DEFAULT_MONTHLY_QUOTA,
    TOKEN_LIMIT,
    TOKEN_TTL_S,
    RuntimeConfig,
    SandboxOptions,
    parse_listen,
)
from cdc_invoice.sandbox.server import start_sandbox

SECRET_ENV = "CDC_INVOICE_SANDBOX_APP_SECRET"  # noqa: S105 - the variable's name

_HELP = f"""Run a local e-invoice platform that speaks the Nuonuo open-platform protocol.

\b
It serves the same endpoints as the real platform; the daemon needs its base URL, its token
URL ({{url}}/accessToken — the real one is https://open.nuonuo.com/accessToken) and credentials.
Each behaviour follows a Nuonuo doc page (ourworldcn/PowerLms 诺诺网接口/数电发票/…md) or a live
answer; what no source documents is an assumption (docs/platform-assumptions.md).

\b
  POST /accessToken       client_credentials token, 24 h, 50 per app per 30 days;
                          errors 070304/070305/070306/070307/070315      [创建应用.md]
  POST /open/v1/services?senid&nonce&timestamp&appkey
                          X-Nuonuo-Sign = HMAC-SHA1 over the exact body  [开放平台加密说明.md]
                          bad signature: 070601 签名不匹配  [nuonuo-sdk sandbox-validation.md]
                          bad/expired token 070301, timestamp ±300 s     [assumptions]
    requestBillingNew     E4000 for a missing/wrong field, E9106 duplicate orderNo, E9130,
                          E9131 (0.06 per line), discount pairs E9105-E9114, accepts the
                          example's "0" flags; status 20 -> 21 -> 2 after --issue-delay-ms,
                          22 on the 1.27 invoice rule or the monthly quota
                                                [1.…请求开具发票接口…md 返回码/请求示例]
    reInvoice             a 22 again under the same serial, E9613 after 20 [2.…开票重试…md]
    queryInvoiceResult    serialNos/orderNos ≤ 50, E9500/E9601/E9611     [4.…发票详情查询…md]
                          status 24 (issued, seal failed: the invoice exists, number and
                          date given) for a share --fault-sign-failed    [4.…发票详情查询…md]
    deliveryInvoice       E9999 for an unknown invoice                  [5.…发票重新交付…md]
    saveInvoiceRedConfirm 15 -> 01 (or 02 when red_requires_confirmation), blue number in
                          blueElecInvoiceNumber or a 20-digit blueInvoiceNumber
                                                           [红字确认单申请接口…md]
    queryInvoiceRedConfirm  code "0000", top-level total/list          [红字确认单查询接口…md]
    confirm               the seller's answer to a buyer slip (03 -> 04/06; 07 after 72 h
                          from its billTime), red invoice issued on 04   [红字确认单确认接口…md]
    fastInvoiceRed, confirmInfoCancel                  [3.…发票快捷冲红…md, 红字确认单撤销接口…md]
    invoiceCancellation (never for 数电 pc/bs), queryInvoiceList        [assumptions]
  --callback-url URL      opt-in: POST results there — FORM operater=callback, JSON
                          operater=redConfirmCallback   [回传开票结果对接文档V1.1.1 §一/§五]

\b
State lives in --state and survives restarts. Test helpers live under /_sandbox/
(invoices, slips, slips/buyer — the buyer starts a slip —, callbacks, stats, config, clock).
The app secret is read from --app-secret-file or ${SECRET_ENV}
(never from argv). Prints "sandbox listening on http://HOST:PORT" once ready;
SIGTERM/SIGINT stop it cleanly. The four gateway fault rates are exclusive and must
add up to at most 1. Codes the real platform does not document are listed in
cdc_invoice/sandbox/codes.py and docs/platform-assumptions.md.

\b
Example:
  echo s3cret > secret.txt
  cdc-invoice sandbox --listen 127.0.0.1:0 --state sandbox.db --app-key demo \\
      --app-secret-file secret.txt --seller-tax-number 339902999999789113 \\
      --issue-delay-ms 2000 --fault-lost-response 0.05 --seed 7
"""

_rate = click.FloatRange(0.0, 1.0)


def _read_secret(path: Path | None) -> str:
    if path is not None:
        secret = path.read_text(encoding="utf-8").strip()
        source = str(path)
    else:
        secret = os.environ.get(SECRET_ENV, "").strip()
        source = SECRET_ENV
    if not secret:
        raise click.UsageError(
            f"no app secret: pass --app-secret-file FILE or set {SECRET_ENV} ({source} is empty)"
        )
    return secret


def _quota(_ctx: click.Context, _param: click.Parameter, value: str) -> Decimal:
    try:
        quota = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not an amount") from None
    if not quota.is_finite() or quota < 0:
        raise click.BadParameter("must be a non-negative amount")
    return quota


@click.command("sandbox", help=_HELP)
@click.option(
    "--listen",
    default="127.0.0.1:8708",
    show_default=True,
    metavar="HOST:PORT",
    help="Address to bind; port 0 picks a free port (the real one is printed).",
)
@click.option(
    "--state",
    "state_path",
    required=True,
    metavar="FILE",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="SQLite file with the platform's state (created if missing).",
)
@click.option("--app-key", required=True, help="The app key clients sign with (appkey).")
@click.option(
    "--app-secret-file",
    metavar="FILE",
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
    help=f"File holding the app secret (else ${SECRET_ENV}).",
)
@click.option(
    "--seller-tax-number",
    "sellers",
    multiple=True,
    required=True,
    metavar="TAXNO",
    help="A seller registered on the platform (repeatable).",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Extra latency on every gateway call.",
)
@click.option(
    "--issue-delay-ms",
    type=click.FloatRange(min=0),
    default=500.0,
    show_default=True,
    help="Time from accepted to issued (status 20 -> 21 -> 2).",
)
@click.option(
    "--fault-5xx",
    type=_rate,
    default=0.0,
    show_default=True,
    help="Share of gateway calls answered 503 HTML, not acted on.",
)
@click.option(
    "--fault-timeout",
    type=_rate,
    default=0.0,
    show_default=True,
    help="Share of gateway calls stalled 60 s, not acted on.",
)
@click.option(
    "--fault-lost-response",
    type=_rate,
    default=0.0,
    show_default=True,
    help="Share of gateway calls acted on, then the connection is dropped.",
)
@click.option(
    "--fault-garbage",
    type=_rate,
    default=0.0,
    show_default=True,
    help="Share of gateway calls answered 200 with a non-JSON body, not acted on.",
)
@click.option(
    "--fault-issue-fail",
    type=_rate,
    default=0.0,
    show_default=True,
    help="Share of accepted invoices that end in status 22 (开票失败; reInvoice retries them).",
)
@click.option(
    "--fault-sign-failed",
    type=_rate,
    default=0.0,
    show_default=True,
    help="Share of invoices that end in status 24 (开票成功签章失败): issued, with number and "
    "date, the seal failed (发票详情查询 doc).",
)
@click.option(
    "--monthly-quota",
    default=str(DEFAULT_MONTHLY_QUOTA),
    show_default=True,
    callback=_quota,
    help="Per-seller monthly ceiling of ex-tax amounts (CNY).",
)
@click.option(
    "--rate-limit-per-s",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Gateway calls allowed per app key per second; more are answered E9429 (0: no limit).",
)
@click.option(
    "--token-ttl-s",
    type=click.IntRange(min=1),
    default=TOKEN_TTL_S,
    show_default=True,
    help="Lifetime of an access token.",
)
@click.option(
    "--token-limit",
    type=click.IntRange(min=1),
    default=TOKEN_LIMIT,
    show_default=True,
    help="Token requests allowed per app per 30 days (070306).",
)
@click.option(
    "--tls-cert",
    metavar="PEM",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Serve HTTPS with this certificate (chain) instead of HTTP.",
)
@click.option(
    "--tls-key",
    metavar="PEM",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The private key of --tls-cert.",
)
@click.option(
    "--callback-url",
    metavar="URL",
    help="Send result callbacks there (FORM callback, JSON redConfirmCallback); off by default.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the fault-injection RNG (same seed, same faults).",
)
def sandbox(
    listen: str,
    state_path: Path,
    app_key: str,
    app_secret_file: Path | None,
    sellers: tuple[str, ...],
    latency_ms: float,
    issue_delay_ms: float,
    fault_5xx: float,
    fault_timeout: float,
    fault_lost_response: float,
    fault_garbage: float,
    fault_issue_fail: float,
    fault_sign_failed: float,
    monthly_quota: Decimal,
    rate_limit_per_s: float,
    token_ttl_s: int,
    token_limit: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    callback_url: str | None,
    seed: int,
) -> None:
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    runtime = RuntimeConfig(
        latency_ms=latency_ms,
        issue_delay_ms=issue_delay_ms,
        fault_5xx=fault_5xx,
        fault_timeout=fault_timeout,
        fault_lost_response=fault_lost_response,
        fault_garbage=fault_garbage,
        fault_issue_fail=fault_issue_fail,
        fault_sign_failed=fault_sign_failed,
        monthly_quota=monthly_quota,
        rate_limit_per_s=rate_limit_per_s,
    )
    try:
        runtime.validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    options = SandboxOptions(
        app_key=app_key,
        app_secret=_read_secret(app_secret_file),
        seller_tax_numbers=sellers,
        state_path=state_path,
        host=host,
        port=port,
        seed=seed,
        token_ttl_s=token_ttl_s,
        token_limit=token_limit,
        runtime=runtime,
        tls_cert=tls_cert,
        tls_key=tls_key,
        callback_url=callback_url,
    )
    try:
        asyncio.run(_serve(options))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen}: {exc}") from None


async def _serve(options: SandboxOptions) -> None:
    running = await start_sandbox(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = running.server.store
    print(
        f"sandbox: state {options.state_path} ({len(store.invoices)} invoices), "
        f"sellers {', '.join(options.seller_tax_numbers)}",
        file=sys.stderr,
    )
    # The one stdout line tests wait for; flushed because stdout is a pipe there.
    print(f"sandbox listening on {running.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await running.stop()
