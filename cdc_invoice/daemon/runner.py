"""Assemble and run the daemon: schema check, pool, provider, listener, worker, signals."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import asdict

import psycopg
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from cdc_invoice import __version__
from cdc_invoice import config as cfg
from cdc_invoice.archive import keep
from cdc_invoice.archive.fetcher import Archiver
from cdc_invoice.config import Config, read_secret_file
from cdc_invoice.daemon import buyer_slips, callback, health, metrics, systemd
from cdc_invoice.daemon.handler import Stats
from cdc_invoice.daemon.identity import DaemonLock
from cdc_invoice.daemon.issuer import Issuer, SellerCache
from cdc_invoice.daemon.listener import Listener
from cdc_invoice.daemon.pace_metrics import PaceCollector
from cdc_invoice.daemon.worker import Worker
from cdc_invoice.db import schema
from cdc_invoice.db.rate_bucket import PgRateBucket
from cdc_invoice.db.repository import (
    KEEPALIVES,
    SCHEMA_GONE,
    DatabaseUnavailable,
    Repository,
    schema_gone,
)
from cdc_invoice.db.token_store import PgTokenStore, fernet_for
from cdc_invoice.errors import ConfigError
from cdc_invoice.providers.nuonuo.adapter import NuonuoProvider
from cdc_invoice.providers.nuonuo.client import Credentials
from cdc_invoice.providers.pace import Pacer, QuotaGuard

log = logging.getLogger(__name__)


def build_provider(config: Config, repo: Repository) -> NuonuoProvider:
    p = config.provider
    if not p.credentials:
        raise ConfigError(
            "no [provider.credentials.<seller_id>] section",
            hint="add one per row of cdc_invoice.seller, with app_key and app_secret_file",
        )
    credentials: dict[str, Credentials] = {}
    keys = {}
    token_key = (
        read_secret_file(p.token_key_file, "provider.token_key_file") if p.token_key_file else None
    )
    for seller_id, cred in p.credentials.items():
        if not cred.app_key:
            raise ConfigError(f"provider.credentials.{seller_id}.app_key is empty")
        secret = cred.load_secret(seller_id)
        credentials[seller_id] = Credentials(app_key=cred.app_key, app_secret=secret)
        keys[cred.app_key] = fernet_for(token_key or secret)
    bucket = (
        PgRateBucket(repo, p.max_requests_per_second) if p.max_requests_per_second > 0 else None
    )
    return NuonuoProvider(
        pacer=Pacer(bucket),
        quota=QuotaGuard(probe_seconds=p.quota_probe_seconds),
        base_url=p.base_url,
        token_url=p.token_url or None,
        credentials=credentials,
        token_store=PgTokenStore(repo, keys),
        timeout=p.timeout_seconds,
        max_connections=p.max_connections,
        verify=p.ca_file or True,
    )


async def run(
    config: Config,
    config_path: str | None = None,
    *,
    reconfigure_logs: Callable[[Config], None] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP re-reads ``config_path`` (see ``apply_reload``)."""
    dsn = config.database.dsn
    daemon_id = config.daemon.daemon_id or f"{socket.gethostname()}:{os.getpid()}"
    notifier = systemd.Notifier.from_environ(os.environ)
    # connect_timeout (in KEEPALIVES): a half-open link at start is an error, not a silent hang.
    with psycopg.connect(dsn, **KEEPALIVES) as conn:
        schema.check_version(conn)
        schema.check_installation(conn)  # a restored copy must not reuse the original's numbers
    id_lock = DaemonLock(dsn, daemon_id)
    await id_lock.acquire()  # a second daemon with this daemon_id is refused here
    repo = await Repository.open(dsn, daemon_id, config.database.pool_size)
    try:
        provider = build_provider(config, repo)
    except BaseException:
        await repo.close()  # else the pool keeps reconnecting and the process never exits
        await id_lock.release()
        raise
    # Only the sellers this config can sign for: another seller's work waits for a daemon
    # that has its credentials (instead of failing here, retried forever).
    sellers = sorted(config.provider.credentials)
    d = config.daemon
    # *_created series (one per counter and histogram) double the series for no alert's use.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    # process_* (memory, CPU, open files) and python_info, as every Python exporter has them.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    observer = metrics.PrometheusObserver(registry)
    monitor = health.LoopMonitor()
    wake = asyncio.Event()
    slips_hint = asyncio.Event()  # a red-letter callback: list buyer slips now
    listener = Listener(dsn, wake)
    issuer = Issuer(
        repo,
        provider,
        SellerCache(repo),
        result_poll_seconds=d.result_poll_seconds,
        max_backoff_seconds=d.max_backoff_seconds,
        observer=observer,
        max_attempts=d.max_attempts,
    )
    issuer.quota = provider.quota  # quota failures pause the seller (issue 17)
    worker = Worker(
        repo,
        issuer,
        wake,
        concurrency=d.concurrency,
        poll_interval=d.poll_interval,
        lease_seconds=d.lease_seconds,
        on_cycle=monitor.on_cycle,
        sellers=sellers,
    )
    if d.archive_files and d.archive_dir:
        try:
            keep.check_directory(d.archive_dir)
        except ConfigError:
            await provider.aclose()
            await repo.close()
            raise
    # The archiver has a pool (one connection) of its own: it never takes one from issuing.
    archive_repo = await Repository.open(dsn, daemon_id, 1) if d.archive_files else None
    archiver = (
        Archiver(
            archive_repo,
            directory=d.archive_dir,
            max_attempts=d.archive_max_attempts,
            retry_seconds=d.archive_retry_seconds,
            max_backoff_seconds=d.max_backoff_seconds,
            timeout=config.provider.timeout_seconds,
            verify=config.provider.ca_file or True,
        )
        if archive_repo is not None
        else None
    )
    snapshot = metrics.DbSnapshot(repo)
    registry.register(
        metrics.DaemonCollector(
            snapshot,
            metrics.CertWatch(config.provider.ca_file),
            lambda: {
                "inflight_requests": len(worker.inflight),
                "concurrency": worker.concurrency,
                "listener_connected": 1 if listener.connected.is_set() else 0,
                "listener_reconnects_total": listener.reconnects,
                "notifications_total": listener.notifications,
                "claimed_total": worker.claimed_total,
                "claim_loop_age_seconds": monitor.age(),
                "db_snapshot_refreshes_total": snapshot.refreshes,
                **(metrics.archive_counters(archiver.stats) if archiver else {}),
            },
            {"daemon_id": daemon_id, "version": __version__},
        )
    )
    registry.register(PaceCollector(provider.pacer, provider.quota))
    live = health.LiveHealth(
        snapshot=snapshot,
        monitor=monitor,
        listener_connected=listener.connected.is_set,
        last_platform_call=lambda: observer.last_call,
        poll_interval=lambda: worker.poll_interval,
        daemon_id=daemon_id,
        quota=provider.quota,
    )
    http: web.AppRunner | None = None
    try:
        if d.metrics_listen:
            app = metrics.make_app(registry, snapshot, live)
            if d.callback:
                callback.add_route(app, repo, wake, slips_hint)
            http, url = await metrics.serve(app, d.metrics_listen)
            log.info("metrics at %s/metrics, health at %s/healthz", url, url)
    except BaseException:
        await provider.aclose()
        await repo.close()
        await id_lock.release()
        if archive_repo is not None:
            await archive_repo.close()
        raise

    current = config
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    background: set[asyncio.Task[None]] = set()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning(
                "second %s: exiting now; leases of unfinished work will expire",
                signal.Signals(signum).name,
            )
            os._exit(1)
        log.info("%s: stopping (send it again to exit at once)", signal.Signals(signum).name)
        notifier.stopping(f"stopping: draining {len(worker.inflight)} request(s)")
        stop.set()

    async def reload() -> None:
        nonlocal current
        notifier.reloading()
        try:
            new = cfg.load(config_path)
        except ConfigError as exc:
            log.error("SIGHUP: configuration not reloaded, the running one stays: %s", exc)
        else:
            apply_reload(current, new, worker, issuer, reconfigure_logs)
            current = new
        notifier.ready(await status() if notifier.enabled else None)

    def on_hup() -> None:
        task = asyncio.create_task(reload(), name="reload")
        background.add(task)
        task.add_done_callback(background.discard)

    rate = _Rate()

    async def status() -> str:
        snap = await snapshot.get()
        s = _Totals(issuer.stats, worker.lifecycle.stats)
        queue = (
            f"backlog {snap.backlog} ({snap.due} due, oldest {_age(snap.oldest_age)})"
            if snap.ok
            else f"database: {snap.error.splitlines()[0][:80] if snap.error else 'unreachable'}"
        )
        return (
            f"{len(worker.inflight)} in flight; recorded {s.recorded} "
            f"({rate.per_minute(s.recorded):.0f}/min), failed {s.failed}, retried {s.retried}; "
            f"{queue}; LISTEN {'up' if listener.connected.is_set() else 'down, polling'}"
        )

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hup)

    await repo.register_daemon(socket.gethostname(), os.getpid(), __version__, sellers)
    # Everything built so far lives as long as the process: keep it out of the cyclic garbage
    # collector, whose full collections otherwise walked it all and paused the daemon ~60 ms.
    gc.collect()
    gc.freeze()
    tasks = [
        asyncio.create_task(listener.run(), name="listener"),
        asyncio.create_task(worker.run(), name="worker"),
        asyncio.create_task(_heartbeat(repo), name="heartbeat"),
        asyncio.create_task(id_lock.keep(), name="daemon-id-lock"),
    ]
    worker_task = tasks[1]
    service = [
        asyncio.create_task(
            systemd.announce_ready(notifier, listener.connected, wake, monitor.next_cycle, status),
            name="sd-ready",
        ),
        asyncio.create_task(
            systemd.watchdog(
                notifier,
                monitor.age,
                lambda: not worker_task.done(),
                lambda: not listener.connected.is_set(),
                lambda: worker.poll_interval,
            ),
            name="sd-watchdog",
        ),
        asyncio.create_task(systemd.report_status(notifier, status), name="sd-status"),
        asyncio.create_task(
            buyer_slips.run(
                repo,
                provider,
                lambda: current.daemon.buyer_slip_poll_seconds,
                stop,
                slips_hint,
            ),
            name="buyer-slips",
        ),
    ]
    if archiver is not None:  # off the hot path: its own task, restarted if it ever fails
        service.append(asyncio.create_task(archiver.run_forever(), name="archiver"))
    log.info(
        "daemon %s started (concurrency %d, platform %s)",
        daemon_id,
        d.concurrency,
        config.provider.base_url,
        extra={"daemon_id": daemon_id, "systemd": notifier.enabled},
    )
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    crashed = [t for t in done if t is not stopper]
    gone = False
    for t in crashed:
        exc = None if t.cancelled() else t.exception()
        if exc is not None and schema_gone(exc):
            gone = True  # `cdc-invoice uninstall` while running: say so, no traceback
            log.error("%s: %s", t.get_name(), SCHEMA_GONE)
        elif exc is not None:
            log.error("%s crashed", t.get_name(), exc_info=exc)
    if crashed:
        notifier.stopping(
            f"stopping: {SCHEMA_GONE}" if gone else f"stopping: {crashed[0].get_name()} crashed"
        )
    await worker.drain(current.daemon.shutdown_grace_seconds)
    for t in [*tasks, *service, *background]:
        t.cancel()
    for t in [*tasks, *service, *background]:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    if http is not None:
        await http.cleanup()
    with contextlib.suppress(DatabaseUnavailable, psycopg.errors.UndefinedTable):
        await repo.daemon_stopped()  # the table is gone too after an uninstall
    await provider.aclose()
    await repo.close()
    await id_lock.release()
    if archive_repo is not None:
        await archive_repo.close()
    notifier.close()
    s = issuer.stats
    log.info(
        "daemon %s stopped: issued %d, adopted %d, recorded %d, failed %d, retried %d",
        daemon_id,
        s.issued,
        s.adopted,
        s.recorded,
        s.failed,
        s.retried,
    )
    return 1 if crashed else 0


# Keys SIGHUP applies to the running daemon; every other change needs a restart.
RELOADABLE = (
    "daemon.concurrency",
    "daemon.poll_interval",
    "daemon.lease_seconds",
    "daemon.result_poll_seconds",
    "daemon.max_backoff_seconds",
    "daemon.max_attempts",
    "daemon.shutdown_grace_seconds",
    "daemon.buyer_slip_poll_seconds",  # read by buyer_slips.run each round
    "daemon.log_format",
    "daemon.log_level",
)


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted keys whose value differs (credentials compared per seller, as a whole)."""
    out = []
    for section in ("database", "provider", "daemon"):
        a, b = asdict(getattr(old, section)), asdict(getattr(new, section))
        out += [f"{section}.{k}" for k in a if a[k] != b[k]]
    return out


def apply_reload(
    old: Config,
    new: Config,
    worker: Worker,
    issuer: Issuer,
    reconfigure_logs: Callable[[Config], None] | None,
) -> list[str]:
    """Apply what can change while running; log what cannot. Returns the keys applied."""
    changed = changed_keys(old, new)
    d = new.daemon
    if reconfigure_logs is not None:
        reconfigure_logs(new)
    # The worker and issuer read these on every round: plain assignment is enough.
    worker.concurrency = d.concurrency
    worker.poll_interval = d.poll_interval
    worker.lease_seconds = d.lease_seconds
    for handler in (issuer, worker.lifecycle):
        handler.result_poll_seconds = d.result_poll_seconds
        handler.max_backoff_seconds = d.max_backoff_seconds
        handler.max_attempts = d.max_attempts
    applied = [k for k in changed if k in RELOADABLE]
    restart = [k for k in changed if k not in RELOADABLE]
    log.info(
        "SIGHUP: configuration reloaded (%s)",
        ", ".join(f"{k}" for k in applied) if applied else "nothing to apply",
    )
    if restart:
        log.warning(
            "SIGHUP: %s changed but take(s) effect only after a restart "
            "(systemctl restart cdc-invoice)",
            ", ".join(restart),
        )
    return applied


class _Totals:
    """Issues and lifecycle requests (reversals, deliveries …) together, for the status line."""

    def __init__(self, *stats: Stats) -> None:
        self.recorded = sum(x.recorded for x in stats)
        self.failed = sum(x.failed for x in stats)
        self.retried = sum(x.retried for x in stats)


class _Rate:
    """Recorded per minute between two STATUS lines."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), 0)

    def per_minute(self, total: int) -> float:
        now = time.monotonic()
        then, before = self._last
        self._last = (now, total)
        return (total - before) * 60 / (now - then) if now > then else 0.0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


async def _heartbeat(repo: Repository) -> None:
    while True:
        await asyncio.sleep(10)
        try:
            await repo.heartbeat()
        except DatabaseUnavailable as exc:
            log.warning("heartbeat failed: %s", exc)
