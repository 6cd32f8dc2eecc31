"""Secrets never leak: not in logs at any level, argv, errors, the audit log; token encrypted."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from cdc_invoice import demo, harness
from cdc_invoice.db.token_store import fernet_for

StartDaemon = Callable[..., harness.Proc]


def test_secrets_stay_secret_even_at_debug(
    shop_dsn: str, sandbox: harness.Sandbox, tmp_path: Path
) -> None:
    config = harness.write_config(tmp_path / "d.toml", dsn=shop_dsn, sandbox=sandbox)
    daemon = harness.spawn(
        [*harness._python(), "-vv", "--log-format", "json", "run", "--config", str(config)],
        "daemon",
    )
    try:
        orders = demo.ship_orders(shop_dsn, 5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with psycopg.connect(shop_dsn) as conn:
                row = conn.execute("SELECT count(*) FROM cdc_invoice.invoice").fetchone()
            if row and row[0] == len(orders):
                break
            time.sleep(0.2)
        cmdline = Path(f"/proc/{daemon.popen.pid}/cmdline").read_bytes().decode()
    finally:
        daemon.stop()
    with psycopg.connect(shop_dsn) as conn:
        (blob,) = conn.execute("SELECT token_encrypted FROM cdc_invoice.provider_token").fetchone()  # type: ignore[misc]
        audit = " ".join(str(r) for r in conn.execute("SELECT * FROM cdc_invoice.event").fetchall())
        requests = " ".join(
            str(r) for r in conn.execute("SELECT * FROM cdc_invoice.request").fetchall()
        )
    token = fernet_for(sandbox.app_secret).decrypt(bytes(blob)).decode()
    assert len(token) >= 16 and token.encode() not in bytes(blob)
    output = daemon.output()
    assert '"level": "debug"' in output, "the daemon really logged at DEBUG"
    for secret in (sandbox.app_secret, token):
        assert secret not in output
        assert secret not in cmdline
        assert secret not in audit
        assert secret not in requests
