"""The notify protocol over a real unix datagram socket, and the unit file we print."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cdc_invoice.cli import main
from cdc_invoice.config import Config, DaemonConfig, ProviderConfig
from cdc_invoice.daemon.systemd import Notifier, stop_timeout, unit_file


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    yield s, path
    s.close()


def test_messages_arrive_as_key_value_lines(sock: tuple[socket.socket, str]) -> None:
    s, path = sock
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert n.ready("backlog 3")
    assert s.recv(4096) == b"READY=1\nSTATUS=backlog 3"
    assert n.watchdog()
    assert s.recv(4096) == b"WATCHDOG=1"
    n.status("two\nlines")
    assert s.recv(4096) == b"STATUS=two lines"
    n.reloading()
    first, second = s.recv(4096).decode().split("\n")
    assert first == "RELOADING=1" and second.startswith("MONOTONIC_USEC=")
    assert int(second.split("=")[1]) > 0
    n.stopping()
    assert s.recv(4096) == b"STOPPING=1"
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"cdc-invoice-test-{uuid.uuid4().hex}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    try:
        assert Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}).ready()
        assert s.recv(4096) == b"READY=1"
    finally:
        s.close()


def test_without_systemd_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    n = Notifier.from_environ({})
    assert not n.enabled and n.watchdog_interval is None
    assert n.ready() is False
    # A socket that went away is logged once, never raised.
    gone = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "missing")})
    assert gone.ready() is False and gone.watchdog() is False


def test_watchdog_interval_is_half_and_only_for_our_pid() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_environ(env).watchdog_interval == 15.0
    mine = Notifier.from_environ({**env, "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval == 15.0
    other = Notifier.from_environ({**env, "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval is None
    assert Notifier.from_environ({**env, "WATCHDOG_USEC": "0"}).watchdog_interval is None


def _keys(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def _config(tmp_path: Path) -> Path:
    secret = tmp_path / "main.secret"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    key = tmp_path / "token.key"
    key.write_text("k3y")
    key.chmod(0o600)
    path = tmp_path / "cdc-invoice.toml"
    path.write_text(
        '[database]\ndsn = "host=db1,db2 target_session_attrs=read-write"\n'
        f'[provider]\ntimeout_seconds = 8.0\ntoken_key_file = "{key}"\n'
        f'[provider.credentials.main]\napp_key = "k"\napp_secret_file = "{secret}"\n'
        f'[provider.credentials.Other]\napp_key = "k2"\napp_secret_file = "{secret}"\n'
        "[daemon]\nshutdown_grace_seconds = 25.0\nlease_seconds = 30.0\n"
    )
    return path


def test_unit_has_the_service_keys_and_credentials(tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = CliRunner().invoke(
        main, ["systemd-unit", "--config", str(config), "--user", "invoicer"]
    )
    assert result.exit_code == 0, result.output
    keys = _keys(result.output)
    for key, value in {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "always",
        "WatchdogSec": "30",
        "User": "invoicer",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet": "",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }.items():
        assert keys[key] == [value], key
    # Stop timeout covers the drain plus a whole platform exchange (3 x 8 s).
    assert int(keys["TimeoutStopSec"][0]) > 25 + 3 * 8
    assert f"--config {config}" in keys["ExecStart"][0]
    assert keys["ExecStart"][0].split()[0].startswith("/")
    assert sorted(keys["LoadCredential"]) == sorted(
        [
            f"app-secret-main:{tmp_path / 'main.secret'}",
            f"app-secret-Other:{tmp_path / 'main.secret'}",
            f"token-key:{tmp_path / 'token.key'}",
        ]
    )
    assert sorted(keys["Environment"]) == [
        "CDC_INVOICE_PROVIDER__CREDENTIALS__MAIN__APP_SECRET_FILE=%d/app-secret-main",
        "CDC_INVOICE_PROVIDER__TOKEN_KEY_FILE=%d/token-key",
    ]
    # A seller id an env variable cannot name (upper case) gets an instruction instead.
    assert "/run/credentials/cdc-invoice.service/app-secret-Other in the config" in result.output
    assert "s3cret" not in result.output


def test_stop_timeout_grows_with_grace_and_http_timeout() -> None:
    small = Config(daemon=DaemonConfig(shutdown_grace_seconds=5), provider=ProviderConfig())
    big = Config(
        daemon=DaemonConfig(shutdown_grace_seconds=60),
        provider=ProviderConfig(timeout_seconds=20),
    )
    assert stop_timeout(small) > 5 + 10
    assert stop_timeout(big) > 60 + 3 * 20


def test_bad_user_is_refused() -> None:
    result = CliRunner().invoke(main, ["systemd-unit", "--user", "root; rm -rf /"])
    assert result.exit_code == 2 and "not a valid user name" in result.output


def test_program_under_home_keeps_home_readable() -> None:
    text = unit_file(Config(), None)
    exe = text.split("ExecStart=")[1].split()[0]
    expected = "read-only" if exe.startswith(("/home/", "/root/")) else "yes"
    assert f"\nProtectHome={expected}\n" in text


# The unit's keys, by section, that systemd documents (systemd.unit/service/exec/kill/resource-control).
KNOWN_KEYS = {
    "Unit": {
        "Description",
        "Documentation",
        "After",
        "Wants",
        "Requires",
        "StartLimitIntervalSec",
        "StartLimitBurst",
    },
    "Install": {"WantedBy"},
}


def _check_keys_without_systemd(text: str) -> None:
    """Where systemd-analyze is not installed: the structure and the keys that matter."""
    section = ""
    seen: dict[str, set[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            seen.setdefault(section, set())
            continue
        assert "=" in line and section, f"not a key=value line in a section: {raw!r}"
        key = line.split("=", 1)[0]
        assert key.isidentifier(), raw
        if section in KNOWN_KEYS:
            assert key in KNOWN_KEYS[section], f"unexpected key {key} in [{section}]"
        seen[section].add(key)
    assert set(seen) == {"Unit", "Service", "Install"}
    for key in ("Type", "ExecStart", "WatchdogSec", "Restart", "NotifyAccess", "TimeoutStopSec"):
        assert key in seen["Service"], key


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    config = _config(tmp_path)
    result = CliRunner().invoke(main, ["systemd-unit", "--config", str(config), "--user", "daemon"])
    unit = tmp_path / "cdc-invoice.service"
    unit.write_text(result.output)
    if shutil.which("systemd-analyze") is None:  # Debian's systemd package is not installed
        _check_keys_without_systemd(result.output)
        return
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # verify only warns about unknown keys and bad values; any warning is a defect here.
    for bad in ("Unknown", "ignoring", "Failed", "not executable"):
        assert bad not in done.stderr, done.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    exposure = float(
        security.stdout.split("Overall exposure level for cdc-invoice.service:")[1].split()[0]
    )
    assert exposure <= 2.0, security.stdout
