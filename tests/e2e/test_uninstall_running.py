"""`cdc-invoice uninstall` while a daemon runs (issue 16): the guide says to stop the daemons
first; if nobody did, the daemon stops by itself with one clear line, not a traceback."""

from __future__ import annotations

import time

from click.testing import CliRunner

from cdc_invoice import harness
from cdc_invoice.cli import main


def test_the_daemon_stops_with_a_message_when_the_schema_is_dropped(
    shop_dsn: str, sandbox: harness.Sandbox, start_daemon
) -> None:  # type: ignore[no-untyped-def]
    daemon = start_daemon(shop_dsn, sandbox)
    deadline = time.monotonic() + 30
    while "ready" not in daemon.output() and time.monotonic() < deadline:
        assert daemon.alive(), daemon.output()
        time.sleep(0.1)
    assert "ready" in daemon.output()

    result = CliRunner().invoke(main, ["uninstall", "--dsn", shop_dsn, "--yes"])
    assert result.exit_code == 0, result.output

    deadline = time.monotonic() + 30
    while daemon.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not daemon.alive(), "the daemon kept running without its schema"
    out = daemon.output()
    assert "the cdc_invoice schema is gone (was `cdc-invoice uninstall` run?)" in out, out
    assert "run `cdc-invoice install` before starting the daemon again" in out
    assert "Traceback" not in out, out
    assert daemon.popen.returncode == 1  # systemd sees a failure, not a clean stop
