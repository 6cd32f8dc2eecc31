"""Instructions per captured order: the capture trigger counted under callgrind.

The trigger profile in capture.py times a loop of order shipments; on a shared two-core virtual
machine those times move by ±20 % from one round to the next, more than most changes to the
trigger are worth. Counting the instructions the server executes does not depend on the load,
so this section answers "which variant does less work, and where" exactly, and `capture.py`
answers "how many µs is that here".

How: a private cluster (initdb in a temporary directory) gets cdc_invoice and the demo shop,
attached as in capture.py, and is stopped. For each variant the server then runs in
single-user mode under ``valgrind --tool=callgrind``: reset the queue, install the variant of
the capture function (capture.VARIANTS; "none" disables the UPDATE trigger), warm up with
``CALL bench_ship(30)``, then ``CALL bench_ship(n)``: n UPDATE + COMMIT, each firing the
trigger at commit. Only the CALLs are counted (``--toggle-collect=ExecuteCallStmt``), and only
the second one is used. Instructions per order minus those of "none" are the trigger's.

Needs valgrind (``apt install valgrind``) and the server binaries (pg_config --bindir). Run
as root it runs the server as the ``postgres`` user. ``python -m tests.bench --only
capture-instructions``; about two minutes.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from tests.bench.capture import (
    INBOX,
    LOOP_PROC,
    RESET_QUEUE,
    VARIANTS,
    capture_function,
)
from tests.bench.env import Server, log, shop_database

DB = "cdc_bench_instructions"
NAMES = ("none", "generated", "current", "no_snapshot", "no_notify", "proposed", "inbox")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _runner() -> list[str]:
    """PostgreSQL refuses to run as root: run it as ``postgres`` then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _hand_over(work: Path, run_as: list[str]) -> None:
    """Give the work directory (the cluster, scripts, callgrind's output) to the server's user."""
    if not run_as:
        return
    pw = pwd.getpwnam("postgres")
    for p in [work, *work.rglob("*")]:
        os.chown(p, pw.pw_uid, pw.pw_gid)


def _total(path: Path) -> int:
    text = path.read_text(encoding="utf-8", errors="replace")
    m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if not m:
        raise RuntimeError(f"no instruction total in {path}")
    return int(m.group(1))


def run(server: Server, *, n: int = 300, orders: int = 2000) -> dict[str, Any]:
    valgrind = shutil.which("valgrind")
    if not valgrind:
        return {"skipped": "valgrind is not installed (apt install valgrind)"}
    bindir = Path(server.bindir)
    work = Path(tempfile.mkdtemp(prefix="cdcbench-cg-"))
    data = work / "data"
    try:
        run_as = _runner()
        _hand_over(work, run_as)
        subprocess.run(
            [*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
            check=True,
            capture_output=True,
        )
        port = _free_port()
        opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {work}"
        pg_ctl = [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-w"]
        subprocess.run([*pg_ctl, "-o", opts, "-l", str(work / "log"), "start"], check=True)
        try:
            private = Server(
                f"postgresql://postgres@127.0.0.1:{port}/postgres",
                "private (callgrind)",
                server.version,
                {},
                str(bindir),
            )
            log(f"instructions: a private cluster with the shop ({orders} orders)")
            dsn = shop_database(private, DB, orders)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE SEQUENCE shop.bench_seq")
                conn.execute(LOOP_PROC)
                conn.execute(INBOX)
                row = conn.execute(
                    "SELECT capture_fn, cdc_invoice.object_name('shop', 'issue_upd') "
                    "FROM cdc_invoice.source WHERE source = 'shop'"
                ).fetchone()
                assert row is not None
                fn, trigger = str(row[0]), str(row[1])
                got = conn.execute(
                    "SELECT pg_get_functiondef(%s::regprocedure)", (f"cdc_invoice.{fn}()",)
                ).fetchone()
                assert got is not None
                generated = str(got[0])
        finally:
            subprocess.run([*pg_ctl, "stop"], check=True, capture_output=True)

        per_order: dict[str, float] = {}
        for name in NAMES:
            per_order[name] = _count(
                valgrind, bindir, data, work, run_as, name, fn, trigger, generated, n
            )
            log(f"instructions: {name:<12} {per_order[name]:>10,.0f} per order")
        base = per_order["none"]
        return {
            "method": f"callgrind, postgres --single, CALL bench_ship({n}) after a warm-up of 30: "
            "instructions per UPDATE + COMMIT",
            "instructions_per_order": {k: round(v) for k, v in per_order.items()},
            "trigger_instructions": {
                k: round(v - base) for k, v in per_order.items() if k != "none"
            },
            "variants": {k: VARIANTS[k].doc for k in NAMES if k in VARIANTS},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _count(
    valgrind: str,
    bindir: Path,
    data: Path,
    work: Path,
    run_as: list[str],
    name: str,
    fn: str,
    trigger: str,
    generated: str,
    n: int,
) -> float:
    if name == "none":
        variant = [f"ALTER TABLE shop.orders DISABLE TRIGGER {trigger}"]
    else:
        v = VARIANTS[name]
        body = generated if name == "generated" else capture_function(fn, v)
        variant = [f"ALTER TABLE shop.orders ENABLE TRIGGER {trigger}", *v.setup, body]
    commands = [
        "UPDATE shop.orders SET status = 'new', shipped_at = NULL WHERE status <> 'new'",
        RESET_QUEUE,
        "TRUNCATE cdc_invoice.inbox",
        "SELECT setval('shop.bench_seq', 1, false)",
        "VACUUM shop.orders",
        *variant,
        "SET synchronous_commit = off",
        "CALL public.bench_ship(30)",
        f"CALL public.bench_ship({n})",
    ]
    out = work / name
    out.mkdir()
    # single-user mode with -j: a command ends at a semicolon followed by an empty line
    script = "".join(c.replace("\n\n", "\n").rstrip().rstrip(";") + ";\n\n" for c in commands)
    (out / "script.sql").write_text(script, encoding="utf-8")
    _hand_over(work, run_as)
    with (out / "script.sql").open("rb") as stdin:
        done = subprocess.run(
            [
                *run_as,
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={out}/cg.out",
                "--collect-atstart=no",
                "--toggle-collect=ExecuteCallStmt",
                "--dump-after=ExecuteCallStmt",
                str(bindir / "postgres"),
                "--single",
                "-j",
                "-D",
                str(data),
                DB,
            ],
            stdin=stdin,
            capture_output=True,
            text=True,
        )
    if done.returncode != 0 or "ERROR:" in done.stdout + done.stderr:
        raise RuntimeError(
            f"variant {name}: the server said\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    parts = sorted(out.glob("cg.out.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    if len(parts) < 2:
        raise RuntimeError(f"variant {name}: expected a dump per CALL, found {parts}")
    return _total(parts[-1]) / n
