"""The bounded listener both services serve on (the adapter's HTTPS API, the extender's HTTP one): an aiohttp
site whose connections are bounded in time, header size and number.

aiohttp bounds each header line and field (8190 bytes) but has no deadline for receiving a request's headers,
so one client dribbling a byte a second (slowloris) would hold a connection forever. Each connection here goes
through `BoundedProtocol`, which wraps aiohttp's own protocol and
- closes a connection whose TLS handshake takes longer than `handshake_timeout` (asyncio's
  ssl_handshake_timeout),
- gives a new connection `header_timeout` seconds after its TLS handshake (or TCP accept) to send its first
  request's headers, and each later request on a keep-alive connection `header_timeout` seconds from its first
  byte, as Go's http.Server does with k8s.io/apiserver's ReadHeaderTimeout: a connection that sent nothing is
  closed without an answer, one that sent part of its headers gets 408 and is closed,
- closes a keep-alive connection idle between requests after `idle_timeout` (aiohttp's keepalive_timeout,
  which `serve` sets; IdleTimeout in Go),
- answers 431 and closes when a request's headers exceed `max_header_bytes` in total (a body announced by
  Content-Length is passed through uncounted, however the socket splits it; the next request's headers on a
  keep-alive connection are bounded again),
- at `max_connections`, makes room for a new connection by closing the open one that has been quiet longest
  among those idle or still sending their request (an idle or slow client holding a slot is the cheapest to
  lose, and a new client, a kubelet probe say, is then served); only when every open connection is being
  answered is the new one closed at once (clients retry).

Everything else (keep-alive, request handling) is aiohttp's.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import ssl
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_runner import BaseRunner, BaseSite

from .plainhttp import TLSOrPlainHTTPHint

logger = logging.getLogger(__name__)


class _ClientErrors(logging.Filter):
    """aiohttp logs a request it cannot parse (a bad request line, HTTP version, header) with a traceback,
    at ERROR for some (HTTP/9.9): any client could fill the log with them. They are the client's error, and
    aiohttp answers it 400: one warning line saying what was wrong, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            lines = (line.strip() for line in str(exc.message).splitlines())
            what = " ".join(line for line in lines if line.strip("^ "))  # not aiohttp's caret line
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "malformed request answered %s: %s", (exc.code, what[:200])
            record.exc_info, record.exc_text = None, None
        return True


# The logger aiohttp's request handlers log to (web.AppRunner(logger=...)), with the filter above.
REQUEST_LOGGER = logging.getLogger("toposcale.http")
REQUEST_LOGGER.addFilter(_ClientErrors())

_END = b"\r\n\r\n"


class Limits:
    def __init__(self, *, header_timeout: float = 10.0, handshake_timeout: float = 10.0,
                 max_header_bytes: int = 64 * 1024, max_connections: int = 1000,
                 idle_timeout: float | None = None) -> None:
        self.header_timeout = header_timeout
        self.handshake_timeout = handshake_timeout
        self.max_header_bytes = max_header_bytes
        self.max_connections = max_connections
        # between keep-alive requests; None: header_timeout (a client that sends no request within the header
        # timeout is closed, whether it just connected or just got an answer)
        self.idle_timeout = header_timeout if idle_timeout is None else idle_timeout


def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        return None


_MALLOC_TRIM = _libc_malloc_trim()
TRIM_AFTER_CLOSES = 256  # connections closed between two heap trims
TRIM_EVERY_S = 5.0  # at most one trim per this many seconds


class Pool:
    """The open connections of one site, in the order they were accepted.

    Each TLS connection costs ~300 KB of buffers (asyncio's SSL protocol, OpenSSL); glibc keeps what they
    freed in its heap, so a burst of a few thousand connections left the adapter ~500 MB larger for good
    (issue 28). After every TRIM_AFTER_CLOSES closed connections (at most every TRIM_EVERY_S) the heap is
    trimmed (glibc's malloc_trim), which gives that memory back to the system."""

    def __init__(self) -> None:
        self.conns: dict[BoundedProtocol, None] = {}
        self._closed = 0
        self._trim: asyncio.TimerHandle | None = None
        self._trimmed_at = 0.0

    def closed(self, conn: BoundedProtocol) -> None:
        self.conns.pop(conn, None)
        self._closed += 1
        if self._closed >= TRIM_AFTER_CLOSES and self._trim is None and _MALLOC_TRIM is not None:
            loop = asyncio.get_running_loop()
            # later, once the closed connections' transports and buffers have been released
            delay = max(1.0, self._trimmed_at + TRIM_EVERY_S - loop.time())
            self._trim = loop.call_later(delay, self._trim_heap)

    def _trim_heap(self) -> None:
        self._trim = None
        self._closed = 0
        self._trimmed_at = asyncio.get_running_loop().time()
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)

    def __len__(self) -> int:
        return len(self.conns)

    def quietest(self) -> BoundedProtocol | None:
        """The connection to close for a new one: quiet longest among those idle or still sending."""
        best: BoundedProtocol | None = None
        for conn in self.conns:
            if conn.evictable() and (best is None or conn.last_byte < best.last_byte):
                best = conn
        return best


def _body_framing(head: bytes) -> tuple[int, bool]:
    """(Content-Length, chunked) of a request from its header block; a bad length is aiohttp's 400 to give
    (it reads the same headers), counted here as no body."""
    length, chunked = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        if name == b"content-length":
            value = value.strip()
            length = int(value) if value.isdigit() else 0
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return (0, True) if chunked else (length, False)


class BoundedProtocol(asyncio.Protocol):
    def __init__(self, inner: asyncio.Protocol, limits: Limits, pool: Pool,
                 on_cut: Callable[[str], None]) -> None:
        self.inner = inner
        self.limits = limits
        self.pool = pool
        self.on_cut = on_cut
        self.last_byte = 0.0  # loop time of the last byte received (or of the accept)
        self._received = False  # any byte yet: the first request's deadline runs from the accept
        self.transport: asyncio.Transport | None = None
        self._in_headers = False
        self._header_bytes = 0
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False
        self._cut = False
        self._head = bytearray()  # the current request's headers so far (at most max_header_bytes)
        self._body_left = 0  # bytes of the current request's body (Content-Length) not received yet
        # a chunked body: where it ends is aiohttp's parser's business; this connection's later requests are
        # then not header-bounded here (the body is bounded in time and size by the application)
        self._unframed = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # With TLS this runs once the handshake is done (asyncio's SSL protocol): the header deadline starts.
        self.transport = transport  # type: ignore[assignment]
        if len(self.pool) >= self.limits.max_connections:
            victim = self.pool.quietest()
            if victim is None:
                self.on_cut("max-connections")
                transport.close()
                self._cut = True
                return
            victim.evict()
        loop = asyncio.get_running_loop()
        self.last_byte = loop.time()
        self.pool.conns[self] = None
        self._counted = True
        self._timer = loop.call_later(self.limits.header_timeout, self._header_deadline)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self._counted:
            self.pool.closed(self)
            self._counted = False
            self.inner.connection_lost(exc)

    def evictable(self) -> bool:
        """Idle (waiting for a request) or still sending one: not being answered."""
        if self._cut:
            return False
        if not self._received or self._in_headers or self._body_left:
            return True
        # aiohttp's own notion of idle (web_protocol.RequestHandler._process_keepalive): its handler loop
        # waits for the next message and none is queued
        waiter = getattr(self.inner, "_waiter", None)
        return waiter is not None and not waiter.done() and not getattr(self.inner, "_messages", None)

    def evict(self) -> None:
        self._cut = True
        self._stop_timer()
        self.on_cut("evicted")
        peer = self.transport.get_extra_info("peername") if self.transport else None
        logger.info("connection closed for a new one at --max-connections", extra={"peer": str(peer)})
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def eof_received(self) -> bool | None:
        if self._cut:
            return None
        return self.inner.eof_received()

    def data_received(self, data: bytes) -> None:
        if self._cut:
            return
        self.last_byte = asyncio.get_running_loop().time()
        first = not self._received
        self._received = True
        view = memoryview(data)
        while view and not self._unframed:
            if self._body_left:
                # the body the headers announced (Content-Length): not headers, however it is chunked
                n = min(self._body_left, len(view))
                self._body_left -= n
                view = view[n:]
                continue
            if not self._in_headers:
                self._in_headers = True
                self._header_bytes = 0
                self._tail = b""
                self._head = bytearray()
                # a request begins: this deadline, not aiohttp's keep-alive timer, bounds it now (keep_alive
                # cancels that timer; aiohttp re-arms it after the answer)
                self.inner.keep_alive(True)  # type: ignore[attr-defined]
                if first:
                    first = False  # the first request: the deadline armed at the accept stands
                else:
                    self._stop_timer()
                    loop = asyncio.get_running_loop()
                    self._timer = loop.call_later(self.limits.header_timeout, self._header_deadline)
            window = self._tail + bytes(view[:self.limits.max_header_bytes + len(_END)])
            end = window.find(_END)
            used = len(view) if end < 0 else end + len(_END) - len(self._tail)
            self._header_bytes += used
            if self._header_bytes > self.limits.max_header_bytes:
                self._reject(431, "Request Header Fields Too Large", "header-size")
                return
            self._head += view[:used]
            view = view[used:]
            if end < 0:
                self._tail = window[-3:]
                break
            self._in_headers = False
            self._stop_timer()
            self._body_left, self._unframed = _body_framing(bytes(self._head))
        self.inner.data_received(data)

    # -- limits
    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _header_deadline(self) -> None:
        self._timer = None
        if self._cut:
            return
        if self._in_headers:
            self._reject(408, "Request Timeout", "header-timeout")
        elif not self._received:  # connected (handshake done) and sent nothing: closed unanswered, as Go does
            self._cut = True
            self.on_cut("idle-timeout")
            if self.transport is not None:
                self.transport.close()

    def _reject(self, code: int, text: str, why: str) -> None:
        self._cut = True
        self._stop_timer()
        self.on_cut(why)
        peer = self.transport.get_extra_info("peername") if self.transport else None
        logger.warning("connection cut", extra={"reason": why, "peer": str(peer)})
        if self.transport is not None and not self.transport.is_closing():
            body = f"{code} {text}\n".encode()
            self.transport.write(
                f"HTTP/1.1 {code} {text}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode() + body)
            self.transport.close()


class SecureSite(BaseSite):
    """Like `web.TCPSite`, with `Limits` applied to every connection."""

    __slots__ = ("_bound_port", "_host", "_limits", "_on_cut", "_pool", "_port")

    def __init__(self, runner: BaseRunner, host: str | None, port: int, *, ssl_context: ssl.SSLContext | None,
                 limits: Limits | None = None, on_cut: Callable[[str], None] | None = None,
                 backlog: int = 128) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._bound_port: int | None = None
        self._limits = limits or Limits()
        self._on_cut = on_cut or (lambda _why: None)
        self._pool = Pool()

    @property
    def port(self) -> int:
        return self._bound_port if self._bound_port is not None else self._port

    @property
    def open_connections(self) -> int:
        return len(self._pool)

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host or '0.0.0.0'}:{self.port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None

        def factory() -> asyncio.Protocol:
            return BoundedProtocol(server(), self._limits, self._pool, self._on_cut)

        listen: Callable[[], asyncio.BaseProtocol] = factory
        if self._ssl_context is not None:
            # TLS starts per connection after a look at its first bytes: plain HTTP gets Go's one-line 400
            # (plainhttp.py); the handshake timeout counts from the accept, as create_server(ssl=) counts it
            listen = functools.partial(TLSOrPlainHTTPHint, factory, self._ssl_context,
                                       self._limits.handshake_timeout)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(listen, self._host, self._port,
                                                backlog=self._backlog, reuse_address=True)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


async def serve(app: web.Application, host: str | None, port: int, ssl_context: ssl.SSLContext | None,
                limits: Limits | None = None, on_cut: Callable[[str], None] | None = None
                ) -> tuple[web.AppRunner, SecureSite]:
    """Start `app` on a `SecureSite`; the caller keeps the runner and calls `await runner.cleanup()`."""
    limits = limits or Limits()
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                           keepalive_timeout=limits.idle_timeout, logger=REQUEST_LOGGER)
    await runner.setup()
    site = SecureSite(runner, host, port, ssl_context=ssl_context, limits=limits, on_cut=on_cut)
    await site.start()
    return runner, site
