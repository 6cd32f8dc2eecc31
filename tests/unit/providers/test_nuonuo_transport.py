"""The client's HTTP engine (aiohttp under httpx) over real sockets, failure by failure.

A raw asyncio server plays the platform and misbehaves on purpose. Each failure must land on
the right side of the one question the client asks: could the platform have acted on the
request? Nothing written yet → ProviderUnavailable; an issue written and no complete answer →
OutcomeUnknown (a query is always ProviderUnavailable).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from cdc_invoice.errors import OutcomeUnknown, ProviderError, ProviderUnavailable
from cdc_invoice.invoice.model import InvoiceDraft, Seller
from cdc_invoice.providers.nuonuo import NuonuoProvider
from cdc_invoice.providers.nuonuo.transport import AiohttpTransport

TOKEN = json.dumps({"access_token": "t0k3n", "expires_in": "86400"}).encode()
ISSUED = json.dumps(
    {"code": "E0000", "describe": "开票提交成功", "result": {"invoiceSerialNum": "S1"}},
    ensure_ascii=False,
).encode()


@dataclass
class Platform:
    """Answers the token endpoint properly and the gateway as ``gateway`` says."""

    gateway: str = "ok"
    connections: int = 0
    requests: list[tuple[bytes, dict[str, str], bytes]] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                line, *rest = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (h.partition(":") for h in rest if h)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((line.encode(), headers, body))
                if "/accessToken" in line:
                    writer.write(_answer(TOKEN, b"Set-Cookie: session=abc; Path=/\r\n"))
                elif not await self._gateway(writer):
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _gateway(self, writer: asyncio.StreamWriter) -> bool:
        """Write the gateway's answer; False closes the connection."""
        if self.gateway == "ok":
            writer.write(_answer(ISSUED))
        elif self.gateway == "gzip":
            writer.write(_answer(gzip.compress(ISSUED), b"Content-Encoding: gzip\r\n"))
        elif self.gateway == "redirect":
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n")
        elif self.gateway == "close":  # read the request, then hang up without a word
            return False
        elif self.gateway == "truncated":  # promise 100 bytes, send 10, hang up
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + ISSUED[:10])
            await writer.drain()
            return False
        elif self.gateway == "reset":  # an RST instead of an answer
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        elif self.gateway == "garbage":
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            await writer.drain()
            return False
        elif self.gateway == "endless":  # chunked, never ends
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(10_000):
                writer.write(b"64\r\n" + b"x" * 100 + b"\r\n")
                await writer.drain()
            return False
        elif self.gateway == "trickle":  # an answer a byte at a time, each within the read timeout
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(1000):
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.05)
            return False
        elif self.gateway == "hang":
            await asyncio.sleep(30)
            return False
        return True


def _answer(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json;charset=UTF-8\r\n"
        + extra
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


@asynccontextmanager
async def serving(gateway: str = "ok") -> AsyncIterator[tuple[Platform, str]]:
    """The misbehaving platform on a free port, in the test's own event loop."""
    p = Platform(gateway)
    server = await asyncio.start_server(p.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield p, f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in p.tasks:  # a hanging answer must not outlive its test
            task.cancel()
        await asyncio.gather(*p.tasks, return_exceptions=True)


@pytest.fixture
def real(make_provider: Callable[..., NuonuoProvider]) -> Callable[..., NuonuoProvider]:
    """A provider with the production HTTP engine (no injected transport)."""

    def build(base_url: str, **kwargs: Any) -> NuonuoProvider:
        kwargs.setdefault("token_url", base_url.rstrip("/") + "/accessToken")
        return make_provider(base_url=base_url, transport=None, **kwargs)

    return build


async def test_answers_arrive_over_one_kept_alive_connection_without_cookies(
    real: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
) -> None:
    async with serving() as (p, url), real(url) as provider:
        for n in range(3):
            accepted = await provider.issue(seller, special_draft, f"o-{n}")
            assert accepted.serial == "S1"
    assert p.connections == 1  # token + 3 issues, one keep-alive connection
    assert len(p.requests) == 4
    for _, headers, _ in p.requests[1:]:
        assert "cookie" not in headers  # the token answer's Set-Cookie is never sent back
        assert headers["user-agent"].startswith("cdc-invoice/")
        assert headers["host"] == url.removeprefix("http://")
    line, headers, body = p.requests[1]
    assert line.startswith(b"POST /open/v1/services")
    # header names go out as httpx built them (the signature headers included), not lower-cased
    assert b"\r\nUser-Agent: " in p.heads[1] and b"\r\nContent-Type: " in p.heads[1]
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body)  # the signed business JSON, as sent


async def test_a_gzip_answer_is_decoded(
    real: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
) -> None:
    async with serving("gzip") as (_p, url), real(url) as provider:
        assert (await provider.issue(seller, special_draft, "o-1")).serial == "S1"


async def test_nothing_listening_is_unavailable_for_issue_too(
    real: Callable[..., NuonuoProvider], seller: Seller, special_draft: InvoiceDraft
) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with real(f"http://127.0.0.1:{port}") as provider:
        with pytest.raises(ProviderUnavailable, match="cannot reach") as info:
            await provider.issue(seller, special_draft, "o-1")
    assert isinstance(info.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize(
    ("gateway", "cause"),
    [
        ("close", httpx.RemoteProtocolError),
        ("truncated", httpx.ReadError),
        ("reset", httpx.HTTPError),  # a reset or a disconnect, as the kernel reports it
        ("garbage", httpx.RemoteProtocolError),
        ("hang", httpx.ReadTimeout),
    ],
)
async def test_a_sent_issue_without_a_complete_answer_is_outcome_unknown(
    real: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
    gateway: str,
    cause: type[httpx.HTTPError],
) -> None:
    async with serving(gateway) as (p, url), real(url, timeout=0.3) as provider:
        with pytest.raises(OutcomeUnknown) as issue:
            await provider.issue(seller, special_draft, "o-1")
        with pytest.raises(ProviderUnavailable) as query:
            await provider.query_by_serials(seller, ["S1"])
    for error in (issue.value, query.value):
        assert isinstance(error.__cause__, cause), repr(error.__cause__)
    assert any(b"/open/v1/services" in line for line, _, _ in p.requests)


async def test_a_trickling_answer_meets_the_transports_overall_deadline() -> None:
    # Each byte arrives well within the read timeout (5 s), the whole would take 50 s: only an
    # overall deadline (aiohttp's ClientTimeout.total) ends it, as a read timeout: maybe sent.
    async with serving("trickle") as (p, url):
        transport = AiohttpTransport(max_connections=1, total_timeout=0.5)
        async with httpx.AsyncClient(transport=transport, timeout=5) as http:
            started = asyncio.get_running_loop().time()
            with pytest.raises(httpx.ReadTimeout, match="deadline"):
                await http.post(f"{url}/open/v1/services", content=b"{}")
            elapsed = asyncio.get_running_loop().time() - started
    assert 0.4 < elapsed < 3, elapsed
    assert any(b"/open/v1/services" in line for line, _, _ in p.requests)


async def test_a_trickling_issue_answer_is_outcome_unknown_by_the_deadline(
    real: Callable[..., NuonuoProvider], seller: Seller, special_draft: InvoiceDraft
) -> None:
    async with serving("trickle") as (_p, url), real(url, timeout=0.3) as provider:
        started = asyncio.get_running_loop().time()
        with pytest.raises(OutcomeUnknown):
            await provider.issue(seller, special_draft, "o-1")
        assert asyncio.get_running_loop().time() - started < 5


async def test_a_redirect_is_not_followed(
    real: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
) -> None:
    async with serving("redirect") as (p, url), real(url) as provider:
        with pytest.raises(OutcomeUnknown):
            await provider.issue(seller, special_draft, "o-1")
    assert not any(b"/elsewhere" in line for line, _, _ in p.requests)


async def test_an_endless_answer_is_cut_at_the_size_bound(
    real: Callable[..., NuonuoProvider],
    seller: Seller,
) -> None:
    async with serving("endless") as (_p, url), real(url, max_response_bytes=5_000) as provider:
        with pytest.raises(ProviderError, match="larger than 5000 bytes"):
            await provider.query_by_serials(seller, ["S1"])


async def test_an_environment_proxy_is_used_with_its_credentials(
    monkeypatch: pytest.MonkeyPatch,
    real: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
) -> None:
    """HTTP(S)_PROXY as httpx's own transport honoured it: the platform's host need not even
    resolve, the proxy gets absolute-form requests and the credentials from its URL."""
    async with serving() as (p, url):
        monkeypatch.setenv("HTTP_PROXY", url.replace("http://", "http://ops:s3cret@"))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with real("http://platform.invalid") as provider:
            assert (await provider.issue(seller, special_draft, "o-1")).serial == "S1"
    line, headers, _ = p.requests[1]
    assert line.startswith(b"POST http://platform.invalid/open/v1/services")
    assert headers["proxy-authorization"] == "Basic b3BzOnMzY3JldA=="  # ops:s3cret


async def test_no_proxy_bypasses_the_environment_proxy(
    monkeypatch: pytest.MonkeyPatch,
    real: Callable[..., NuonuoProvider],
    seller: Seller,
    special_draft: InvoiceDraft,
) -> None:
    with socket.socket() as s:  # a proxy address where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with serving() as (p, url), real(url) as provider:
        assert (await provider.issue(seller, special_draft, "o-1")).serial == "S1"
    assert p.requests[1][0].startswith(b"POST /open/v1/services")  # origin-form: direct
