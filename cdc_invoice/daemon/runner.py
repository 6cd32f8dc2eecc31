"""Assemble and run the daemon: schema check, pool, provider, listener, worker, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket

import psycopg

from cdc_invoice import __version__
from cdc_invoice.config import Config, read_secret_file
from cdc_invoice.daemon.issuer import Issuer, SellerCache
from cdc_invoice.daemon.listener import Listener
from cdc_invoice.daemon.worker import Worker
from cdc_invoice.db import schema
from cdc_invoice.db.repository import DatabaseUnavailable, Repository
from cdc_invoice.db.token_store import PgTokenStore, fernet_for
from cdc_invoice.errors import ConfigError
from cdc_invoice.providers.nuonuo.adapter import NuonuoProvider
from cdc_invoice.providers.nuonuo.client import Credentials

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
    return NuonuoProvider(
        base_url=p.base_url,
        token_url=p.token_url or None,
        credentials=credentials,
        token_store=PgTokenStore(repo, keys),
        timeout=p.timeout_seconds,
        max_connections=p.max_connections,
        verify=p.ca_file or True,
    )


async def run(config: Config) -> int:
    dsn = config.database.dsn
    daemon_id = config.daemon.daemon_id or f"{socket.gethostname()}:{os.getpid()}"
    with psycopg.connect(dsn) as conn:
        schema.check_version(conn)
    repo = await Repository.open(dsn, daemon_id, config.database.pool_size)
    provider = build_provider(config, repo)
    d = config.daemon
    wake = asyncio.Event()
    listener = Listener(dsn, wake)
    issuer = Issuer(
        repo,
        provider,
        SellerCache(repo),
        result_poll_seconds=d.result_poll_seconds,
        max_backoff_seconds=d.max_backoff_seconds,
    )
    worker = Worker(
        repo,
        issuer,
        wake,
        concurrency=d.concurrency,
        poll_interval=d.poll_interval,
        lease_seconds=d.lease_seconds,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning(
                "second %s: exiting now; leases of unfinished work will expire",
                signal.Signals(signum).name,
            )
            os._exit(1)
        log.info("%s: stopping (send it again to exit at once)", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    await repo.register_daemon(socket.gethostname(), os.getpid(), __version__)
    tasks = [
        asyncio.create_task(listener.run(), name="listener"),
        asyncio.create_task(worker.run(), name="worker"),
        asyncio.create_task(_heartbeat(repo), name="heartbeat"),
    ]
    log.info(
        "daemon %s started (concurrency %d, platform %s)",
        daemon_id,
        d.concurrency,
        config.provider.base_url,
    )
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    crashed = [t for t in done if t is not stopper]
    for t in crashed:
        if not t.cancelled() and t.exception() is not None:
            log.error("%s crashed", t.get_name(), exc_info=t.exception())
    await worker.drain(d.shutdown_grace_seconds)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    with contextlib.suppress(DatabaseUnavailable):
        await repo.daemon_stopped()
    await provider.aclose()
    await repo.close()
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


async def _heartbeat(repo: Repository) -> None:
    while True:
        await asyncio.sleep(10)
        try:
            await repo.heartbeat()
        except DatabaseUnavailable as exc:
            log.warning("heartbeat failed: %s", exc)
