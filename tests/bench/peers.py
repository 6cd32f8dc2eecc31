"""Peer workers, one process each: `python -m tests.bench.peers procrastinate|pgqueuer ...`.

Each runs ``job.InvoiceJob`` as its framework's job, with the framework's own worker loop, and
prints READY once it listens. ``enqueue()`` is what the bench driver calls to queue the jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.bench.env import as_url
from tests.bench.job import InvoiceJob

TASK = "invoice"


def _job(args: argparse.Namespace) -> InvoiceJob:
    secret = Path(args.secret_file).read_text(encoding="utf-8").strip()
    return InvoiceJob(
        args.dsn,
        base_url=args.base_url,
        app_key=args.app_key,
        app_secret=secret,
        tag=args.tag,
        poll_seconds=args.poll,
    )


# --------------------------------------------------------------------------- procrastinate


def _procrastinate_app(dsn: str, pool_size: int) -> Any:
    import procrastinate

    return procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=dsn, min_size=pool_size, max_size=pool_size
        )
    )


async def run_procrastinate(args: argparse.Namespace) -> None:
    job = _job(args)
    await job.open()
    # Its pool serves the fetch/finish of every job: as many connections as the worker can
    # use, capped (the daemon uses 4 for everything).
    app = _procrastinate_app(args.dsn, min(max(args.concurrency // 4, 4), 20))

    @app.task(name=TASK)  # type: ignore[misc]
    async def invoice(job_id: int, order_ref: str, document: str) -> None:
        await job.run(job_id, order_ref, document)

    async with app.open_async():
        print("READY", flush=True)
        await app.run_worker_async(
            concurrency=args.concurrency,
            wait=True,
            install_signal_handlers=True,
            fetch_job_polling_interval=1.0,
            listen_notify=True,
        )
    await job.close()


# --------------------------------------------------------------------------- pgqueuer


async def run_pgqueuer(args: argparse.Namespace) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager

    job = _job(args)
    await job.open()
    conn = await asyncpg.connect(as_url(args.dsn))
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint(TASK)
    async def invoice(j: Job) -> None:
        assert j.payload is not None
        data = json.loads(j.payload)
        await job.run(data["job_id"], data["order_ref"], data["document"])

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, qm.shutdown.set)
    batch = max(1, min(args.batch or max(10, args.concurrency // 8), args.concurrency // 2))
    print("READY", flush=True)
    await qm.run(
        batch_size=batch,
        max_concurrent_tasks=args.concurrency,
        dequeue_timeout=timedelta(seconds=1),
    )
    await conn.close()
    await job.close()


# --------------------------------------------------------------------------- the driver side


async def install(peer: str, dsn: str) -> None:
    if peer == "procrastinate":
        app = _procrastinate_app(dsn, 1)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
    else:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        conn = await asyncpg.connect(as_url(dsn))
        try:
            await Queries(AsyncpgDriver(conn)).install()
        finally:
            await conn.close()


RESET_SQL = {
    "procrastinate": "TRUNCATE procrastinate_jobs, procrastinate_events, "
    "procrastinate_periodic_defers CASCADE",
    "pgqueuer": "TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics",
}


async def enqueue(peer: str, dsn: str, jobs: Sequence[tuple[int, str, str]]) -> None:
    """Queue (job_id, order_ref, document) jobs in one transaction, as an app would."""
    if peer == "procrastinate":
        app = _procrastinate_app(dsn, 1)
        async with app.open_async():
            await app.configure_task(TASK).batch_defer_async(
                *[{"job_id": i, "order_ref": o, "document": d} for i, o, d in jobs]
            )
    else:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        conn = await asyncpg.connect(as_url(dsn))
        try:
            await Queries(AsyncpgDriver(conn)).enqueue(
                [TASK] * len(jobs),
                [
                    json.dumps({"job_id": i, "order_ref": o, "document": d}).encode()
                    for i, o, d in jobs
                ],
                [0] * len(jobs),
            )
        finally:
            await conn.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.bench.peers")
    p.add_argument("peer", choices=["procrastinate", "pgqueuer"])
    p.add_argument("--dsn", required=True)
    p.add_argument("--base-url", required=True)
    p.add_argument("--app-key", required=True)
    p.add_argument("--secret-file", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--batch", type=int, default=0, help="pgqueuer batch_size (0: auto)")
    p.add_argument("--poll", type=float, default=0.2)
    args = p.parse_args(argv)
    runner = run_procrastinate if args.peer == "procrastinate" else run_pgqueuer
    asyncio.run(runner(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
