"""The machine, the PostgreSQL server, scratch databases, process metrics and statistics."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

from cdc_invoice.db import schema
from cdc_invoice.db.queries import sql_file

ROOT = Path(__file__).resolve().parents[2]
MACHINE_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PRODUCTS = 5  # the demo shop has five products: every bench order has one line of each


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Server:
    """The PostgreSQL server the bench uses: the machine's, else an embedded one."""

    admin_dsn: str
    kind: str  # "machine 127.0.0.1:5432" or "embedded (pgserver)"
    version: str
    settings: dict[str, str]
    bindir: str
    handle: Any = None

    def dsn(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(self.admin_dsn, dbname=dbname)

    def create_db(self, name: str) -> str:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_db(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cleanup()


def _reachable(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def open_server(dsn: str | None = None) -> Server:
    handle = None
    if dsn:
        kind = "given by --dsn"
    elif _reachable(MACHINE_DSN):
        dsn, kind = MACHINE_DSN, "machine 127.0.0.1:5432"
    else:
        from cdc_invoice.db import embedded

        datadir = Path("/tmp") / f"cdcbench-{uuid.uuid4().hex[:6]}"
        dsn, handle = embedded.start(datadir / "d")
        kind = "embedded (pgserver)"
    with psycopg.connect(dsn) as conn:
        version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        names = (
            "shared_buffers",
            "synchronous_commit",
            "fsync",
            "max_connections",
            "wal_level",
            "max_wal_size",
        )
        rows = conn.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)",
            (list(names),),
        ).fetchall()
    bindir = ""
    if handle is not None:
        bindir = str(Path(handle.pginit_path if hasattr(handle, "pginit_path") else "").parent)
    if not bindir or not (Path(bindir) / "pgbench").exists():
        pg_config = shutil.which("pg_config")
        if pg_config:
            bindir = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
    return Server(dsn, kind, version, {str(k): str(v) for k, v in rows}, bindir, handle)


def machine_info() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import httpcore
    import httpx

    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "httpx": httpx.__version__,
        "httpcore": httpcore.__version__,
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# --------------------------------------------------------------------------- the shop


def shop_database(server: Server, name: str, orders: int) -> str:
    """A database with cdc_invoice installed, the demo shop attached as 'shop', and ``orders``
    orders in status 'new', each with five lines (one per product)."""
    dsn = server.create_db(name)
    schema.install(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql_file("examples/demo_shop.sql"))
        add_orders(conn, orders)
        conn.execute("VACUUM ANALYZE")
    return dsn


def add_orders(conn: psycopg.Connection[Any], n: int) -> None:
    # Replica role only for the bulk load: skips the FK checks (and the capture triggers,
    # which would not fire for status 'new' anyway).
    conn.execute("SET session_replication_role = replica")
    conn.execute(
        "INSERT INTO shop.orders (customer_id, status) "
        "SELECT 'C00' || (1 + g %% 4), 'new' FROM generate_series(1, %s) g",
        (n,),
    )
    conn.execute(
        """INSERT INTO shop.order_lines (order_id, line_no, sku, quantity, unit_price, discount)
           SELECT o.order_id, p.n, p.sku, 2, p.price, 0
             FROM shop.orders o
            CROSS JOIN (SELECT row_number() OVER (ORDER BY sku) AS n, sku, price
                          FROM shop.products) p
            WHERE NOT EXISTS (SELECT 1 FROM shop.order_lines l WHERE l.order_id = o.order_id)"""
    )
    conn.execute("RESET session_replication_role")


# --------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


def postgres_pids() -> list[int]:
    """The machine cluster's processes (user postgres): postmaster children and backends."""
    pids = []
    for p in psutil.process_iter(["name", "username"]):
        try:
            if p.info["username"] == "postgres" and (p.info["name"] or "").startswith("postgres"):
                pids.append(p.pid)
        except psutil.Error:
            continue
    return pids


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the kernel's own peak resident set size of the process."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class CpuMeter:
    """CPU seconds used by some processes between start() and stop()."""

    pids: Sequence[int]
    begin: dict[int, float] = field(default_factory=dict)
    t0: float = 0.0

    def start(self) -> CpuMeter:
        self.begin = {p: cpu_seconds(p) for p in self.pids}
        self.t0 = time.monotonic()
        return self

    def stop(self) -> tuple[float, float]:
        """(cpu seconds, wall seconds)"""
        used = sum(cpu_seconds(p) - self.begin[p] for p in self.pids)
        return used, time.monotonic() - self.t0


def machine_busy_cpu(seconds: float = 1.0) -> float:
    """Percent of all cores busy right now (other sessions share this machine)."""
    return float(psutil.cpu_percent(interval=seconds))


# --------------------------------------------------------------------------- statistics


def summary(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {
        "median": round(statistics.median(vals), digits),
        "min": round(min(vals), digits),
        "max": round(max(vals), digits),
        "runs": [round(v, digits) for v in vals],
    }


def percentile(values: Sequence[float], p: float) -> float:
    vals = sorted(values)
    if not vals:
        return float("nan")
    k = (len(vals) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


@contextmanager
def timed(what: str) -> Iterator[None]:
    t0 = time.monotonic()
    yield
    log(f"{what}: {time.monotonic() - t0:.1f}s")


def as_url(dsn: str) -> str:
    """A libpq DSN as a postgresql:// URL (asyncpg takes only URLs)."""
    from urllib.parse import quote

    d = psycopg.conninfo.conninfo_to_dict(dsn)
    user = quote(str(d.get("user", "postgres")))
    pw = f":{quote(str(d['password']))}" if d.get("password") else ""
    host = str(d.get("host", "127.0.0.1"))
    if host.startswith("/"):
        return f"postgresql://{user}{pw}@/{d.get('dbname', '')}?host={quote(host)}&port={d.get('port', 5432)}"
    return f"postgresql://{user}{pw}@{host}:{d.get('port', 5432)}/{d.get('dbname', '')}"
