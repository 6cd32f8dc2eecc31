"""Real processes: the sandbox platform and the daemon, started as an operator would."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cdc_invoice import harness


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[harness.Sandbox]:
    sb = harness.start_sandbox(tmp_path / "sandbox", issue_delay_ms=200)
    yield sb
    sb.proc.stop()


StartDaemon = Callable[..., harness.Proc]


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    """start_daemon(dsn, sandbox, **daemon_settings) -> Proc; all stopped at the end."""
    procs: list[harness.Proc] = []

    def start(dsn: str, sb: harness.Sandbox, name: str = "daemon", **settings: Any) -> harness.Proc:
        config = harness.write_config(
            tmp_path / f"{name}.toml", dsn=dsn, sandbox=sb, daemon=settings
        )
        proc = harness.start_daemon(config, name=name)
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        p.stop()
