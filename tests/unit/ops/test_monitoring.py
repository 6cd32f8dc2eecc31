"""docs/monitoring: the alert rules and the Grafana dashboard use only metrics the daemon
exports. The daemon's collectors (metrics.py, pace_metrics.py) are built as runner.run builds
them, fed one of everything, and read back through the exposition format."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cdc_invoice.daemon import metrics
from cdc_invoice.daemon.pace_metrics import PaceCollector
from cdc_invoice.providers.pace import Pacer, QuotaGuard

DOCS = Path(__file__).resolve().parents[3] / "docs" / "monitoring"
METRIC = re.compile(r"\bcdc_invoice_[a-z0-9_]+\b")


def _cert(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def exported(tmp_path: Path) -> set[str]:
    """Every sample name the daemon's registry exposes once it has seen one of everything."""
    registry = CollectorRegistry()
    obs = metrics.PrometheusObserver(registry)
    obs.platform_call("issue", "E0000", 0.1)
    obs.platform_call("issue", "E9429", 0.1)
    obs.recorded("issue", 1.0)
    obs.failed("issue", "E9121")
    obs.retried("issue", "E9601")
    obs.deferred("issue", "QUOTA_PAUSED")
    snapshot = metrics.DbSnapshot(repo=None, ttl=1e9)  # type: ignore[arg-type]
    snapshot.current = metrics.Snapshot(
        taken_at=time.monotonic(),
        ok=True,
        schema_version=5,
        requests=[("issue", "failed", 1)],
        tokens=[("app", time.time() + 3600, 1)],
        live_daemons=1,
    )
    pem = tmp_path / "ca.pem"
    _cert(pem)
    process = {name: 1.0 for name in metrics._PROCESS_HELP}
    registry.register(
        metrics.DaemonCollector(
            snapshot, metrics.CertWatch(str(pem)), lambda: process, {"daemon_id": "d"}
        )
    )
    pacer, quota = Pacer(), QuotaGuard()
    pacer.on_throttled("main")
    quota.on_quota_failure("main", "S1", "额度不足")
    registry.register(PaceCollector(pacer, quota))
    names = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        names |= {s.name for s in family.samples}
    return names


def used_in(texts: list[str]) -> set[str]:
    return {m for text in texts for m in METRIC.findall(text)}


def test_every_alert_rule_uses_exported_metrics(tmp_path: Path) -> None:
    rules: dict[str, Any] = yaml.safe_load((DOCS / "alerts.yml").read_text(encoding="utf-8"))
    exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    for needed in (
        "CdcInvoiceBacklogOld",
        "CdcInvoiceFailures",
        "CdcInvoiceThrottled",
        "CdcInvoiceQuotaPaused",
        "CdcInvoiceCertificateExpiry",
        "CdcInvoiceDown",
    ):
        assert needed in exprs
    used = used_in(list(exprs.values()))
    assert used - exported(tmp_path) == set()
    assert (
        "cdc_invoice_seller_quota_paused" in used and "cdc_invoice_platform_throttled_total" in used
    )


def test_every_dashboard_panel_uses_exported_metrics(tmp_path: Path) -> None:
    dash = json.loads((DOCS / "dashboard.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs and all(METRIC.search(e) for e in exprs)
    assert used_in(exprs) - exported(tmp_path) == set()


def test_a_misspelt_metric_would_be_caught(tmp_path: Path) -> None:
    """Negative control: the check above is not vacuous."""
    assert used_in(["rate(cdc_invoice_platform_throtled_total[5m])"]) - exported(tmp_path)
