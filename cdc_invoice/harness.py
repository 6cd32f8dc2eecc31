"""Run the sandbox platform and daemons as real processes (demo, tests, benchmarks, chaos).

Everything here is what an operator would do by hand: write a secret file (mode 600) and a
TOML config, start `cdc-invoice sandbox` and `cdc-invoice run`, stop them with SIGTERM.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

SELLER_TAX_NUMBER = "339902999999789113"  # the Nuonuo sandbox's published test seller
APP_KEY = "demo-app"


def _python() -> list[str]:
    return [sys.executable, "-m", "cdc_invoice"]


def write_secret(path: Path, value: str | None = None) -> str:
    value = value or secrets.token_hex(16)
    path.write_text(value, encoding="utf-8")
    path.chmod(0o600)
    return value


@dataclass
class Proc:
    """A child process whose output is collected in the background (and echoed if asked)."""

    popen: subprocess.Popen[str]
    name: str
    lines: list[str] = field(default_factory=list)
    echo: IO[str] | None = None

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)
            if self.echo is not None:
                self.echo.write(f"[{self.name}] {line}")

    def start_pump(self) -> None:
        threading.Thread(target=self._pump, daemon=True, name=f"pump-{self.name}").start()

    def output(self) -> str:
        return "".join(self.lines)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait(timeout)

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
        self.popen.wait(10)


def spawn(
    args: list[str], name: str, env: Mapping[str, str] | None = None, echo: IO[str] | None = None
) -> Proc:
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    popen = subprocess.Popen(  # noqa: S603 - our own program, fixed arguments
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=full_env,
        start_new_session=True,
    )
    proc = Proc(popen, name, echo=echo)
    proc.start_pump()
    return proc


@dataclass
class Sandbox:
    proc: Proc
    url: str
    app_key: str
    app_secret: str
    secret_file: Path
    state_file: Path
    verify: bool | str = True  # a CA file when the sandbox serves HTTPS with its own CA

    @property
    def token_url(self) -> str:
        """The sandbox's token endpoint (the provider's default is the real platform's host)."""
        return f"{self.url}/accessToken"

    def _verify(self) -> bool | ssl.SSLContext:
        return (
            ssl.create_default_context(cafile=self.verify) if isinstance(self.verify, str) else True
        )

    def invoices(self, **params: str) -> list[dict[str, Any]]:
        r = httpx.get(
            f"{self.url}/_sandbox/invoices", params=params, timeout=30, verify=self._verify()
        )
        r.raise_for_status()
        data = r.json()
        return list(data["invoices"] if isinstance(data, dict) else data)

    def configure(self, **settings: Any) -> None:
        r = httpx.post(
            f"{self.url}/_sandbox/config", json=settings, timeout=10, verify=self._verify()
        )
        r.raise_for_status()


def start_sandbox(
    workdir: Path,
    *,
    port: int = 0,
    issue_delay_ms: int = 200,
    latency_ms: int = 0,
    extra: list[str] | None = None,
    echo: IO[str] | None = None,
    secret: str | None = None,
    timeout: float = 30.0,
    tls: tuple[Path, Path, Path] | None = None,
) -> Sandbox:
    """Start `cdc-invoice sandbox`; tls = (cert, key, CA file) serves HTTPS."""
    workdir.mkdir(parents=True, exist_ok=True)
    secret_file = workdir / "sandbox-app-secret"
    secret_value = write_secret(secret_file, secret)
    state = workdir / "sandbox-state.sqlite"
    args = [
        *_python(),
        "sandbox",
        "--listen",
        f"127.0.0.1:{port}",
        "--state",
        str(state),
        "--app-key",
        APP_KEY,
        "--app-secret-file",
        str(secret_file),
        "--seller-tax-number",
        SELLER_TAX_NUMBER,
        "--issue-delay-ms",
        str(issue_delay_ms),
        "--latency-ms",
        str(latency_ms),
        *(extra or []),
    ]
    if tls:
        args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    proc = spawn(args, "sandbox", echo=echo)
    deadline = time.monotonic() + timeout
    pattern = re.compile(r"listening on (http\S+)")
    while time.monotonic() < deadline:
        for line in list(proc.lines):
            m = pattern.search(line)
            if m:
                verify: bool | str = str(tls[2]) if tls else True
                url = m.group(1).rstrip("/")
                return Sandbox(proc, url, APP_KEY, secret_value, secret_file, state, verify)
        if not proc.alive():
            raise RuntimeError(f"the sandbox exited:\n{proc.output()}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the sandbox did not start within {timeout}s:\n{proc.output()}")


def write_config(
    path: Path,
    *,
    dsn: str,
    sandbox: Sandbox,
    daemon: Mapping[str, Any] | None = None,
    seller_id: str = "main",
    timeout_seconds: float = 2.0,
    provider: Mapping[str, Any] | None = None,
) -> Path:
    """A daemon config file (TOML) pointing at ``dsn`` and the sandbox."""

    def toml_value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "[database]",
        f"dsn = {toml_value(dsn)}",
        "",
        "[provider]",
        'kind = "nuonuo"',
        f"base_url = {toml_value(sandbox.url)}",
        # the sandbox serves its own token endpoint; the default is the real platform's host
        *(
            [f"token_url = {toml_value(sandbox.url + '/accessToken')}"]
            if "token_url" not in (provider or {})
            else []
        ),
        f"timeout_seconds = {timeout_seconds!r}",
        *(f"{k} = {toml_value(v)}" for k, v in (provider or {}).items()),
        "",
        f"[provider.credentials.{seller_id}]",
        f"app_key = {toml_value(sandbox.app_key)}",
        f"app_secret_file = {toml_value(str(sandbox.secret_file))}",
        "",
        "[daemon]",
    ]
    for key, value in {
        "poll_interval": 0.5,
        "result_poll_seconds": 0.2,
        "lease_seconds": 10.0,
        "shutdown_grace_seconds": 10.0,
        **(daemon or {}),
    }.items():
        lines.append(f"{key} = {toml_value(value)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def start_daemon(
    config: Path,
    *,
    name: str = "daemon",
    env: Mapping[str, str] | None = None,
    echo: IO[str] | None = None,
    verbose: bool = True,
) -> Proc:
    args = [*_python(), *(["-v"] if verbose else []), "run", "--config", str(config)]
    return spawn(args, name, env=env, echo=echo)
