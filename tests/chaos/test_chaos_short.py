"""The short chaos run (CI): a few hundred orders through every fault, then the pass criteria.

``make chaos`` runs the full one (>= 10,000 orders, >= 50 SIGKILLs); see docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from cdc_invoice import harness
from cdc_invoice.daemon.drafts import draft_from_json, order_no
from cdc_invoice.invoice.model import Seller
from cdc_invoice.providers.nuonuo.adapter import NuonuoProvider
from cdc_invoice.providers.nuonuo.client import Credentials
from cdc_invoice.providers.nuonuo.token import MemoryTokenStore

from .run import SHORT, ChaosRun, run

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_short_chaos_run_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    result = run(SHORT, workdir=tmp_path / "chaos", results=tmp_path / "chaos-results.json")
    f = result.figures
    report = result.summary()

    # The faults really happened (a harness that injects nothing proves nothing).
    assert f["kills"] >= 2 * SHORT.kills_per_daemon, report
    assert min(f["kills_by_daemon"].values()) >= SHORT.kills_per_daemon, report
    assert f["pg_restarts"]["fast"] >= 1 and f["pg_restarts"]["immediate"] >= 1, report
    assert sum(f["pg_restarts"].values()) >= 3, report
    assert f["listen_terminated"] >= 1, report
    assert f["proxy_cuts"] >= 1 and f["proxy_half_opens"] >= 1, report
    assert f["sandbox_restarts"] >= 2, report
    assert sum(f["faults_injected"].values()) > 0, report
    assert f["shipper"].get("db_errors", 0) > 0, report  # the app saw the restarts too

    # The pass criteria.
    assert f["orders_completed"] >= 0.95 * SHORT.orders, report
    assert f["duplicates_platform"] == 0, report
    assert f["duplicates_local"] == 0, report
    assert f["lost"] == 0, report
    assert f["total_orders"] == f["total_local"] == f["total_platform"], report
    assert f["drain_seconds"] is not None, report
    assert result.passed, report


QUIET = replace(
    SHORT,
    orders=20,
    rate=20.0,
    kills_per_daemon=0,
    pg_restarts=0,
    listen_kills=0,
    cuts=0,
    half_opens=0,
    sandbox_restarts=0,
    fault_5xx=0.0,
    fault_timeout=0.0,
    fault_lost_response=0.0,
    fault_garbage=0.0,
)


def _plant_duplicates(chaos: ChaosRun) -> None:
    """What the faults never managed: a second invoice at the platform for one order (under
    another part number of its order number) and a second local invoice for another."""
    with psycopg.connect(chaos.dsn) as conn:
        rows = conn.execute(
            "SELECT r.platform_order_no, r.progress, i.id FROM cdc_invoice.request r "
            "JOIN cdc_invoice.invoice i ON i.request_id = r.id ORDER BY r.id LIMIT 2"
        ).fetchall()
        (base, progress, _), (_, _, other_invoice) = rows
        conn.execute(
            "INSERT INTO cdc_invoice.invoice (request_id, part, source, order_ref, seller_id, "
            "invoice_number, kind, platform_serial, platform_order_no, issued_at, buyer_name, "
            "total_excl_tax, total_tax, total_incl_tax) SELECT request_id, 9, source, order_ref, "
            "seller_id, 'PLANTED' || invoice_number, kind, platform_serial, "
            "platform_order_no || 'X', issued_at, buyer_name, total_excl_tax, total_tax, "
            "total_incl_tax FROM cdc_invoice.invoice WHERE id = %s",
            (other_invoice,),
        )
    draft = draft_from_json(progress["parts"][0]["draft"])
    sb = chaos.sandbox.sb
    assert sb is not None
    seller = Seller(seller_id="main", tax_number=harness.SELLER_TAX_NUMBER, name="x", clerk="张三")

    async def issue_again() -> None:
        async with NuonuoProvider(
            base_url=sb.url,
            token_url=sb.token_url,
            token_store=MemoryTokenStore(),
            credentials={"main": Credentials(app_key=sb.app_key, app_secret=sb.app_secret)},
        ) as provider:
            await provider.issue(seller, draft, order_no(base, 2))

    asyncio.run(issue_again())
    time.sleep(1)  # let the platform finish it (issue delay)


def test_the_checker_sees_duplicates_it_is_shown(tmp_path: Path) -> None:
    """The pass criteria can fail: plant one duplicate at the platform and one locally."""
    result = run(
        QUIET,
        workdir=tmp_path / "chaos",
        results=tmp_path / "chaos-results.json",
        before_verify=_plant_duplicates,
    )
    f = result.figures
    assert not result.passed
    assert f["duplicates_platform"] == 1, result.summary()
    assert f["duplicates_local"] == 1, result.summary()
    assert f["lost"] == 1, result.summary()  # the planted local invoice is not at the platform
    assert f["total_local"] != f["total_orders"], result.summary()
