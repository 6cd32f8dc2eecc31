"""The DBA guide and the Northwind example do what they say: every command in them runs.

Each ```sh block runs in bash (DSN set to a fresh database, cdc-invoice and psql on PATH) and
each ```sql block through psycopg, in the order of the document; a block fails the test if it
fails. Blocks that cannot run here are preceded by an HTML comment "<!-- not run: why -->"
(setting DSN, starting the long-running daemon); ```text blocks are output, not commands.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).parents[2]
NORTHWIND = REPO / "sql/examples/northwind/northwind.sql"  # vendored, Ms-PL (LICENSE beside it)
BLOCK = re.compile(
    r"(?:<!-- (?P<note>[^\n]*?) -->\n)?^```(?P<lang>[a-z]*)\n(?P<code>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
GUIDE_ROLES = ("invoice_daemon", "finance")  # cluster-wide roles the guide creates and drops


def blocks(doc: Path) -> list[tuple[str, str]]:
    found = []
    for m in BLOCK.finditer(doc.read_text(encoding="utf-8")):
        if (m["note"] or "").startswith("not run"):
            continue
        if m["lang"] in ("sh", "sql"):
            found.append((m["lang"], m["code"]))
    return found


def run_document(doc: Path, dsn: str, cwd: Path) -> list[str]:
    """Run the document's blocks in order; returns the shell output, block by block."""
    env = {
        **os.environ,
        "DSN": dsn,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    outputs = []
    runnable = blocks(doc)
    assert runnable, f"no runnable blocks in {doc}"
    for lang, code in runnable:
        if lang == "sql":
            with psycopg.connect(dsn, autocommit=True) as conn:
                try:
                    conn.execute(code)
                except psycopg.Error as exc:
                    pytest.fail(f"{doc.name}: SQL block failed: {exc}\n{code}")
            continue
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", code],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(
                f"{doc.name}: shell block exited {done.returncode}:\n{code}\n"
                f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
            )
        outputs.append(done.stdout)
    return outputs


def drop_guide_roles(admin_dsn: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for role in GUIDE_ROLES:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_every_command_of_the_dba_guide_works(
    admin_dsn: str, fresh_dsn: str, tmp_path: Path
) -> None:
    drop_guide_roles(admin_dsn)  # left by an interrupted run
    try:
        out = run_document(REPO / "docs/dba-guide.md", fresh_dsn, tmp_path)
    finally:
        drop_guide_roles(admin_dsn)
    text = "\n".join(out)
    # The outcomes the guide describes.
    assert "ok: 1 invoice(s), 902.50 incl. tax; nothing was enqueued" in text
    assert "erp: 3 order(s) read, 2 meet the condition, 0 already queued, 2 would enqueue" in text
    assert "2 order(s) read, 1 meet the condition, 0 already queued, 1 enqueued" in text
    assert "3 order(s) read, 2 meet the condition, 1 already queued, 1 enqueued" in text
    assert "detached erp" in text and "uninstalled (detached: none)" in text
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute("SELECT to_regnamespace('cdc_invoice')").fetchone() == (None,)
        assert conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'erp.sales_order'::regclass "
            "AND NOT tgisinternal"
        ).fetchone() == (0,)


def test_every_command_of_the_northwind_example_works(fresh_dsn: str, tmp_path: Path) -> None:
    # The example runs from a checkout: northwind.sql is vendored in sql/examples/northwind/.
    (tmp_path / "sql").symlink_to(REPO / "sql")
    text = "\n".join(run_document(REPO / "docs/northwind.md", fresh_dsn, tmp_path))
    assert "ok: 1 invoice(s), 472.38 incl. tax" in text
    assert "830 order(s) read, 809 meet the condition, 0 already queued, 809 enqueued" in text
    with psycopg.connect(fresh_dsn) as conn:
        assert conn.execute(
            "SELECT count(*), count(DISTINCT order_ref) FROM cdc_invoice.request"
        ).fetchone() == (810, 810)
