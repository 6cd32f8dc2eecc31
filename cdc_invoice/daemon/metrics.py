"""Prometheus metrics and the /metrics, /healthz endpoints, served inside the daemon's loop.

Three sources:
  * ``PrometheusObserver``: what the issuer reports as it works (platform calls, latencies,
    failures, retries), as counters and histograms;
  * the process itself: requests in flight, LISTEN state, claims (read at scrape time);
  * ``DbSnapshot``: queue and token figures from the database, cached for ``ttl`` seconds and
    refreshed by at most one query set at a time, however many scrapers ask.
Plus the expiry of the certificates in provider.ca_file.

The platform does not report the monthly invoicing quota (发票总额度) through the API the
daemon uses, so it is not exported; the token quota (50 fetches per 30 days) is, from the
fetch log the daemon keeps.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from cdc_invoice.db.queries import latest_version, q
from cdc_invoice.db.repository import DatabaseUnavailable, Repository
from cdc_invoice.db.token_store import QUOTA_PER_30_DAYS
from cdc_invoice.errors import ConfigError

if TYPE_CHECKING:
    from cdc_invoice.archive.fetcher import Stats as ArchiveStats
    from cdc_invoice.daemon.health import LiveHealth

log = logging.getLogger(__name__)

OPS = "ops_queries.sql"
SUCCESS = "E0000"
# Commit of the order -> invoice recorded: seconds (sandbox) up to hours (platform backlog).
LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class PrometheusObserver:
    """cdc_invoice.daemon.observe.Observer, as Prometheus counters and histograms."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "cdc_invoice_platform_calls",
            "Platform calls by method and answer code (E0000 = success; an error class name "
            "when no protocol answer came back)",
            ["method", "code"],
            registry=registry,
        )
        self.errors = Counter(
            "cdc_invoice_platform_errors",
            "Platform calls that did not answer E0000, by method and code",
            ["method", "code"],
            registry=registry,
        )
        self.call_seconds = Histogram(
            "cdc_invoice_platform_call_duration_seconds",
            "Duration of platform calls",
            ["method"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "cdc_invoice_issue_latency_seconds",
            "From the order's commit (request created) to its invoices recorded",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.recorded_total = Counter(
            "cdc_invoice_requests_recorded",
            "Requests finished with their invoices recorded, by this process",
            ["kind"],
            registry=registry,
        )
        self.failed_total = Counter(
            "cdc_invoice_requests_failed",
            "Requests parked as failed (they need a fix and a retry), by kind and code",
            ["kind", "code"],
            registry=registry,
        )
        self.retried_total = Counter(
            "cdc_invoice_requests_retried",
            "Retryable errors: requests put back with a backoff, by kind and code",
            ["kind", "code"],
            registry=registry,
        )
        self.deferred_total = Counter(
            "cdc_invoice_requests_deferred",
            "Requests put back to wait for the platform (throttling, a seller paused for "
            "quota), not counted as retries, by kind and code",
            ["kind", "code"],
            registry=registry,
        )
        self.last_success = Gauge(
            "cdc_invoice_platform_last_success_timestamp_seconds",
            "When a platform call last answered E0000 (unix time; 0 = never)",
            registry=registry,
        )
        self.last_call: tuple[str, str, float] | None = None  # (method, code, unix time)

    def platform_call(self, method: str, code: str, seconds: float) -> None:
        self.calls.labels(method, code).inc()
        self.call_seconds.labels(method).observe(seconds)
        now = time.time()
        self.last_call = (method, code, now)
        if code == SUCCESS:
            self.last_success.set(now)
        else:
            self.errors.labels(method, code).inc()

    def recorded(self, kind: str, latency_seconds: float) -> None:
        self.recorded_total.labels(kind).inc()
        self.latency.labels(kind).observe(max(latency_seconds, 0.0))

    def failed(self, kind: str, code: str | None) -> None:
        self.failed_total.labels(kind, code or "-").inc()

    def retried(self, kind: str, code: str | None) -> None:
        self.retried_total.labels(kind, code or "-").inc()

    def deferred(self, kind: str, code: str | None) -> None:
        self.deferred_total.labels(kind, code or "-").inc()


@dataclass(slots=True)
class Snapshot:
    """What the database said at ``taken_at`` (monotonic), or why it could not."""

    taken_at: float = 0.0
    ok: bool = False
    error: str = "not read yet"
    schema_version: int | None = None
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # kind, state, n
    backlog: int = 0
    due: int = 0
    oldest_age: float = 0.0
    tokens: list[tuple[str, float | None, int]] = field(default_factory=list)
    live_daemons: int = 0
    archive: dict[str, int] = field(default_factory=dict)  # pending, failed, verified, mismatched


class DbSnapshot:
    """Queue figures from the database, at most one refresh per ``ttl`` seconds."""

    def __init__(self, repo: Repository, ttl: float = 5.0, timeout: float = 5.0) -> None:
        self.repo = repo
        self.ttl = ttl
        self.timeout = timeout
        self.current = Snapshot()
        self.refreshes = 0
        self._lock = asyncio.Lock()

    def age(self) -> float:
        return time.monotonic() - self.current.taken_at if self.current.taken_at else float("inf")

    async def get(self) -> Snapshot:
        if self.age() < self.ttl:
            return self.current
        async with self._lock:
            if self.age() < self.ttl:
                return self.current  # refreshed while we waited for the lock
            await self._refresh()
        return self.current

    async def _refresh(self) -> None:
        snap = Snapshot(taken_at=time.monotonic(), ok=True, error="")
        self.refreshes += 1
        try:
            async with asyncio.timeout(self.timeout), self.repo.connection() as conn:
                row = await (await conn.execute(q("schema_version"))).fetchone()
                snap.schema_version = int(row[0]) if row and row[0] is not None else None
                snap.requests = [
                    (str(k), str(s), int(n))
                    for k, s, n in await (await conn.execute(q("metrics_requests", OPS))).fetchall()
                ]
                row = await (await conn.execute(q("metrics_backlog", OPS))).fetchone()
                assert row is not None
                snap.backlog, snap.due, snap.oldest_age = int(row[0]), int(row[1]), float(row[2])
                snap.tokens = [
                    (str(a), None if e is None else float(e), int(n))
                    for a, e, n in await (await conn.execute(q("metrics_tokens", OPS))).fetchall()
                ]
                row = await (await conn.execute(q("metrics_daemons", OPS))).fetchone()
                snap.live_daemons = int(row[0]) if row else 0
                cur = await conn.execute(q("archive_counts", "archive_queries.sql"))
                row = await cur.fetchone()
                names = [c.name for c in cur.description or ()]
                if row is not None:
                    snap.archive = {n: int(v) for n, v in zip(names, row, strict=True)}
        except (DatabaseUnavailable, TimeoutError, psycopg.Error) as exc:
            # Keep the last figures (stale, with db_up 0) rather than blank graphs.
            old = self.current
            old.ok = False
            old.error = str(exc) or f"no answer within {self.timeout:g} s"
            old.taken_at = time.monotonic()
            return
        self.current = snap


@dataclass(frozen=True, slots=True)
class CertInfo:
    subject: str
    not_after: float  # unix time


class CertWatch:
    """The certificates of provider.ca_file (PEM); re-read when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mtime: float | None = None
        self.certs: list[CertInfo] = []
        self.error = ""

    def read(self) -> list[CertInfo]:
        if not self.path:
            return []
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError as exc:
            self.error = f"cannot read {self.path}: {exc.strerror}"
            return self.certs
        if mtime != self._mtime:
            from cryptography import x509

            try:
                loaded = x509.load_pem_x509_certificates(Path(self.path).read_bytes())
            except ValueError as exc:
                self.error = f"{self.path} holds no readable PEM certificate: {exc}"
                self.certs = []
            else:
                self.error = ""
                self.certs = [
                    CertInfo(
                        c.subject.rfc4514_string(),
                        c.not_valid_after_utc.timestamp(),
                    )
                    for c in loaded
                ]
            self._mtime = mtime
        return self.certs


class DaemonCollector(Collector):
    """Gauges read at scrape time from the process and the last database snapshot."""

    def __init__(
        self,
        snapshot: DbSnapshot,
        certs: CertWatch,
        process: Callable[[], dict[str, float]],
        info: dict[str, str],
    ) -> None:
        self.snapshot = snapshot
        self.certs = certs
        self.process = process
        self.info = info

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("cdc_invoice_daemon_info", "This daemon", labels=sorted(self.info))
        info.add_metric([self.info[k] for k in sorted(self.info)], 1)
        yield info
        for name, value in self.process().items():
            if name.endswith("_total"):
                yield CounterMetricFamily(
                    f"cdc_invoice_{name[:-6]}", _PROCESS_HELP[name], value=value
                )
            else:
                yield GaugeMetricFamily(f"cdc_invoice_{name}", _PROCESS_HELP[name], value=value)

        snap = self.snapshot.current
        yield GaugeMetricFamily(
            "cdc_invoice_db_up",
            "1 if the last database read for these metrics succeeded",
            value=1 if snap.ok else 0,
        )
        age = self.snapshot.age()
        yield GaugeMetricFamily(
            "cdc_invoice_db_snapshot_age_seconds",
            "Age of the database figures below (cached between scrapes)",
            value=age if age != float("inf") else -1,
        )
        if snap.taken_at == 0.0:
            return
        if snap.schema_version is not None:
            yield GaugeMetricFamily(
                "cdc_invoice_schema_version_match",
                "1 if the installed schema is the version this daemon needs",
                value=1 if snap.schema_version == latest_version() else 0,
            )
        requests = GaugeMetricFamily(
            "cdc_invoice_requests",
            "Requests in the queue by kind and state (pending, claimed, submitted, failed)",
            labels=["kind", "state"],
        )
        for kind, state, n in snap.requests:
            requests.add_metric([kind, state], n)
        yield requests
        yield GaugeMetricFamily(
            "cdc_invoice_backlog_requests",
            "Requests not finished (pending, claimed, submitted)",
            value=snap.backlog,
        )
        yield GaugeMetricFamily(
            "cdc_invoice_backlog_due_requests",
            "Unfinished requests whose time has come (not waiting for a backoff or a poll)",
            value=snap.due,
        )
        yield GaugeMetricFamily(
            "cdc_invoice_backlog_oldest_age_seconds",
            "Age of the oldest unfinished request (0 when none)",
            value=snap.oldest_age,
        )
        yield GaugeMetricFamily(
            "cdc_invoice_live_daemons",
            "Daemons with a heartbeat in the last 30 s (all instances, from the database)",
            value=snap.live_daemons,
        )
        archive = GaugeMetricFamily(
            "cdc_invoice_archive_files",
            "Invoice files by archive state: pending (to fetch), failed (given up, listed in "
            "report_archive_open), verified (kept, content checked), mismatched (kept, XML "
            "differs from the record: report_archive_mismatches)",
            labels=["state"],
        )
        for state, n in snap.archive.items():
            archive.add_metric([state], n)
        yield archive
        expiry = GaugeMetricFamily(
            "cdc_invoice_token_expiry_timestamp_seconds",
            "When the shared platform access token expires (unix time)",
            labels=["app_key"],
        )
        fetches = GaugeMetricFamily(
            "cdc_invoice_token_fetches_30d",
            "Access tokens fetched in the last 30 days (the platform allows "
            f"{QUOTA_PER_30_DAYS}, then answers 070306)",
            labels=["app_key"],
        )
        remaining = GaugeMetricFamily(
            "cdc_invoice_token_fetches_remaining",
            "Token fetches left in the platform's 30-day window",
            labels=["app_key"],
        )
        for app_key, expires_at, n in snap.tokens:
            if expires_at is not None:
                expiry.add_metric([app_key], expires_at)
            fetches.add_metric([app_key], n)
            remaining.add_metric([app_key], max(QUOTA_PER_30_DAYS - n, 0))
        yield expiry
        yield fetches
        yield remaining
        certs = self.certs.read()
        if certs:
            earliest = min(certs, key=lambda c: c.not_after)
            cert = GaugeMetricFamily(
                "cdc_invoice_certificate_expiry_timestamp_seconds",
                "Earliest not-valid-after of the certificates in provider.ca_file (unix time)",
                labels=["file", "subject"],
            )
            cert.add_metric([self.certs.path, earliest.subject], earliest.not_after)
            yield cert


_PROCESS_HELP = {
    "inflight_requests": "Requests this process is working on",
    "concurrency": "Requests this process may work on at once (daemon.concurrency)",
    "listener_connected": "1 while the LISTEN connection is up (else the daemon polls)",
    "listener_reconnects_total": "LISTEN connection losses since start",
    "notifications_total": "NOTIFY wake-ups received since start",
    "claimed_total": "Requests claimed by this process since start (polls included)",
    "claim_loop_age_seconds": "Seconds since the claim loop last went round",
    "db_snapshot_refreshes_total": "Database reads for these metrics (at most one per 5 s)",
    "archive_stored_total": "Invoice files this process fetched and kept in the archive",
    "archive_mismatches_total": "Kept invoice XML that differs from the recorded invoice (alert)",
    "archive_retries_total": "Invoice file fetches that failed and will be tried again",
    "archive_failures_total": "Invoice file fetches given up after daemon.archive_max_attempts",
}


def archive_counters(stats: ArchiveStats) -> dict[str, float]:
    """The archiver's counters, for the process gauges above."""
    return {
        "archive_stored_total": stats.stored,
        "archive_mismatches_total": stats.mismatched,
        "archive_retries_total": stats.retried,
        "archive_failures_total": stats.failed,
    }


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(
            f"daemon.metrics_listen must be host:port, got {listen!r}",
            hint='e.g. metrics_listen = "127.0.0.1:9464" (empty: no endpoint)',
        )
    return host.strip("[]"), int(port)


def make_app(
    registry: CollectorRegistry, snapshot: DbSnapshot, health: LiveHealth
) -> web.Application:
    async def metrics(_request: web.Request) -> web.Response:
        await snapshot.get()
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        report = await health.check()
        return web.json_response(report, status=200 if report["status"] != "fail" else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(app: web.Application, listen: str) -> tuple[web.AppRunner, str]:
    """Start serving ``app`` on ``listen``; returns the runner and the URL it is bound to."""
    host, port = parse_listen(listen)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot listen on {listen} for /metrics: {exc.strerror}",
            hint="pick a free port in daemon.metrics_listen (or leave it empty)",
        ) from exc
    addr: Any = runner.addresses[0]
    bound_host, bound_port = addr[0], addr[1]
    if ":" in bound_host:
        bound_host = f"[{bound_host}]"
    return runner, f"http://{bound_host}:{bound_port}"
