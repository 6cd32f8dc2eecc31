"""Peak season against the platform's limits (issue 17), with real processes: two daemons
under a shared request cap against a sandbox that throttles below it, and a seller whose
monthly quota runs out and is raised again."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner

from cdc_invoice import demo, harness
from cdc_invoice.cli import main

Start = Callable[..., harness.Proc]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """start(dsn, sandbox, name, provider={...}, **daemon) -> Proc; all stopped at the end."""
    procs: list[harness.Proc] = []

    def run(
        dsn: str, sb: harness.Sandbox, name: str, provider: dict[str, Any], **daemon: Any
    ) -> harness.Proc:
        config = harness.write_config(
            tmp_path / f"{name}.toml", dsn=dsn, sandbox=sb, daemon=daemon, provider=provider
        )
        proc = harness.start_daemon(config, name=name)
        procs.append(proc)
        return proc

    yield run
    for p in procs:
        p.stop()


def stats(sb: harness.Sandbox) -> dict[str, Any]:
    return dict(httpx.get(f"{sb.url}/_sandbox/stats", timeout=10).json())


def states(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT state, count(*) FROM cdc_invoice.request GROUP BY 1").fetchall()
    return {str(s): int(n) for s, n in rows}


def test_two_daemons_under_a_shared_cap_absorb_a_lower_platform_limit(
    shop_dsn: str, sandbox: harness.Sandbox, start: Start
) -> None:
    cap = 12.0
    sandbox.configure(rate_limit_per_s=5)  # the platform allows less than we were told
    procs = [
        start(shop_dsn, sandbox, f"d{i}", {"max_requests_per_second": cap}, concurrency=16)
        for i in (1, 2)
    ]
    orders = demo.ship_orders(shop_dsn, 60, connections=4)
    done, failed = demo.wait_for_requests(shop_dsn, 60, 150.0, progress=False)
    assert (done, failed) == (60, 0), [p.output()[-2000:] for p in procs]
    s = stats(sandbox)
    assert s["throttled"] > 0, s  # the limit was hit, and absorbed: nothing failed
    # Both daemons together never started more than the shared cap in any second.
    assert s["peak_calls_per_s"] <= cap, s
    assert demo.verify_invoices(shop_dsn, orders, sandbox) == []
    at_platform = sandbox.invoices()
    assert len(at_platform) == 60 and {i["status"] for i in at_platform} == {"2"}
    with psycopg.connect(shop_dsn) as conn:
        # throttling is not failure: no request was counted as retried for it
        assert conn.execute(
            "SELECT count(*) FROM cdc_invoice.request WHERE retries > 0"
        ).fetchone() == (0,)


def test_quota_exhausted_pauses_the_seller_and_it_resumes_once_raised(
    shop_dsn: str, sandbox: harness.Sandbox, start: Start, tmp_path: Path
) -> None:
    proc = start(
        shop_dsn, sandbox, "daemon", {"quota_probe_seconds": 1.0}, metrics_listen="127.0.0.1:0"
    )
    first = demo.ship_orders(shop_dsn, 3)
    assert demo.wait_for_requests(shop_dsn, 3, 60.0, progress=False) == (3, 0)
    sandbox.configure(monthly_quota="1")  # what the month allows is used up
    later = demo.ship_orders(shop_dsn, 12, connections=2)
    # The platform fails invoices for quota (status 22); none is parked as failed.
    t0 = time.monotonic()
    while time.monotonic() - t0 < 20.0:
        at_platform = sandbox.invoices()
        if any(i["status"] == "22" for i in at_platform):
            break
        time.sleep(0.2)
    time.sleep(3.0)  # a few probe intervals while paused
    now = states(shop_dsn)
    assert now.get("failed", 0) == 0 and now.get("done", 0) == 3, now
    assert any(i["status"] == "22" for i in sandbox.invoices())
    # The pause is visible: metric, /healthz, cdc-invoice status.
    url = re.search(r"metrics at (http://\S+)/metrics", proc.output())
    assert url, proc.output()
    text = httpx.get(url.group(1) + "/metrics", timeout=10).text
    assert 'cdc_invoice_seller_quota_paused{seller_id="main"} 1.0' in text
    health = httpx.get(url.group(1) + "/healthz", timeout=10).json()
    assert (
        health["checks"]["quota"]["status"] == "warn"
        and "main" in health["checks"]["quota"]["detail"]
    )
    status = CliRunner().invoke(main, ["status", "--dsn", shop_dsn, "--json"])
    assert status.exit_code == 0, status.output
    [waiting] = json.loads(status.output)["waiting"]
    assert waiting["error_code"] == "QUOTA_PAUSED" and waiting["requests"] == 12, waiting
    assert "发票总额度" in waiting["hint"]
    result = CliRunner().invoke(
        main, ["health", "--config", str(tmp_path / "daemon.toml"), "--json"]
    )
    quota = {c["name"]: c for c in json.loads(result.output)["checks"]}["quota"]
    assert quota["status"] == "warn" and "source shop: 12" in quota["detail"], quota
    sandbox.configure(monthly_quota="100000000")  # raised
    done, failed = demo.wait_for_requests(shop_dsn, 15, 120.0, progress=False)
    assert (done, failed) == (15, 0), proc.output()[-3000:]
    assert demo.verify_invoices(shop_dsn, first + later, sandbox) == []
    at_platform = sandbox.invoices()
    # No burned numbers: one invoice per order, the failed ones re-submitted under their serial.
    assert len(at_platform) == 15 and {i["status"] for i in at_platform} == {"2"}, at_platform
    assert stats(sandbox)["by_method"].get("nuonuo.OpeMplatform.reInvoice", 0) >= 1


COMPLETE_SQL = """
WITH o AS (INSERT INTO shop.orders (customer_id, status, shipped_at)
           VALUES ('C001', 'shipped', now()) RETURNING order_id),
     l AS (INSERT INTO shop.order_lines (order_id, line_no, sku, quantity, unit_price)
           SELECT order_id, 1, 'P-MOUSE', 2, 79.90 FROM o)
SELECT order_id FROM o
"""


def test_loadtest_reports_throttling_next_to_rate_and_latency(
    shop_dsn: str, sandbox: harness.Sandbox, start: Start
) -> None:
    sandbox.configure(rate_limit_per_s=3)
    proc = start(shop_dsn, sandbox, "daemon", {}, metrics_listen="127.0.0.1:0")
    t0 = time.monotonic()
    while not (url := re.search(r"metrics at (http://\S+)/metrics", proc.output())):
        assert time.monotonic() - t0 < 20, proc.output()
        time.sleep(0.1)
    args = ["loadtest", "--dsn", shop_dsn, "--source", "shop", "--yes", "--timeout", "60"]
    args += ["--orders", "15", "--rate", "30", "--complete-sql", COMPLETE_SQL]
    result = CliRunner().invoke(main, [*args, "--metrics", url.group(1) + "/metrics"])
    assert result.exit_code == 0, result.output
    assert "15/15" in result.output and "p99" in result.output
    throttles = re.search(r"platform throttles \(metrics\)\s*\S\s*(\d+)", result.output)
    assert throttles and int(throttles.group(1)) > 0, result.output
    assert re.search(r"sellers paused for quota \(metrics\)\s*\S\s*none", result.output)
    assert "orders waiting on a quota pause" in result.output
