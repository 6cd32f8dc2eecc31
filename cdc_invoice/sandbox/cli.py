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
It serves the same two endpoints as the real platform, so the daemon only needs another
base URL and credentials:
  POST /accessToken                       token (50 per app per 30 days, 24 h each)
  POST /open/v1/services?senid&nonce&timestamp&appkey
                                          signed calls: requestBillingNew, queryInvoiceResult,
                                          reInvoice, deliveryInvoice, invoiceCancellation,
                                          saveInvoiceRedConfirm, queryInvoiceRedConfirm,
                                          fastInvoiceRed, confirmInfoCancel, queryInvoiceList

\b
It is strict: it verifies X-Nuonuo-Sign over the exact body, the timestamp (±300 s) and
the token; rejects duplicate order numbers (E9106), line tax errors over 0.06 (E9131),
ex + tax != incl (E9130), bad discount pairs, missing codes; fails invoices whose total tax
is off by more than 1.27 or that exceed the monthly quota (status 22); issues 20-digit
数电 numbers after --issue-delay-ms (status 20 -> 21 -> 2). State lives in --state and
survives restarts. Test helpers live under /_sandbox/ (invoices, stats, config, clock).

\b
The app secret is read from --app-secret-file or ${SECRET_ENV}
(never from argv). Prints "sandbox listening on http://HOST:PORT" once ready;
SIGTERM/SIGINT stop it cleanly. The four gateway fault rates are exclusive and must
add up to at most 1. Codes the real platform does not document are assumptions:
070301 bad/expired token, 070302 bad signature or stale timestamp (see
cdc_invoice/sandbox/codes.py for the full list).

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
    help="Share of accepted invoices that end in status 22.",
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
    monthly_quota: Decimal,
    rate_limit_per_s: float,
    token_ttl_s: int,
    token_limit: int,
    tls_cert: Path | None,
    tls_key: Path | None,
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
