"""TLS verification is on by default: a platform with an unknown CA is refused until its CA
is configured (provider.ca_file)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cdc_invoice import demo, harness
from cdc_invoice.invoice.model import Seller
from cdc_invoice.providers.nuonuo import Credentials, MemoryTokenStore, NuonuoProvider
from tests.bench import loadgen

StartDaemon = Callable[..., harness.Proc]


def make_ca_and_server_cert(folder: Path) -> tuple[Path, Path, Path]:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cdc-invoice test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "server.pem", folder / "server.key", folder / "ca.pem"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths[1].chmod(0o600)
    paths[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths


@pytest.fixture
def tls_sandbox(tmp_path: Path) -> Iterator[harness.Sandbox]:
    sb = harness.start_sandbox(tmp_path / "sb", tls=make_ca_and_server_cert(tmp_path))
    yield sb
    sb.proc.stop()


def test_daemon_refuses_an_unknown_ca_and_accepts_the_configured_one(
    shop_dsn: str, tls_sandbox: harness.Sandbox, tmp_path: Path
) -> None:
    assert tls_sandbox.url.startswith("https://")
    untrusting = harness.start_daemon(
        harness.write_config(tmp_path / "a.toml", dsn=shop_dsn, sandbox=tls_sandbox)
    )
    orders = demo.ship_orders(shop_dsn, 3)
    try:
        deadline = time.monotonic() + 20
        errors: list[str] = []
        while time.monotonic() < deadline and not errors:
            with psycopg.connect(shop_dsn) as conn:
                errors = [
                    r[0]
                    for r in conn.execute(
                        "SELECT last_error FROM cdc_invoice.request WHERE last_error IS NOT NULL"
                    )
                ]
            time.sleep(0.2)
    finally:
        untrusting.stop()
    assert errors and "certificate" in errors[0].lower(), errors
    assert tls_sandbox.invoices() == []  # nothing reached the platform

    trusting = harness.start_daemon(
        harness.write_config(
            tmp_path / "b.toml",
            dsn=shop_dsn,
            sandbox=tls_sandbox,
            provider={"ca_file": str(tls_sandbox.verify)},
            daemon={"max_backoff_seconds": 1.0},
        )
    )
    try:
        with psycopg.connect(shop_dsn, autocommit=True) as conn:
            conn.execute("UPDATE cdc_invoice.request SET run_after = now()")  # skip the backoff
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if demo.verify_invoices(shop_dsn, orders, tls_sandbox) == []:
                break
            time.sleep(0.3)
        # The archiver fetches the invoice files over the same TLS, trusting the same CA.
        while time.monotonic() < deadline:
            with psycopg.connect(shop_dsn) as conn:
                kept = conn.execute(
                    "SELECT count(*) FROM cdc_invoice.invoice_file WHERE check_result = 'ok' "
                    "AND source_url LIKE 'https://%'"
                ).fetchone()
            if kept == (9,):
                break
            time.sleep(0.3)
    finally:
        trusting.stop()
    assert demo.verify_invoices(shop_dsn, orders, tls_sandbox) == []
    assert kept == (9,), trusting.output()[-3000:]


async def test_an_https_platform_is_reached_through_an_environment_proxy(
    tls_sandbox: harness.Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY with credentials, as an office network has it: the client opens a CONNECT
    tunnel through the proxy (credentials on the CONNECT, never inside the tunnel) and verifies
    the platform's certificate end to end."""
    seen: list[bytes] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def connect_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        host, _, port = head.split(b" ")[1].decode().rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    proxy = await asyncio.start_server(connect_proxy, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    monkeypatch.setenv("HTTPS_PROXY", f"http://ops:s3cret@127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    seller = Seller(
        seller_id="main", tax_number=harness.SELLER_TAX_NUMBER, name="proxy test", clerk="张三"
    )
    provider = NuonuoProvider(
        base_url=tls_sandbox.url,
        token_url=tls_sandbox.token_url,
        credentials={"main": Credentials(tls_sandbox.app_key, tls_sandbox.app_secret)},
        token_store=MemoryTokenStore(),
        verify=str(tls_sandbox.verify),
    )
    try:
        accepted = await provider.issue(seller, loadgen.draft(seller, "p-1"), "PROXYTEST0000000001")
        found = await provider.query_by_serials(seller, [accepted.serial])
    finally:
        await provider.aclose()
        proxy.close()
    assert [f.serial for f in found] == [accepted.serial]
    assert seen and all(h.startswith(b"CONNECT 127.0.0.1:") for h in seen)
    assert b"Proxy-Authorization: Basic b3BzOnMzY3JldA==\r\n" in seen[0]  # ops:s3cret
