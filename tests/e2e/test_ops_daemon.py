"""The daemon as a service, as a real process: sd_notify, /metrics, /healthz, SIGHUP, logs."""

from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import itertools
import json
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from cdc_invoice import demo, harness

StartDaemon = Callable[..., harness.Proc]


class NotifySocket:
    """A unix datagram socket standing in for systemd: records (monotonic time, message)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, prefix: str, timeout: float = 30.0) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, m in list(self.messages):
                if m.startswith(prefix):
                    return t, m
            time.sleep(0.02)
        raise AssertionError(f"no {prefix} within {timeout}s: {self.messages}")

    def times(self, message: str) -> list[float]:
        return [t for t, m in list(self.messages) if m == message]

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    short = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))  # sun_path holds 107 bytes
    ns = NotifySocket(str(short / "notify"))
    yield ns
    ns.close()
    shutil.rmtree(short, ignore_errors=True)


def wait_invoices(dsn: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM cdc_invoice.request WHERE state IN ('done', 'failed')"
            ).fetchone()
            if row and row[0] >= n:
                return
            time.sleep(0.1)
    raise AssertionError(f"{n} requests not finished within {timeout}s")


def wait_log(proc: harness.Proc, pattern: str, timeout: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, proc.output())
        if m:
            return m
        if not proc.alive():
            break
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not logged:\n{proc.output()[-3000:]}")


def test_ready_after_listen_and_sweep_then_watchdog_reload_stopping(
    shop_dsn: str, sandbox: harness.Sandbox, tmp_path: Path, notify: NotifySocket
) -> None:
    # An order committed before the daemon starts: READY must come only after it was swept.
    [early] = demo.ship_orders(shop_dsn, 1)
    config = harness.write_config(tmp_path / "d.toml", dsn=shop_dsn, sandbox=sandbox)
    daemon = harness.start_daemon(
        config, env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "2000000"}
    )
    try:
        t_ready, ready = notify.wait_for("READY=1")
        with psycopg.connect(shop_dsn) as conn:
            state = conn.execute(
                "SELECT state FROM cdc_invoice.request WHERE order_ref = %s", (str(early),)
            ).fetchone()
        assert state is not None and state[0] != "pending"
        out = daemon.output()
        assert out.index("listening on channel") < out.index("ready: LISTEN up")
        assert re.match(r"READY=1\nSTATUS=\d+ in flight; recorded \d+ .*LISTEN up$", ready), ready
        assert not notify.times("WATCHDOG=1") or min(notify.times("WATCHDOG=1")) > t_ready - 1.5

        time.sleep(2.2)
        pings = [t for t in notify.times("WATCHDOG=1") if t > t_ready]
        assert len(pings) >= 3, notify.messages
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) <= 1.0  # at most half of WATCHDOG_USEC apart

        daemon.popen.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1\nMONOTONIC_USEC=")
        deadline = time.monotonic() + 10
        while len([m for _, m in notify.messages if m.startswith("READY=1")]) < 2:
            assert time.monotonic() < deadline, notify.messages
            time.sleep(0.05)
        wait_log(daemon, "SIGHUP: configuration reloaded")
        assert daemon.stop() == 0
        _, stopping = notify.wait_for("STOPPING=1")
        assert "draining" in stopping
    finally:
        daemon.stop()


def test_abstract_socket_and_a_watchdog_meant_for_another_pid(
    shop_dsn: str, sandbox: harness.Sandbox, tmp_path: Path
) -> None:
    ns = NotifySocket(f"@cdc-invoice-test-{uuid.uuid4().hex}")
    config = harness.write_config(tmp_path / "d.toml", dsn=shop_dsn, sandbox=sandbox)
    # WATCHDOG_PID names someone else (e.g. inherited from a parent): no pings from us.
    daemon = harness.start_daemon(
        config,
        env={"NOTIFY_SOCKET": ns.address, "WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"},
    )
    try:
        ns.wait_for("READY=1")
        time.sleep(1.0)
        assert notify_free_of_watchdog(ns), ns.messages
        assert daemon.stop() == 0
        ns.wait_for("STOPPING=1")
    finally:
        daemon.stop()
        ns.close()


def notify_free_of_watchdog(ns: NotifySocket) -> bool:
    return not ns.times("WATCHDOG=1")


def _self_signed(path: Path, days: int) -> float:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test platform CA")])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return (now + dt.timedelta(days=days)).timestamp()


FAILED_GAUGE = ("cdc_invoice_requests", (("kind", "issue"), ("state", "failed")))


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def start_with_metrics(
    dsn: str, sb: harness.Sandbox, tmp_path: Path, name: str = "daemon", **settings: object
) -> tuple[harness.Proc, str, Path]:
    path = tmp_path / f"{name}.toml"
    harness.write_config(
        path, dsn=dsn, sandbox=sb, daemon={"metrics_listen": "127.0.0.1:0", **settings}
    )
    proc = harness.start_daemon(path, name=name)
    url = wait_log(proc, r"metrics at (http://\S+)/metrics").group(1)
    return proc, url, path


def test_metrics_and_healthz(shop_dsn: str, sandbox: harness.Sandbox, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    not_after = _self_signed(ca, 30)
    config = tmp_path / "d.toml"
    harness.write_config(
        config, dsn=shop_dsn, sandbox=sandbox, daemon={"metrics_listen": "127.0.0.1:0"}
    )
    config.write_text(config.read_text().replace("[provider]\n", f'[provider]\nca_file = "{ca}"\n'))
    daemon = harness.start_daemon(config)
    try:
        url = wait_log(daemon, r"metrics at (http://\S+)/metrics").group(1)
        with psycopg.connect(shop_dsn, autocommit=True) as conn:
            # An order without lines fails: it shows in requests{state="failed"}.
            conn.execute("INSERT INTO shop.orders (customer_id, status) VALUES ('C001', 'shipped')")
        demo.ship_orders(shop_dsn, 5)
        wait_invoices(shop_dsn, 6)
        m = scrape(url)  # the first read of the database figures: all six are in
        assert (
            m[("cdc_invoice_platform_calls_total", (("code", "E0000"), ("method", "issue")))] == 5
        )
        assert m[("cdc_invoice_requests_recorded_total", (("kind", "issue"),))] == 5
        assert m[("cdc_invoice_issue_latency_seconds_count", (("kind", "issue"),))] == 5
        assert 0 < m[("cdc_invoice_issue_latency_seconds_sum", (("kind", "issue"),))] < 5 * 30
        failed = [v for (n, lab), v in m.items() if n == "cdc_invoice_requests_failed_total"]
        assert sum(failed) == 1
        assert m[FAILED_GAUGE] == 1
        assert m[("cdc_invoice_backlog_requests", ())] == 0
        assert m[("cdc_invoice_backlog_oldest_age_seconds", ())] == 0
        assert m[("cdc_invoice_live_daemons", ())] == 1
        assert m[("cdc_invoice_listener_connected", ())] == 1
        assert m[("cdc_invoice_inflight_requests", ())] == 0
        assert m[("cdc_invoice_schema_version_match", ())] == 1
        assert m[("cdc_invoice_db_up", ())] == 1
        with psycopg.connect(shop_dsn) as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM expires_at)::float8 FROM cdc_invoice.provider_token"
            ).fetchone()
        assert row is not None
        app = (("app_key", sandbox.app_key),)
        assert m[("cdc_invoice_token_expiry_timestamp_seconds", app)] == pytest.approx(row[0])
        assert m[("cdc_invoice_token_fetches_30d", app)] == 1
        assert m[("cdc_invoice_token_fetches_remaining", app)] == 49
        cert = [
            (lab, v)
            for (n, lab), v in m.items()
            if n == "cdc_invoice_certificate_expiry_timestamp_seconds"
        ]
        assert cert == [((("file", str(ca)), ("subject", "CN=test platform CA")), not_after)]
        assert any(n == "cdc_invoice_daemon_info" for n, _ in m)

        # A scrape storm is served from the cache: one database read at most.
        before = m[("cdc_invoice_db_snapshot_refreshes_total", ())]

        async def storm() -> list[int]:
            async with httpx.AsyncClient(timeout=10) as client:
                replies = await asyncio.gather(*(client.get(url + "/metrics") for _ in range(50)))
            return [r.status_code for r in replies]

        assert asyncio.run(storm()) == [200] * 50
        after = scrape(url)[("cdc_invoice_db_snapshot_refreshes_total", ())]
        assert after - before <= 1

        health = httpx.get(url + "/healthz", timeout=10)
        assert health.status_code == 200, health.text
        body = health.json()
        assert body["status"] == "ok"
        assert set(body["checks"]) == {
        "database", "schema", "listen", "claim_loop", "platform", "quota"
    }  # fmt: skip
        assert "E0000" in body["checks"]["platform"]["detail"]

        # A schema this daemon does not know: /healthz says so with a 503.
        with psycopg.connect(shop_dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO cdc_invoice.schema_version (version, description) VALUES (99, 'future')"
            )
        deadline = time.monotonic() + 10
        while (health := httpx.get(url + "/healthz", timeout=10)).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert health.status_code == 503
        assert health.json()["checks"]["schema"] == {
            "status": "fail",
            "detail": "installed 99, needs " + str(body["checks"]["schema"]["detail"].split()[-1]),
        }
        assert httpx.get(url + "/nope", timeout=10).status_code == 404
    finally:
        daemon.stop()


def test_metrics_port_in_use_is_a_clear_error(
    shop_dsn: str, sandbox: harness.Sandbox, tmp_path: Path
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        config = harness.write_config(
            tmp_path / "d.toml",
            dsn=shop_dsn,
            sandbox=sandbox,
            daemon={"metrics_listen": f"127.0.0.1:{port}"},
        )
        proc = harness.start_daemon(config)
        assert proc.popen.wait(30) == 2
        out = proc.output()
        assert f"cannot listen on 127.0.0.1:{port}" in out and "fix: pick a free port" in out
    finally:
        taken.close()


def test_sighup_applies_what_it_can_and_names_what_needs_a_restart(
    shop_dsn: str, sandbox: harness.Sandbox, tmp_path: Path
) -> None:
    daemon, url, path = start_with_metrics(shop_dsn, sandbox, tmp_path, concurrency=4)
    try:
        assert scrape(url)[("cdc_invoice_concurrency", ())] == 4
        text = path.read_text()
        path.write_text(
            text.replace("concurrency = 4", "concurrency = 7").replace(
                "timeout_seconds = 2.0", "timeout_seconds = 3.0"
            )
            + 'log_format = "json"\n'
        )
        daemon.popen.send_signal(signal.SIGHUP)
        line = wait_log(daemon, r"\{[^\n]*SIGHUP: configuration reloaded[^\n]*\}").group(0)
        assert "daemon.concurrency" in json.loads(line)["msg"]
        warning = wait_log(daemon, r"\{[^\n]*restart[^\n]*\}").group(0)
        assert "provider.timeout_seconds" in json.loads(warning)["msg"]
        assert scrape(url)[("cdc_invoice_concurrency", ())] == 7

        # A broken file is refused and the running configuration stays.
        path.write_text("[daemon\n")
        daemon.popen.send_signal(signal.SIGHUP)
        wait_log(daemon, "configuration not reloaded, the running one stays")
        demo.ship_orders(shop_dsn, 2)
        wait_invoices(shop_dsn, 2)
        assert scrape(url)[("cdc_invoice_requests_recorded_total", (("kind", "issue"),))] == 2
        assert daemon.stop() == 0
    finally:
        daemon.stop()


def test_info_logs_carry_no_order_payloads(
    shop_dsn: str, sandbox: harness.Sandbox, tmp_path: Path
) -> None:
    config = harness.write_config(tmp_path / "d.toml", dsn=shop_dsn, sandbox=sandbox)
    daemon = harness.spawn(
        [*harness._python(), "--log-format", "json", "run", "--config", str(config)], "daemon"
    )
    try:
        with psycopg.connect(shop_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO shop.orders (customer_id, status) VALUES ('C002', 'shipped')")
        demo.ship_orders(shop_dsn, 5)
        wait_invoices(shop_dsn, 6)
        assert daemon.stop() == 0
    finally:
        daemon.stop()
    lines = [json.loads(x) for x in daemon.output().splitlines() if x.startswith("{")]
    assert lines and {x["level"] for x in lines} <= {"info", "warning", "error"}
    text = daemon.output()
    for private in (
        sandbox.app_secret,
        "91310115MA1K0002AB",  # a buyer's tax number
        "上海样板科技有限公司",  # a buyer's name
        "笔记本电脑",  # an item
        "ap@example.com",
    ):
        assert private not in text, private
    assert any("daemon_id" in x for x in lines)


def _mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(66, 0, 0, 0, 0)) >= 0  # PR_GET_MDWE, Linux 6.3+


def test_daemon_works_without_writable_executable_memory(
    shop_dsn: str, sandbox: harness.Sandbox, tmp_path: Path
) -> None:
    """The unit sets MemoryDenyWriteExecute=yes; the kernel's PR_SET_MDWE enforces the same
    rule (no W+X mapping, no mprotect to executable) and survives exec, so run the daemon
    under it and issue real invoices."""
    assert _mdwe_supported(), "this test needs Linux >= 6.3 (PR_SET_MDWE), as on CI's machines"
    config = harness.write_config(tmp_path / "d.toml", dsn=shop_dsn, sandbox=sandbox)
    wrapper = (
        "import ctypes, os, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.prctl(65, 1, 0, 0, 0) == 0, ctypes.get_errno()\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'cdc_invoice', 'run', '--config', sys.argv[1]])\n"
    )
    daemon = harness.spawn([harness._python()[0], "-c", wrapper, str(config)], "mdwe-daemon")
    try:
        orders = demo.ship_orders(shop_dsn, 5)
        wait_invoices(shop_dsn, 5)
        assert daemon.stop() == 0, daemon.output()
        assert demo.verify_invoices(shop_dsn, orders, sandbox) == []
    finally:
        daemon.stop()
    # The control: under the same rule a cffi callback (which needs W+X memory) fails.
    control = (
        "import ctypes, cffi\n"
        "assert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0\n"
        "cffi.FFI().callback('int(int)', lambda x: x)\n"
    )
    done = subprocess.run([harness._python()[0], "-c", control], capture_output=True, text=True)
    assert done.returncode != 0 and "Cannot allocate write+execute memory" in done.stderr
