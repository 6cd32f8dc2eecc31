"""Targeted database-link faults, each with one daemon and the chaos proxy in front of the test
database: the cases the random run can only hit by luck, made deterministic.

The proxy's ``hold`` restore models a stateful firewall or NAT that lost the flow: the old
connections stay silent for good (our kernel ACKs, so TCP keepalives see nothing wrong) while new
connections work. Only a client-side timeout gets a daemon out of that.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from cdc_invoice import demo, harness

from .proxy import TcpProxy

pytestmark = [pytest.mark.db, pytest.mark.e2e, pytest.mark.chaos]


@pytest.fixture
def link(shop_dsn: str) -> Iterator[tuple[TcpProxy, str]]:
    proxy, dsn = TcpProxy.for_dsn(shop_dsn)
    yield proxy, dsn
    proxy.close()


@pytest.fixture
def sb(tmp_path: Path) -> Iterator[harness.Sandbox]:
    sandbox = harness.start_sandbox(tmp_path / "sandbox", issue_delay_ms=100)
    yield sandbox
    sandbox.proc.stop()


def done_count(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM cdc_invoice.request WHERE state = 'done'"
        ).fetchone()
        return int(row[0]) if row else 0


def wait_done(dsn: str, n: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    got = done_count(dsn)
    while got < n and time.monotonic() < deadline:
        time.sleep(0.25)
        got = done_count(dsn)
    return got


def start(
    tmp_path: Path,
    dsn: str,
    sb: harness.Sandbox,
    name: str,
    *,
    timeout_seconds: float = 2.0,
    pool_size: int = 4,
    **settings: object,
) -> harness.Proc:
    settings = {"poll_interval": 0.5, "lease_seconds": 10.0, "result_poll_seconds": 0.2, **settings}
    config = harness.write_config(
        tmp_path / f"{name}.toml",
        dsn=dsn,
        sandbox=sb,
        daemon=settings,
        timeout_seconds=timeout_seconds,
    )
    env = {"CDC_INVOICE_DATABASE__POOL_SIZE": str(pool_size)}
    return harness.start_daemon(config, name=name, env=env)


def test_link_cut_then_restored_the_daemon_carries_on(
    tmp_path: Path, shop_dsn: str, link: tuple[TcpProxy, str], sb: harness.Sandbox
) -> None:
    """Control case: a cut link (connections reset) is survived without a restart."""
    proxy, dsn = link
    daemon = start(tmp_path, dsn, sb, "cut")
    try:
        demo.ship_orders(shop_dsn, 2)
        assert wait_done(shop_dsn, 2, 30) == 2, daemon.output()[-3000:]
        proxy.cut()
        demo.ship_orders(shop_dsn, 3)
        time.sleep(3)
        proxy.forward()
        assert wait_done(shop_dsn, 5, 45) == 5, daemon.output()[-3000:]
        assert daemon.alive()
    finally:
        daemon.stop()


def test_stalled_connections_do_not_hang_a_running_daemon(
    tmp_path: Path, shop_dsn: str, link: tuple[TcpProxy, str], sb: harness.Sandbox
) -> None:
    proxy, dsn = link
    daemon = start(tmp_path, dsn, sb, "stalled")
    try:
        demo.ship_orders(shop_dsn, 2)
        assert wait_done(shop_dsn, 2, 30) == 2, daemon.output()[-3000:]
        proxy.half_open()
        time.sleep(3)  # the claim loop (every 0.5 s) is now inside a query that goes nowhere
        proxy.forward(on_restore="hold")  # new connections work, the stalled ones never will
        demo.ship_orders(shop_dsn, 3)
        got = wait_done(shop_dsn, 5, 60)
        assert daemon.alive()
        assert got == 5, f"{5 - got} orders not invoiced 60 s after the link came back"
    finally:
        daemon.kill()


def test_daemon_started_during_a_half_open_link_comes_up_or_exits(
    tmp_path: Path, shop_dsn: str, link: tuple[TcpProxy, str], sb: harness.Sandbox
) -> None:
    proxy, dsn = link
    proxy.half_open()
    daemon = start(tmp_path, dsn, sb, "halfopen-start")
    try:
        time.sleep(2)
        proxy.forward(on_restore="hold")
        demo.ship_orders(shop_dsn, 1)
        # Acceptable: it gets through, or it exits with a clear error and the supervisor
        # (systemd Restart=always; here: this test) starts it again. Not acceptable: silence.
        deadline = time.monotonic() + 45
        while done_count(shop_dsn) < 1 and time.monotonic() < deadline:
            if not daemon.alive():
                assert "cannot reach the database" in daemon.output(), daemon.output()[-2000:]
                daemon = start(tmp_path, dsn, sb, "halfopen-restart")
            time.sleep(0.25)
        assert done_count(shop_dsn) == 1, "daemon silent:\n" + daemon.output()[-2000:]
    finally:
        daemon.kill()


def test_database_lost_after_the_platform_accepted_is_an_expected_condition(
    tmp_path: Path, shop_dsn: str, link: tuple[TcpProxy, str], sb: harness.Sandbox
) -> None:
    proxy, dsn = link
    sb.configure(latency_ms=1500)  # the platform holds the issue call 1.5 s, then acts
    # A pool bigger than the claims that fail while the link is down: the answer of the
    # platform then meets an idle pooled connection that the cut has killed.
    daemon = start(tmp_path, dsn, sb, "blip", timeout_seconds=4.0, lease_seconds=12.0, pool_size=10)
    try:
        demo.ship_orders(shop_dsn, 1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            stats = httpx.get(f"{sb.url}/_sandbox/stats", timeout=5).json()
            if stats["by_method"].get("nuonuo.OpeMplatform.requestBillingNew"):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the issue call never reached the platform:\n" + daemon.output())
        proxy.cut()  # the call is in flight; its answer will find no database
        time.sleep(2.5)
        proxy.forward()
        assert wait_done(shop_dsn, 1, 45) == 1, daemon.output()[-3000:]
        assert len(sb.invoices()) == 1  # adopted, not issued twice: that part holds
        assert daemon.alive()
        assert "unexpected error" not in daemon.output(), daemon.output()[-4000:]
    finally:
        daemon.stop()
