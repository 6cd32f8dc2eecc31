"""What a newcomer meets first (issue 16): a malformed --dsn is one clear line on every command,
messages keep their '[section]' text, and at 80 columns money and fixes are never cut."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import psycopg
import pytest
from click.testing import CliRunner
from rich.cells import cell_len

from cdc_invoice.cli import main

BAD_DSNS = ("foo bar", "postgresql://u:s3cret@[::1/db", "postgresql://h/db?bogus=1")


def commands_with_dsn() -> list[str]:
    ctx = click.Context(main)
    found = []
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        assert command is not None
        if any(p.name == "dsn" for p in command.params):
            found.append(name)
    return found


def test_every_command_with_a_dsn_is_covered() -> None:
    assert {"install", "status", "failures", "report", "attach", "loadtest", "demo"} <= set(
        commands_with_dsn()
    )


@pytest.mark.parametrize("command", commands_with_dsn())
@pytest.mark.parametrize("dsn", BAD_DSNS)
def test_a_malformed_dsn_is_one_clear_line(command: str, dsn: str) -> None:
    result = CliRunner().invoke(main, [command, "--dsn", dsn])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert "error: --dsn is not a libpq connection string" in result.output
    assert "fix: give a URI (postgresql://user@host:5432/dbname)" in result.output
    assert "s3cret" not in result.output  # libpq quotes the URI: its password must not show


def test_a_malformed_dsn_in_the_config_is_one_clear_check(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[database]\ndsn = "foo bar"\n[provider]\nbase_url = "http://x"\n')
    result = run_cli(["health", "--config", str(config)], tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "database.dsn is not a libpq connection string" in result.stdout


def run_cli(args: list[str], cwd: Path, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cdc_invoice", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_rich_markup_does_not_eat_section_names(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[database]\ndsn = ""\ndns = "typo"\n[deamon]\nconcurrency = 1\n')
    result = run_cli(["health", "--config", str(config)], tmp_path, columns=200)
    assert result.returncode == 1
    assert "in [database]" in result.stdout or "in [top level]" in result.stdout, result.stdout


def fits(output: str, columns: int) -> None:
    too_wide = [line for line in output.splitlines() if cell_len(line) > columns]
    assert too_wide == []


def test_at_80_columns_report_monthly_keeps_every_amount(shop_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO cdc_invoice.request (source, order_ref, kind, state, platform_order_no) "
            "VALUES ('shop', 'BIG-1', 'issue', 'done', 'CIBIG0000000000001');"
            "INSERT INTO cdc_invoice.invoice (request_id, source, order_ref, seller_id, "
            "invoice_number, kind, platform_serial, platform_order_no, issued_at, buyer_name, "
            "total_excl_tax, total_tax, total_incl_tax) "
            "SELECT id, 'shop', 'BIG-1', 'main', '26330000000000000009', 'blue', 'S9', "
            "platform_order_no, now(), 'b', 367702.88, 47801.37, 415504.25 "
            "FROM cdc_invoice.request WHERE order_ref = 'BIG-1';"
            "INSERT INTO cdc_invoice.invoice_line (invoice_id, line_no, item_name, tax_code, "
            "quantity, unit_price, amount_excl_tax, tax_rate, tax, amount_incl_tax) "
            "SELECT id, 1, 'x', '1090511030000000000', 1, 415504.25, 367702.88, 0.13, "
            "47801.37, 415504.25 FROM cdc_invoice.invoice WHERE order_ref = 'BIG-1'"
        )
    result = run_cli(["report", "monthly", "--dsn", shop_dsn], tmp_path)
    assert result.returncode == 0, result.stderr
    for amount in ("367702.88", "47801.37", "415504.25"):
        assert amount in result.stdout, result.stdout
    assert "…" not in result.stdout
    fits(result.stdout, 80)


def test_at_80_columns_failures_keep_the_whole_fix(shop_dsn: str, tmp_path: Path) -> None:
    hint = (
        "INSERT INTO cdc_invoice.item_tax (item_ref, tax_code, tax_rate) VALUES "
        "('P-VERY-LONG-ITEM-REFERENCE-0001', '1090511030000000000', 0.13); then "
        "SELECT cdc_invoice.retry_failed('shop')"
    )
    with psycopg.connect(shop_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO cdc_invoice.request (source, order_ref, kind, state, error_code, "
            "last_error, hint) VALUES ('shop', 'F-1', 'issue', 'failed', 'MAPPING', "
            "'item P-VERY-LONG-ITEM-REFERENCE-0001 has no tax mapping', %s)",
            (hint,),
        )
    result = run_cli(["failures", "--dsn", shop_dsn], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    fits(result.stdout, 80)
    flat = " ".join(result.stdout.split())
    assert " ".join(hint.split()) in flat, result.stdout


def test_the_attach_hint_and_the_dba_guide_agree_on_old(shop_dsn: str) -> None:
    """The guide forbids `OLD.status <> 'shipped'` (NULL when OLD is, on INSERT); the hint of a
    rejected condition must not suggest it."""
    with psycopg.connect(shop_dsn) as conn, pytest.raises(psycopg.Error) as info:
        conn.execute(
            "SELECT cdc_invoice._check_condition('shop.orders', 'issue_when', "
            "$$NEW.status = 'shipped'; --$$)"
        )
    hint = info.value.diag.message_hint or ""
    assert "<>" not in hint
    example = hint.removeprefix("e.g. ").split(" (")[0]
    guide = (Path(__file__).parents[2] / "docs/dba-guide.md").read_text(encoding="utf-8")
    assert example in guide, example
