"""`cdc-invoice reconcile`: the platform's invoices of a day vs. ours, written to a table.

Findings per invoice (cdc_invoice.report_reconciliation): ok, amount_mismatch, buyer_mismatch,
missing_locally (the platform has one of our order numbers that we never recorded),
adopted (such an invoice, now recorded through the daemon's own adopt path, so never issued
twice), missing_at_platform, not_invoiced (a completed order still without invoice: its
request's state and error say why), foreign (issued by another system under this seller).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from cdc_invoice.config import Config
from cdc_invoice.daemon.handler import SellerCache
from cdc_invoice.daemon.issuer import Issuer
from cdc_invoice.daemon.runner import build_provider
from cdc_invoice.db import schema
from cdc_invoice.db.repository import KEEPALIVES, Repository
from cdc_invoice.errors import ConfigError

log = logging.getLogger(__name__)

CHINA = ZoneInfo("Asia/Shanghai")
LEASE_SECONDS = 60.0
ADOPT_TIMEOUT_SECONDS = 60.0


@dataclass
class Summary:
    day: date
    counts: Counter[str] = field(default_factory=Counter)
    findings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return set(self.counts) <= {"ok", "adopted", "foreign"}


async def reconcile(config: Config, day: date) -> Summary:
    if not config.provider.credentials:
        raise ConfigError("reconcile needs [provider.credentials.<seller_id>] in the config")
    # It may issue (an unfinished request driven through the daemon's code): never on a copy
    # of the database, whose order numbers are the original's.
    with psycopg.connect(config.database.dsn, **KEEPALIVES) as conn:
        schema.check_installation(conn)
    repo = await Repository.open(
        config.database.dsn, f"reconcile:{socket.gethostname()}:{os.getpid()}", size=2
    )
    provider = build_provider(config, repo)
    issuer = Issuer(repo, provider, SellerCache(repo), result_poll_seconds=0.2)
    summary = Summary(day)
    run_id = uuid.uuid4()
    start = datetime.combine(day, datetime.min.time(), CHINA)
    window = {"start": start, "end": start + timedelta(days=1)}
    try:
        [tag_row] = await repo.fetch("installation_tag", {})
        ours = "CI" + tag_row["tag"]
        for seller_id in config.provider.credentials:
            seller = await repo.seller(seller_id)
            if seller is None:
                log.warning("seller %s of the config is not in cdc_invoice.seller", seller_id)
                continue
            found = await _seller(repo, provider, issuer, seller_id, seller, window, ours)
            for f in found:
                f.update(run_id=run_id, day=day, seller_id=seller_id)
                summary.counts[f["finding"]] += 1
            summary.findings += found
            await repo.execute_many("insert_finding", found)
    finally:
        await provider.aclose()
        await repo.close()
    return summary


def _finding(finding: str, **values: Any) -> dict[str, Any]:
    row = dict.fromkeys(
        (
            "order_no",
            "invoice_number",
            "source",
            "order_ref",
            "request_id",
            "local_total",
            "platform_total",
            "detail",
        )
    )
    row.update(values, finding=finding)
    return row


async def _seller(
    repo: Repository,
    provider: Any,
    issuer: Issuer,
    seller_id: str,
    seller: Any,
    window: dict[str, datetime],
    ours: str,
) -> list[dict[str, Any]]:
    platform = await provider.list_invoices(seller, window["start"], window["end"])
    local = {
        r["platform_order_no"]: r
        for r in await repo.fetch("local_invoices_of_day", {"seller_id": seller_id, **window})
    }
    findings = []
    seen = set()
    for p in platform:
        seen.add(p.order_no)
        mine = local.get(p.order_no)
        common = {
            "order_no": p.order_no,
            "invoice_number": p.number,
            "platform_total": p.total_incl_tax,
        }
        if mine is not None:
            common.update(
                source=mine["source"],
                order_ref=mine["order_ref"],
                request_id=mine["request_id"],
                local_total=mine["total_incl_tax"],
            )
            if p.total_incl_tax is not None and p.total_incl_tax != mine["total_incl_tax"]:
                findings.append(_finding("amount_mismatch", **common))
            elif p.buyer_name and p.buyer_name != mine["buyer_name"]:
                findings.append(
                    _finding(
                        "buyer_mismatch",
                        **common,
                        detail=f"{p.buyer_name!r} != {mine['buyer_name']!r}",
                    )
                )
            else:
                findings.append(_finding("ok", **common))
        elif not p.order_no.startswith(ours):
            findings.append(_finding("foreign", **common))
        else:
            findings.append(await _adopt(repo, issuer, p.order_no, common))
    for order_no, mine in local.items():
        if order_no not in seen:
            findings.append(
                _finding(
                    "missing_at_platform",
                    order_no=order_no,
                    invoice_number=mine["invoice_number"],
                    source=mine["source"],
                    order_ref=mine["order_ref"],
                    request_id=mine["request_id"],
                    local_total=mine["total_incl_tax"],
                )
            )
    for r in await repo.fetch("unfinished_issues_of_day", {"seller_id": seller_id, **window}):
        findings.append(
            _finding(
                "not_invoiced",
                source=r["source"],
                order_ref=r["order_ref"],
                request_id=r["id"],
                detail=f"{r['state']}: {r['last_error'] or ''}",
            )
        )
    return findings


async def _adopt(
    repo: Repository, issuer: Issuer, order_no: str, common: dict[str, Any]
) -> dict[str, Any]:
    """Record an invoice the platform issued for one of our requests, via the daemon's path."""
    rows = await repo.fetch("request_by_order_no", {"base": order_no[:-2]})
    if not rows or rows[0]["kind"] != "issue":
        return _finding(
            "missing_locally", **common, detail="no issue request has this order number"
        )
    req_row = rows[0]
    common.update(
        source=req_row["source"], order_ref=req_row["order_ref"], request_id=req_row["id"]
    )
    deadline = asyncio.get_running_loop().time() + ADOPT_TIMEOUT_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        req = await repo.claim_one(req_row["id"], LEASE_SECONDS)
        if req is None:
            state = (await repo.fetch("request_by_order_no", {"base": order_no[:-2]}))[0]["state"]
            if state == "done":
                return _finding("adopted", **common)
            await asyncio.sleep(0.3)  # a live daemon holds it: it will adopt it itself
            continue
        if req.state == "submitted":
            await issuer.poll([req])
        else:
            await issuer.start(req)
        state = (await repo.fetch("request_by_order_no", {"base": order_no[:-2]}))[0]["state"]
        if state == "done":
            return _finding("adopted", **common)
        if state == "failed":
            return _finding("missing_locally", **common, detail="adoption failed: see the request")
        await asyncio.sleep(0.3)
    return _finding("missing_locally", **common, detail="adoption did not finish in time")
