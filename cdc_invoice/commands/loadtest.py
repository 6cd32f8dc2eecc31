"""`cdc-invoice loadtest`: completes synthetic orders through an attached source and measures
how fast, and how soon after each commit, the running daemon records their invoices.

Point it at a staging copy of the inventory database whose daemon talks to the sandbox (or a
platform test account): every synthetic order gets a real invoice from whatever platform that
daemon is configured for.

The tool cannot know the inventory schema, so the user says how to complete one order:

--complete-sql   SQL run in its own transaction per order, exactly as the application would
                 complete one, returning one row whose first column is the order key. It may use
                 %(n)s (1..N, this order's number) and %(run)s (a tag unique to this run);
                 a literal % is written %%.
                 This exercises the whole path: the source's trigger, its document view, the
                 NOTIFY, the daemon and the platform.
--replay         No SQL: clones the document snapshot of the source's most recent issue request
                 into N new requests (order_ref 'loadtest-RUN-n'), one per transaction. Measures
                 the daemon and the platform only (capture is skipped); needs INSERT on
                 cdc_invoice.request.

Latency is commit -> cdc_invoice.invoice.recorded_at, on the database's clock (the local clock
is corrected by its measured offset from the server's).

Platform limits (issue 17) are reported alongside: the orders seen waiting for throttling or
for a seller paused for quota (from the queue), and, with ``--metrics URL`` (each daemon's
/metrics), the throttling answers, deferrals and quota pauses the daemons counted meanwhile.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import click
import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cdc_invoice.commands.common import dsn_option
from cdc_invoice.errors import CdcInvoiceError

REPLAY_SQL = """
INSERT INTO cdc_invoice.request (source, order_ref, kind, document)
SELECT %(source)s, %(order_ref)s, 'issue',
       (SELECT jsonb_agg(jsonb_set(e, '{order_ref}', to_jsonb(%(order_ref)s::text)))
          FROM jsonb_array_elements(%(document)s::jsonb) e)
RETURNING order_ref
"""
TEMPLATE_SQL = """
SELECT document::text FROM cdc_invoice.request
 WHERE source = %s AND kind = 'issue' AND document IS NOT NULL
   AND json_array_length(document::json) > 0
 ORDER BY id DESC LIMIT 1
"""
PROGRESS_SQL = """
SELECT r.order_ref, r.state, extract(epoch FROM min(i.recorded_at))::float8, max(r.last_error),
       max(r.error_code)
  FROM cdc_invoice.request r
  LEFT JOIN cdc_invoice.invoice i ON i.request_id = r.id
 WHERE r.source = %s AND r.kind = 'issue' AND r.order_ref = ANY(%s)
 GROUP BY r.order_ref, r.state
"""


THROTTLED_CODE = "E9429"  # providers/nuonuo/codes.py THROTTLED (an assumption)
QUOTA_CODE = "QUOTA_PAUSED"  # errors.SellerPaused
# Counters summed over every --metrics URL, before and after the run.
LIMIT_COUNTERS = {
    "cdc_invoice_platform_throttled_total": "platform throttles",
    "cdc_invoice_requests_deferred_total": "deferrals (throttle, quota)",
    "cdc_invoice_quota_probes_total": "quota probes",
}


class LoadtestError(CdcInvoiceError):
    """The load test could not run as asked."""


@dataclass
class Outcome:
    committed: dict[str, float] = field(default_factory=dict)  # order_ref -> commit (db clock)
    recorded: dict[str, float] = field(default_factory=dict)  # order_ref -> recorded_at
    failed: dict[str, str] = field(default_factory=dict)  # order_ref -> last error
    first_commit: float = 0.0
    last_commit: float = 0.0
    late: int = 0  # commits that fell more than 50 ms behind the schedule
    throttled: set[str] = field(default_factory=set)  # seen waiting after throttling
    quota_paused: set[str] = field(default_factory=set)  # seen waiting for a quota pause
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)
    paused_sellers: set[str] = field(default_factory=set)  # seen paused in the daemons' metrics


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def clock_offset(dsn: str) -> float:
    """Server clock minus local clock, in seconds (best of five round trips)."""
    best: tuple[float, float] | None = None
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(5):
            t0 = time.time()
            row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
            t1 = time.time()
            assert row is not None
            rtt = t1 - t0
            if best is None or rtt < best[0]:
                best = (rtt, float(row[0]) - (t0 + t1) / 2)
    assert best is not None
    return best[1]


def check_source(dsn: str, source: str) -> None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT 1 FROM cdc_invoice.source WHERE source = %s", (source,)
        ).fetchone()
    if row is None:
        raise LoadtestError(
            f"source {source!r} is not attached",
            hint="SELECT source FROM cdc_invoice.source; attach it with cdc_invoice.attach(...)",
        )


def replay_template(dsn: str, source: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(TEMPLATE_SQL, (source,)).fetchone()
    if row is None:
        raise LoadtestError(
            f"source {source!r} has no captured order to replay",
            hint="complete one real order first, or use --complete-sql",
        )
    return str(row[0])


async def _complete(
    dsn: str,
    *,
    orders: int,
    rate: float | None,
    connections: int,
    statement: str,
    params: dict[str, Any],
    offset: float,
    out: Outcome,
    on_commit: Any,
) -> None:
    """Run ``statement`` once per order from ``connections`` connections, paced at ``rate``."""
    counter = iter(range(1, orders + 1))
    start = time.monotonic()

    async def worker() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            for n in counter:
                if rate:
                    delay = start + (n - 1) / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    elif delay < -0.05:
                        out.late += 1
                try:
                    cur = await conn.execute(statement, {**params, "n": n})
                    row = await cur.fetchone()
                    await conn.commit()
                except psycopg.Error as exc:
                    await conn.rollback()
                    raise LoadtestError(
                        f"order {n}: {str(exc).strip()}",
                        hint="the statement must complete one order and return its key",
                    ) from exc
                at = time.time() + offset
                if row is None or row[0] is None:
                    raise LoadtestError(
                        f"order {n}: the statement returned no order key",
                        hint="end it with RETURNING <order key> (or SELECT it)",
                    )
                out.committed[str(row[0])] = at
                out.first_commit = out.first_commit or at
                out.last_commit = max(out.last_commit, at)
                on_commit()

    await asyncio.gather(*(worker() for _ in range(max(1, min(connections, orders)))))


def _poll(dsn: str, source: str, out: Outcome) -> None:
    waiting = [r for r in out.committed if r not in out.recorded and r not in out.failed]
    if not waiting:
        return
    with psycopg.connect(dsn, autocommit=True) as conn:
        for ref, state, recorded_at, error, code in conn.execute(PROGRESS_SQL, (source, waiting)):
            if code == THROTTLED_CODE:
                out.throttled.add(str(ref))
            elif code == QUOTA_CODE:
                out.quota_paused.add(str(ref))
            if recorded_at is not None:
                out.recorded[str(ref)] = float(recorded_at)
            elif state in ("failed", "cancelled"):
                out.failed[str(ref)] = str(error or state)


def scrape(urls: list[str], out: Outcome) -> dict[str, float]:
    """Sum LIMIT_COUNTERS over the daemons' /metrics; note sellers seen paused for quota."""
    totals = dict.fromkeys(LIMIT_COUNTERS, 0.0)
    for url in urls:
        try:
            text = httpx.get(url, timeout=5).text
        except httpx.HTTPError as exc:
            raise LoadtestError(
                f"cannot read {url}: {exc}",
                hint="pass each daemon's /metrics URL (daemon.metrics_listen), or drop --metrics",
            ) from exc
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in totals:
                    totals[sample.name] += sample.value
                elif sample.name == "cdc_invoice_seller_quota_paused" and sample.value > 0:
                    out.paused_sellers.add(sample.labels.get("seller_id", "?"))
    return totals


def run_loadtest(
    dsn: str,
    source: str,
    orders: int,
    *,
    rate: float | None,
    complete_sql: str | None,
    connections: int,
    timeout: float,
    console: Console,
    metrics: list[str] | None = None,
) -> Outcome:
    check_source(dsn, source)
    urls = list(metrics or [])
    run = secrets.token_hex(3)
    params: dict[str, Any] = {"run": run, "source": source}
    if complete_sql is None:
        params["document"] = replay_template(dsn, source)
        statement = REPLAY_SQL.replace("%(order_ref)s", "('loadtest-' || %(run)s || '-' || %(n)s)")
    else:
        statement = complete_sql
    offset = clock_offset(dsn)
    out = Outcome()
    if urls:
        out.metrics_before = scrape(urls, out)
    with Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        done_task = progress.add_task("committed", total=orders)
        inv_task = progress.add_task("invoiced", total=orders)

        async def drive() -> None:
            completing = asyncio.create_task(
                _complete(
                    dsn,
                    orders=orders,
                    rate=rate,
                    connections=connections,
                    statement=statement,
                    params=params,
                    offset=offset,
                    out=out,
                    on_commit=lambda: progress.advance(done_task),
                )
            )
            deadline: float | None = None
            while True:
                await asyncio.sleep(0.5)
                await asyncio.to_thread(_poll, dsn, source, out)
                if urls:
                    await asyncio.to_thread(scrape, urls, out)
                progress.update(
                    inv_task,
                    completed=len(out.recorded),
                    description=f"invoiced ({len(out.failed)} failed)"
                    if out.failed
                    else "invoiced",
                )
                if completing.done():
                    completing.result()  # raises the completer's error, if any
                    if deadline is None:
                        deadline = time.monotonic() + timeout
                    if len(out.recorded) + len(out.failed) >= len(out.committed):
                        return
                    if time.monotonic() > deadline:
                        return

        asyncio.run(drive())
    if urls:
        out.metrics_after = scrape(urls, out)
    return out


def report(out: Outcome, orders: int, rate: float | None, console: Console) -> None:
    lat = [(out.recorded[r] - c) * 1000 for r, c in out.committed.items() if r in out.recorded]
    missing = len(out.committed) - len(out.recorded) - len(out.failed)
    span = (max(out.recorded.values()) - out.first_commit) if out.recorded else float("nan")
    commit_span = out.last_commit - out.first_commit
    table = Table("", "value", title="cdc-invoice loadtest", show_header=False)
    table.add_row("orders completed", f"{len(out.committed)}/{orders}")
    if commit_span > 0:
        asked = f" (asked {rate:g}/s)" if rate else ""
        table.add_row("completion rate", f"{len(out.committed) / commit_span:.1f}/s{asked}")
    if out.late:
        table.add_row("commits > 50 ms behind schedule", str(out.late))
    table.add_row("invoices recorded", str(len(out.recorded)))
    table.add_row("failed", str(len(out.failed)))
    if missing:
        table.add_row("[red]not recorded before the timeout[/]", str(missing))
    if out.recorded and span > 0:
        table.add_row("throughput", f"{len(out.recorded) / span:.1f} invoices/s")
    if lat:
        table.add_row(
            "latency commit -> recorded",
            f"p50 {_percentile(lat, 50):.0f} ms, p90 {_percentile(lat, 90):.0f} ms, "
            f"p99 {_percentile(lat, 99):.0f} ms, max {max(lat):.0f} ms",
        )
    table.add_row("orders waiting on throttling", str(len(out.throttled)))
    table.add_row("orders waiting on a quota pause", str(len(out.quota_paused)))
    for name, label in LIMIT_COUNTERS.items():
        if out.metrics_after:
            delta = out.metrics_after[name] - out.metrics_before.get(name, 0.0)
            table.add_row(f"{label} (metrics)", f"{delta:.0f}")
    if out.metrics_after:
        paused = ", ".join(sorted(out.paused_sellers)) or "none"
        table.add_row("sellers paused for quota (metrics)", paused)
    console.print(table)
    for ref, error in list(out.failed.items())[:5]:
        console.print(f"[red]failed[/] {ref}: {error}")


@click.command()
@dsn_option
@click.option("--source", required=True, help="the attached source (cdc_invoice.source)")
@click.option("--orders", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="orders per second, steady (default: as fast as the connections go)",
)
@click.option(
    "--complete-sql",
    default=None,
    help="SQL that completes one order and returns its key; %(n)s and %(run)s allowed",
)
@click.option(
    "--complete-sql-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="the same, read from a file",
)
@click.option(
    "--replay",
    is_flag=True,
    help="no SQL: clone the source's latest captured document into new requests",
)
@click.option(
    "--connections",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="connections completing orders",
)
@click.option(
    "--timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="seconds to wait for invoices after the last order",
)
@click.option(
    "--metrics",
    "metrics",
    multiple=True,
    metavar="URL",
    help="a daemon's /metrics URL (repeat for each daemon): report throttling and quota "
    "pauses counted during the run",
)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def loadtest(
    dsn: str,
    source: str,
    orders: int,
    rate: float | None,
    complete_sql: str | None,
    complete_sql_file: str | None,
    replay: bool,
    connections: int,
    timeout: float,
    metrics: tuple[str, ...],
    yes: bool,
) -> None:
    """Complete ORDERS synthetic orders through SOURCE; report throughput and latency.

    \b
    Run it against a STAGING copy with a running daemon whose platform is the sandbox:
      cdc-invoice loadtest --dsn "$STAGING" --source shop --orders 2000 --rate 100 \\
        --complete-sql "UPDATE orders SET status = 'shipped' WHERE id = (SELECT id FROM orders
                        WHERE status = 'new' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                        RETURNING id"
    Exit status 0 only if every order's invoice was recorded.
    """
    if complete_sql_file:
        with open(complete_sql_file, encoding="utf-8") as f:
            complete_sql = f.read()
    if (complete_sql is None) == (not replay):
        raise click.UsageError("give exactly one of --complete-sql(-file) or --replay")
    console = Console(highlight=False)
    if not yes:
        click.confirm(
            f"Complete {orders} synthetic orders in source {source!r}? Each gets a real "
            "invoice from the platform the running daemon uses",
            abort=True,
        )
    out = run_loadtest(
        dsn,
        source,
        orders,
        rate=rate,
        complete_sql=complete_sql,
        connections=connections,
        timeout=timeout,
        console=console,
        metrics=list(metrics),
    )
    report(out, orders, rate, console)
    ok = len(out.recorded) == len(out.committed) == orders and not out.failed
    raise SystemExit(0 if ok else 1)


COMMANDS = [loadtest]
