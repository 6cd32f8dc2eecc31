"""PrometheusObserver and certificate expiry, read back through the exposition format."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cdc_invoice.daemon.metrics import CertWatch, PrometheusObserver, parse_listen
from cdc_invoice.daemon.observe import Observer
from cdc_invoice.errors import ConfigError


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_observer_counts_calls_errors_latency_and_outcomes() -> None:
    registry = CollectorRegistry()
    obs: Observer = PrometheusObserver(registry)
    obs.platform_call("issue", "E0000", 0.2)
    obs.platform_call("issue", "E9106", 0.1)
    obs.platform_call("query", "ProviderUnavailable", 3.0)
    obs.recorded("issue", 1.5)
    obs.recorded("issue", 45.0)
    obs.failed("issue", "E9121")
    obs.failed("issue", None)
    obs.retried("issue", "E9601")
    got = samples(registry)

    def val(name: str, **labels: str) -> float | None:
        return got.get((name, tuple(sorted(labels.items()))))

    assert val("cdc_invoice_platform_calls_total", method="issue", code="E0000") == 1
    assert val("cdc_invoice_platform_errors_total", method="issue", code="E9106") == 1
    assert val("cdc_invoice_platform_errors_total", method="query", code="ProviderUnavailable") == 1
    assert val("cdc_invoice_platform_errors_total", method="issue", code="E0000") is None
    assert val("cdc_invoice_platform_call_duration_seconds_count", method="issue") == 2
    assert val("cdc_invoice_issue_latency_seconds_count", kind="issue") == 2
    assert val("cdc_invoice_issue_latency_seconds_bucket", kind="issue", le="2.0") == 1
    assert val("cdc_invoice_issue_latency_seconds_bucket", kind="issue", le="60.0") == 2
    assert val("cdc_invoice_issue_latency_seconds_sum", kind="issue") == 46.5
    assert val("cdc_invoice_requests_recorded_total", kind="issue") == 2
    assert val("cdc_invoice_requests_failed_total", kind="issue", code="E9121") == 1
    assert val("cdc_invoice_requests_failed_total", kind="issue", code="-") == 1
    assert val("cdc_invoice_requests_retried_total", kind="issue", code="E9601") == 1
    last = val("cdc_invoice_platform_last_success_timestamp_seconds")
    assert last is not None and abs(last - time.time()) < 60


def _cert(path: Path, days: int, cn: str) -> dt.datetime:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_after = now + dt.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    with path.open("ab") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return not_after


def test_cert_watch_reads_every_certificate_and_notices_renewal(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    soon = _cert(bundle, 10, "soon")
    _cert(bundle, 400, "later")
    watch = CertWatch(str(bundle))
    certs = watch.read()
    assert len(certs) == 2
    earliest = min(certs, key=lambda c: c.not_after)
    assert earliest.subject == "CN=soon" and earliest.not_after == soon.timestamp()
    bundle.unlink()
    renewed = _cert(bundle, 90, "renewed")
    os.utime(bundle, (1, 1))  # a new mtime, whatever the clock's resolution
    assert [c.not_after for c in watch.read()] == [renewed.timestamp()]


def test_cert_watch_reports_an_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    watch = CertWatch(str(bad))
    assert watch.read() == [] and "no readable PEM" in watch.error
    assert CertWatch(str(tmp_path / "missing.pem")).read() == []
    assert CertWatch("").read() == []


def test_listen_address() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", "localhost:", ":9464", "host:port"):
        with pytest.raises(ConfigError, match="host:port"):
            parse_listen(bad)
