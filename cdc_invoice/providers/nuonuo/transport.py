"""httpx requests sent by aiohttp's client: the Nuonuo client's HTTP engine.

httpx stays the client's API (requests, timeouts, decoding, the error types client.py maps);
aiohttp does the connection pooling and HTTP/1.1 parsing (in C). Measured against the sandbox,
the adapter's CPU per invoice fell from ~1.5 to ~1.1 ms (docs/benchmarks.md).

Every aiohttp failure becomes the httpx exception that answers client.py's one question, could
the platform have acted on the request: only failures before anything was written (connect,
TLS, the wait for a pooled connection, a bad URL) map to httpx's "not sent" types; a failure
after that (a disconnect, a reset, a read timeout, a malformed answer) maps to a read or
protocol error, which an issue call turns into OutcomeUnknown.
"""

from __future__ import annotations

import base64
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Final

import aiohttp
import httpx
from yarl import URL

CHUNK: Final = 64 * 1024


@contextmanager
def _mapped(request: httpx.Request) -> Iterator[None]:
    """aiohttp's exceptions as httpx's, chained. Order matters: subclasses first."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:  # the pool wait or the TCP/TLS connect
        raise httpx.ConnectTimeout(str(exc) or "connect timeout", request=request) from exc
    except aiohttp.SocketTimeoutError as exc:  # no bytes for the read timeout: sent
        raise httpx.ReadTimeout(str(exc) or "read timeout", request=request) from exc
    except aiohttp.ClientConnectorError as exc:  # refused, DNS, TLS handshake/verification
        raise httpx.ConnectError(str(exc), request=request) from exc
    except aiohttp.ClientHttpProxyError as exc:  # the proxy refused to connect us: not sent
        raise httpx.ProxyError(str(exc), request=request) from exc
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
        raise httpx.UnsupportedProtocol(str(exc), request=request) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpx.RemoteProtocolError(
            "server disconnected without a complete answer", request=request
        ) from exc
    except (aiohttp.ClientOSError, aiohttp.ClientPayloadError) as exc:  # reset, truncated body
        raise httpx.ReadError(str(exc), request=request) from exc
    except aiohttp.ClientError as exc:  # a malformed answer and anything newer
        raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}", request=request) from exc
    except TimeoutError as exc:  # the overall deadline (ClientTimeout.total): maybe sent
        raise httpx.ReadTimeout("no complete answer within the deadline", request=request) from exc


class _EnvProxies:
    """HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY, read once as httpx reads them by default
    (a custom transport turns httpx's own reading off), resolved once per scheme and host."""

    def __init__(self) -> None:
        self._env = urllib.request.getproxies_environment()
        self._resolved: dict[tuple[str, str], tuple[str | None, str | None]] = {}

    def for_url(self, url: httpx.URL) -> tuple[str | None, str | None]:
        """(proxy URL without credentials, its Proxy-Authorization value) or (None, None)."""
        key = (url.scheme, url.host)
        if key not in self._resolved:
            proxy = self._env.get(url.scheme) or self._env.get("all")
            if proxy and urllib.request.proxy_bypass(url.host):  # NO_PROXY
                proxy = None
            auth = None
            if proxy:
                parsed = URL(proxy)
                if parsed.user is not None:
                    pair = f"{parsed.user}:{parsed.password or ''}".encode("latin-1")
                    auth = "Basic " + base64.b64encode(pair).decode("ascii")
                    parsed = parsed.with_user(None)
                proxy = str(parsed)
            self._resolved[key] = (proxy, auth)
        return self._resolved[key]


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped(self._request):
            async for chunk in self._response.content.iter_chunked(CHUNK):
                yield chunk

    async def aclose(self) -> None:
        # Back to the pool when the body was read to the end; otherwise the connection closes.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp connection pool of ``max_connections`` keep-alive connections.

    The session is opened on first use, inside the running event loop (aiohttp binds to it).
    Cookies are ignored (a stateless API), redirects are never followed, bodies are returned
    as sent (httpx decodes them, so the client's size bound counts decoded bytes). Proxies come
    from the environment, as with httpx's own transport.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        verify: bool | ssl.SSLContext = True,
        keepalive_expiry: float = 5.0,
        total_timeout: float | None = None,
    ) -> None:
        self._max_connections = max_connections
        # One deadline for the whole exchange, the body included: the read timeout alone is
        # per chunk, so an answer trickling a byte at a time would hold a worker forever.
        self._total = total_timeout
        # httpx's context (certifi's CAs) for verify=True, so that switching engines keeps
        # exactly the same trust as before.
        self._ssl = (
            verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify)
        )
        self._keepalive = keepalive_expiry
        self._proxies = _EnvProxies()
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=self._keepalive,
            ssl=self._ssl,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        timeout = request.extensions.get("timeout", {})
        # as httpx built them, names in their original case (some gateways care)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        proxy, proxy_auth = self._proxies.for_url(request.url)
        proxy_headers = None
        if proxy_auth and request.url.scheme == "https":  # on the CONNECT that opens the tunnel
            proxy_headers = {"Proxy-Authorization": proxy_auth}
        elif proxy_auth:  # plain HTTP goes through the proxy request by request
            headers.append(("Proxy-Authorization", proxy_auth))
        with _mapped(request):
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=request.content or None,
                allow_redirects=False,
                compress=None,
                proxy=proxy,
                proxy_headers=proxy_headers,
                timeout=aiohttp.ClientTimeout(
                    total=self._total,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_Body(response, request),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
