"""The chaos proxy does what the harness relies on (an echo server stands in for PostgreSQL)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from .proxy import TcpProxy

pytestmark = pytest.mark.chaos


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    p = TcpProxy("127.0.0.1", server.server_address[1])
    p.start()
    yield p
    p.close()
    server.shutdown()
    server.server_close()


def connect(p: TcpProxy) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", p.port), timeout=2)
    return s


def echo(s: socket.socket, data: bytes = b"ping", timeout: float = 2.0) -> bytes | None:
    """What comes back, or None if nothing within ``timeout``; raises if the link was reset."""
    s.settimeout(timeout)
    s.sendall(data)
    try:
        return s.recv(100)
    except TimeoutError:
        return None


def closed(s: socket.socket) -> bool:
    """The peer closed or reset the connection (as opposed to: it is silent)."""
    s.settimeout(1.0)
    try:
        s.sendall(b"x")
        return s.recv(100) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_forwards(proxy: TcpProxy) -> None:
    with connect(proxy) as s:
        assert echo(s) == b"ping"


def test_cut_resets_open_connections_and_refuses_new_ones(proxy: TcpProxy) -> None:
    s = connect(proxy)
    assert echo(s) == b"ping"
    proxy.cut()
    assert closed(s)
    with connect(proxy) as s2:
        assert closed(s2)
    proxy.forward()
    with connect(proxy) as s3:
        assert echo(s3) == b"ping"


@pytest.mark.parametrize("restore", ["reset", "resume", "hold"])
def test_half_open_stalls_without_closing(proxy: TcpProxy, restore: str) -> None:
    s = connect(proxy)
    assert echo(s) == b"ping"
    proxy.half_open()
    assert echo(s, b"lost?", timeout=0.5) is None  # nothing back, and no error either
    fresh = connect(proxy)  # accepted, goes nowhere
    assert echo(fresh, b"hello", timeout=0.5) is None
    proxy.forward(on_restore=restore)  # type: ignore[arg-type]
    s.settimeout(1.0)
    if restore == "reset":
        assert closed(s) and closed(fresh)
    elif restore == "resume":
        assert s.recv(100) == b"lost?"  # held bytes delivered
        assert echo(fresh, b"", timeout=1.0) == b"hello"
    else:
        assert not closed(s)  # silent for good, not closed
        assert not closed(fresh)
    with connect(proxy) as new:
        assert echo(new) == b"ping"  # new connections work in every case
    s.close()
    fresh.close()
