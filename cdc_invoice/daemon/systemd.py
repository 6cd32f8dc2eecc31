"""The systemd notify protocol (sd_notify(3)), spoken directly: one datagram per message.

systemd passes $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace) and, with
WatchdogSec=, $WATCHDOG_USEC (and $WATCHDOG_PID). Outside systemd there is no socket and every
call is a no-op, so the daemon calls these unconditionally. No dependency: the protocol is
"KEY=value" lines in a datagram on a unix socket.

Also here: ``unit_file()``, the unit that `cdc-invoice systemd-unit` prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cdc_invoice.config import Config

log = logging.getLogger(__name__)


class Notifier:
    """Sends READY=1, WATCHDOG=1, STATUS=…, RELOADING=1, STOPPING=1 to systemd, if it listens."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int | None = None) -> Notifier:
        address = environ.get("NOTIFY_SOCKET") or None
        watchdog: int | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        wd_pid = environ.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process meant to ping; a child that inherited the variable
        # must not keep a hung parent alive.
        if usec.isdigit() and int(usec) > 0 and (not wd_pid or wd_pid == str(pid or os.getpid())):
            watchdog = int(usec)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of what systemd allows, as sd_watchdog_enabled
        recommends; None when no watchdog is configured."""
        if not self.watchdog_usec or not self.enabled:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def _target(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):
            return b"\0" + self.address[1:].encode()  # Linux abstract namespace
        return self.address

    def send(self, **fields: str | int) -> bool:
        """One message of KEY=value lines (keys upper-cased). False if nothing was sent."""
        if self.address is None:
            return False
        message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode("utf-8"), self._target())
            return True
        except OSError as exc:
            # systemd gone or the socket full: never let service bookkeeping stop the daemon.
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
                self._warned = True
            return False

    def ready(self, status: str | None = None) -> bool:
        extra = {"status": status} if status else {}
        return self.send(ready=1, **extra)

    def watchdog(self) -> bool:
        return self.send(watchdog=1)

    def status(self, text: str) -> bool:
        return self.send(status=text.replace("\n", " "))

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (Type=notify-reload) tell this reload from an earlier one.
        return self.send(
            reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )

    def stopping(self, status: str | None = None) -> bool:
        extra = {"status": status} if status else {}
        return self.send(stopping=1, **extra)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


# --- the service loops --------------------------------------------------------------------


async def announce_ready(
    notifier: Notifier,
    listener_connected: asyncio.Event,
    wake: asyncio.Event,
    next_cycle: Callable[[], Awaitable[None]],
    status: Callable[[], Awaitable[str]],
) -> None:
    """READY=1 once LISTEN is up and a claim sweep that started after it has finished.

    The listener sets ``wake`` right after LISTEN succeeds and the claim loop clears it just
    before it claims. If ``wake`` is still set when the next round ends, that round's claim
    began before LISTEN, so wait for one more.
    """
    await listener_connected.wait()
    await next_cycle()
    if wake.is_set():
        await next_cycle()
    # The status line reads the database: only worth it when systemd listens.
    notifier.ready(await status() if notifier.enabled else None)
    log.info("ready: LISTEN up and the first sweep done")


async def watchdog(
    notifier: Notifier,
    loop_age: Callable[[], float],
    alive: Callable[[], bool],
    waiting_for_database: Callable[[], bool],
    poll_interval: Callable[[], float],
) -> None:
    """WATCHDOG=1 while the claim loop goes round (checked at a quarter of WatchdogSec, so a
    ping is never more than half of it late). While the database is away the loop backs off
    without going round; that is waiting, not hanging, so the pings go on."""
    interval = notifier.watchdog_interval
    if interval is None:
        return
    starving = False
    while True:
        await asyncio.sleep(interval / 2)
        fresh = loop_age() < max(interval, 2 * poll_interval() + 1)
        if alive() and (fresh or waiting_for_database()):
            notifier.watchdog()
            starving = False
        elif not starving:
            starving = True
            log.error(
                "claim loop silent for %.0f s: withholding the watchdog ping (systemd restarts "
                "the daemon after WatchdogSec)",
                loop_age(),
            )


async def report_status(
    notifier: Notifier, status: Callable[[], Awaitable[str]], every: float = 10.0
) -> None:
    """STATUS=… (shown by `systemctl status`) every ``every`` seconds."""
    if not notifier.enabled:
        return
    while True:
        await asyncio.sleep(every)
        notifier.status(await status())


# --- the unit file ---------------------------------------------------------------------------

UNIT_NAME = "cdc-invoice.service"
CREDENTIALS_DIR = f"/run/credentials/{UNIT_NAME}"
WATCHDOG_SECONDS = 30
RESTART_SECONDS = 5
_ENV_SAFE = re.compile(r"^[a-z0-9_]+$")  # seller ids an env override can name (it lower-cases)


@dataclass(frozen=True, slots=True)
class Credential:
    """A secret file the service reads: where it is on disk, and its name under LoadCredential."""

    name: str
    source: str
    env: str | None  # the CDC_INVOICE_* variable pointing the daemon at the loaded copy


def credentials_of(config: Config) -> list[Credential]:
    out: list[Credential] = []
    for seller_id, cred in sorted(config.provider.credentials.items()):
        if not cred.app_secret_file:
            continue
        env = (
            f"CDC_INVOICE_PROVIDER__CREDENTIALS__{seller_id.upper()}__APP_SECRET_FILE"
            if _ENV_SAFE.match(seller_id)
            else None
        )
        out.append(Credential(f"app-secret-{seller_id}", cred.app_secret_file, env))
    if config.provider.token_key_file:
        out.append(
            Credential(
                "token-key",
                config.provider.token_key_file,
                "CDC_INVOICE_PROVIDER__TOKEN_KEY_FILE",
            )
        )
    return out


def stop_timeout(config: Config) -> int:
    """TimeoutStopSec: the drain grace, plus one whole platform exchange (the HTTP client caps
    it at three times the per-call timeout), plus room to hand back leases and close."""
    return math.ceil(
        config.daemon.shutdown_grace_seconds + 3 * config.provider.timeout_seconds + 10
    )


def exec_start(config_path: str | None) -> str:
    """The command systemd runs: this installation's own entry point, by absolute path."""
    script = Path(sys.executable).with_name("cdc-invoice")
    program = [str(script)] if script.exists() else [sys.executable, "-m", "cdc_invoice"]
    args = [*program, "run"]
    if config_path:
        args += ["--config", str(Path(config_path).resolve())]
    return shlex.join(args)


def unit_file(config: Config, config_path: str | None, user: str = "cdc-invoice") -> str:
    start = exec_start(config_path)
    program = shlex.split(start)[0]
    creds = credentials_of(config)
    under_home = program.startswith(("/home/", "/root/"))
    lines = [
        "# cdc-invoice daemon. Install: see docs/operator-guide.md (systemd).",
        "[Unit]",
        "Description=cdc-invoice: e-invoices for completed orders",
        "Wants=network-online.target",
        "After=network-online.target postgresql.service",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={start}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        # READY=1 comes after LISTEN and the first claim sweep; WATCHDOG=1 from the claim loop.
        f"WatchdogSec={WATCHDOG_SECONDS}",
        "Restart=always",
        f"RestartSec={RESTART_SECONDS}",
        "TimeoutStartSec=120",
        f"TimeoutStopSec={stop_timeout(config)}",
        f"User={user}",
        f"Group={user}",
        "",
        "# Secrets: systemd copies each file (root-only on disk) to $CREDENTIALS_DIRECTORY,",
        "# readable by this service alone; the daemon is pointed at the copy.",
    ]
    for c in creds:
        lines.append(f"LoadCredential={c.name}:{c.source}")
        if c.env:
            lines.append(f"Environment={c.env}=%d/{c.name}")
        else:
            lines.append(
                f"# set this seller's app_secret_file to {CREDENTIALS_DIR}/{c.name} in the config"
            )
    if not creds:
        lines.append("# (no secret files in the config: add LoadCredential=NAME:/path lines)")
    lines += [
        "",
        "# Hardening: the daemon needs TCP to PostgreSQL and the platform, nothing else.",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        # A program installed under /home must stay readable; the rest of /home need not be.
        f"ProtectHome={'read-only' if under_home else 'yes'}",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "PrivateMounts=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RemoveIPC=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        "SystemCallErrorNumber=EPERM",
        # CPython and our compiled dependencies (psycopg, cryptography, aiohttp) need no memory
        # that is writable and executable; a dependency using cffi/ctypes callbacks would.
        "MemoryDenyWriteExecute=yes",
        "UMask=0077",
        "LimitNOFILE=8192",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"
