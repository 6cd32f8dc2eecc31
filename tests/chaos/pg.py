"""A PostgreSQL server of the chaos run's own, which it may stop, crash and restart at will.

The test suite's embedded server (pgserver) cannot be restarted under a running daemon, and the
machine's server must not be, so the harness runs initdb/pg_ctl itself:

* binaries: ``$CDC_INVOICE_CHAOS_PG_BINDIR`` if set (e.g. ``$(pg_config --bindir)``), else the
  ones the pgserver wheel ships (a project dependency, so ``make`` always installs them) when
  the server user can reach them, else ``$(pg_config --bindir)``, else a copy of pgserver's;
* as root (CI), the server runs as an unprivileged OS user -- ``postgres`` if it exists, else
  ``pgserver`` (the user the embedded test server creates) -- because postgres refuses root;
* data directory in a temporary directory owned by that user; TCP on 127.0.0.1 only (the
  daemons reach it through the harness's TCP proxy), trust authentication, fsync off (a process
  crash -- ``-m immediate`` -- still exercises WAL recovery; only an OS crash would need fsync).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_bindir() -> Path:
    env = os.environ.get("CDC_INVOICE_CHAOS_PG_BINDIR")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("pgserver")
    shipped = (
        Path(spec.origin).parent / "pginstall" / "bin"
        if spec is not None and spec.origin is not None
        else None
    )
    if shipped is not None and (shipped / "pg_ctl").exists() and _reachable(shipped):
        return shipped
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
        return Path(out.stdout.strip())
    if shipped is not None and (shipped / "pg_ctl").exists():
        return _copy_for_others(shipped.parent) / "bin"
    raise RuntimeError(
        "no PostgreSQL binaries: install the project (make) or set CDC_INVOICE_CHAOS_PG_BINDIR"
    )


def _reachable(path: Path) -> bool:
    """Whether the unprivileged server user can run binaries under ``path``: as root, every
    folder above it must let others in (a checkout in ``mktemp -d`` is 0700)."""
    if os.geteuid() != 0:
        return True
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def _copy_for_others(install: Path) -> Path:
    """pgserver's PostgreSQL tree copied where the server user can reach it (bin/ finds lib/
    and share/ beside it)."""
    target = Path(tempfile.mkdtemp(prefix="cdc-chaos-pg-"))
    target.chmod(0o755)
    shutil.copytree(install, target / "pginstall", symlinks=True)
    return target / "pginstall"


def _server_user() -> pwd.struct_passwd | None:
    """The OS user to run the server as (None: ourselves, when not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "pgserver"], check=True)
    return pwd.getpwnam("pgserver")


class PgCluster:
    """initdb + pg_ctl start/stop/restart on 127.0.0.1:<port>."""

    def __init__(self, workdir: Path | None = None, *, port: int | None = None) -> None:
        self.bindir = find_bindir()
        self.user = _server_user()
        self.root = Path(workdir or tempfile.mkdtemp(prefix="cdc-chaos-pg-", dir="/tmp"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = port or free_port()
        self.restarts: dict[str, int] = {"fast": 0, "immediate": 0}
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
            self.root.chmod(0o755)

    # -- running the binaries as the server's user ---------------------------------------
    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
            check=False,
            **kwargs,
        )

    def _check(self, res: subprocess.CompletedProcess[str], what: str) -> None:
        if res.returncode != 0:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{what} failed ({res.returncode}):\n{res.stdout}{res.stderr}{tail}")

    # -- lifecycle ---------------------------------------------------------------------------
    def init(self) -> None:
        res = self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        self._check(res, "initdb")
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as f:
            f.write(
                "\n# chaos harness\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "max_connections = 200\n"
                "fsync = off\n"
                "shared_buffers = 64MB\n"
                "log_min_messages = warning\n"
                "log_connections = off\n"
            )

    def start(self, timeout: float = 60) -> None:
        res = self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            timeout=timeout + 10,
        )
        self._check(res, "pg_ctl start")
        self.wait_ready(timeout)

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        res = self._run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
            timeout=timeout,
        )
        if res.returncode != 0 and "not running" not in (res.stdout + res.stderr).lower():
            self._check(res, f"pg_ctl stop -m {mode}")

    def restart(self, mode: str, down_seconds: float = 0.0) -> None:
        """Stop with ``mode`` (fast: clean; immediate: like a crash, WAL recovery on start)."""
        self.stop(mode)
        self.restarts[mode] = self.restarts.get(mode, 0) + 1
        if down_seconds:
            time.sleep(down_seconds)
        self.start()

    def running(self) -> bool:
        res = self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"])
        return res.returncode == 0

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def dsn(self, dbname: str, port: int | None = None) -> str:
        return f"host=127.0.0.1 port={port or self.port} user=postgres dbname={dbname}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
