"""A TCP proxy between the daemons and PostgreSQL that the chaos harness can break on purpose.

Runs its own asyncio loop in a background thread; the harness calls the methods below from its
own thread.

* ``forward()``   normal operation (also: restore after a cut or a half-open episode);
* ``cut()``       the link drops: every open connection is reset, new ones are refused
                  (accepted and reset at once) until ``forward()``;
* ``half_open()`` the proxy stops forwarding without closing anything: open connections stay
                  up (our kernel keeps ACKing, so TCP keepalives see nothing wrong) but no byte
                  passes in either direction; new connections are accepted and hang the same way.

What ``forward()`` does to the connections stalled by a half-open episode is ``on_restore``:
  ``reset``  they are reset (the proxy "came back" without its state, as after a restart);
  ``resume`` the bytes they held are delivered and they carry on (a healed partition);
  ``hold``   they stay stalled for good while new connections work (a firewall or NAT that
             dropped the flow: only a client-side timeout gets the client out).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["forward", "cut", "half_open"]
Restore = Literal["reset", "resume", "hold"]


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    held: bool = False  # stalled for good (restore mode "hold")
    dead: bool = False
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set when the proxy closes

    def kill(self) -> None:
        self.dead = True
        self.released.set()
        self.flowing.set()  # wake whatever waits on the gate, which then sees ``dead``
        self.abort()

    async def gate(self) -> None:
        """Return when bytes may pass; raise when the link was reset."""
        await self.flowing.wait()
        if self.dead:
            raise ConnectionResetError("reset by the proxy")

    def abort(self) -> None:
        for w in (self.client, self.upstream):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.transport.abort()


class TcpProxy:
    def __init__(self, target_host: str, target_port: int = 0, listen_port: int = 0) -> None:
        """Forward to ``target_host:target_port``, or to a unix socket if the host is a path."""
        self.target = (target_host, target_port)
        self.listen_port = listen_port
        self.port = 0
        self.mode: Mode = "forward"
        self.counts: Counter[str] = Counter()
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self._server: asyncio.Server | None = None

    # -- control (from any thread) -----------------------------------------------------------
    def start(self) -> int:
        self._thread.start()
        self.port = self._call(self._start())
        return self.port

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    def forward(self, on_restore: Restore = "reset") -> None:
        self._call(self._set("forward", on_restore))

    def cut(self) -> None:
        self._call(self._set("cut", "reset"))

    def half_open(self) -> None:
        self._call(self._set("half_open", "reset"))

    def connections(self) -> int:
        return len(self._links)

    @classmethod
    def for_dsn(cls, dsn: str) -> tuple[TcpProxy, str]:
        """A started proxy in front of the server of ``dsn``, and the DSN that goes through it."""
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(dsn)
        host = str(params.get("host") or "/var/run/postgresql")
        port = int(params.get("port") or 5432)
        proxy = cls(f"{host}/.s.PGSQL.{port}", 0) if host.startswith("/") else cls(host, port)
        proxy.start()
        return proxy, make_conninfo(dsn, host="127.0.0.1", port=str(proxy.port))

    def _call(self, coro: Coroutine[Any, Any, int]) -> int:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    # -- inside the loop ---------------------------------------------------------------------
    async def _start(self) -> int:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.listen_port, reuse_address=True
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> int:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.kill()
        return 0

    async def _set(self, mode: Mode, on_restore: Restore) -> int:
        previous, self.mode = self.mode, mode
        self.counts[f"mode_{mode}"] += 1
        if mode == "cut":
            for link in list(self._links):
                link.kill()
                self.counts["reset"] += 1
        elif mode == "half_open":
            for link in self._links:
                link.flowing.clear()
        elif previous == "half_open":
            for link in list(self._links):
                if link.flowing.is_set() or link.held:
                    continue
                if on_restore == "reset":
                    link.kill()
                    self.counts["reset"] += 1
                elif on_restore == "resume":
                    link.flowing.set()
                else:
                    link.held = True
                    self.counts["held"] += 1
        return 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts["accepted"] += 1
        if self.mode == "cut":
            self.counts["refused"] += 1
            writer.transport.abort()
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            if self.mode == "half_open":
                # Accepted, never connected upstream: the client's startup packet goes nowhere.
                await link.gate()
            if self.target[0].startswith("/"):
                up_reader, up_writer = await asyncio.open_unix_connection(self.target[0])
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            link.upstream = up_writer
            link.flowing.set()
            await asyncio.gather(
                self._pump(reader, up_writer, link),
                self._pump(up_reader, writer, link),
                return_exceptions=True,
            )
        except (OSError, asyncio.IncompleteReadError):
            self.counts["errors"] += 1
        finally:
            self._links.discard(link)
            link.kill()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await link.gate()  # half-open: hold the bytes, close nothing
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        if link.held and not link.dead:
            # The flow is gone for good: not even the other side's close gets through.
            await link.released.wait()
        link.kill()
