"""Plain HTTP sent to the TLS port gets a one-line answer, as from any Go server (kube-apiserver, the
aggregated API servers built on k8s.io/apiserver), instead of a connection closed without a word.

Go's net/http writes "HTTP/1.0 400 Bad Request\\r\\n\\r\\nClient sent an HTTP request to an HTTPS
server.\\n" on the raw connection and closes it when the TLS handshake fails on a first record header that
looks like HTTP (net/http/server.go, tlsRecordHeaderLooksLikeHTTP: "GET /", "HEAD ", "POST ", "PUT /",
"OPTIO"). Someone who points curl or a probe at http://adapter:6443 then reads what is wrong.

asyncio's TLS server (create_server(ssl=...)) consumes those bytes inside its handshake and closes, so the
listener accepts plain TCP here and looks at the first bytes itself: a TLS record (first byte 0x16,
handshake) goes on to asyncio's own SSLProtocol with the bytes already read, exactly what create_server(ssl=)
and loop.start_tls() build; anything that looks like HTTP gets Go's answer; anything else goes to TLS too,
whose handshake refuses it as before.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio import sslproto
from collections.abc import Callable

logger = logging.getLogger(__name__)

ANSWER = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
_HTTP_STARTS = (b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO")  # Go's list, 5 bytes each
_TLS_HANDSHAKE = 0x16


def looks_like_http(head: bytes) -> bool | None:
    """True: plain HTTP; False: not (TLS or garbage, for the TLS handshake to refuse); None: too few bytes to
    tell yet."""
    if head[:1] == bytes([_TLS_HANDSHAKE]):
        return False
    if len(head) < 5:
        return None if any(s.startswith(head) for s in _HTTP_STARTS) else False
    return head[:5] in _HTTP_STARTS


class TLSOrPlainHTTPHint(asyncio.Protocol):
    """Each connection's first protocol on the TLS port: hands TLS to asyncio's SSLProtocol (wrapping
    `app_factory()`), answers plain HTTP with Go's 400 line. `handshake_timeout` bounds the whole handshake
    from the accept, the wait for the first bytes included (as create_server's ssl_handshake_timeout)."""

    def __init__(
        self,
        app_factory: Callable[[], asyncio.BaseProtocol],
        context: ssl.SSLContext,
        handshake_timeout: float,
    ) -> None:
        self.app_factory = app_factory
        self.context = context
        self.handshake_timeout = handshake_timeout
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.started = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        self.timer = loop.call_later(self.handshake_timeout, transport.close)  # said nothing at all

    def data_received(self, data: bytes) -> None:
        self.head += data
        verdict = looks_like_http(self.head)
        if verdict is None:
            return
        if self.timer is not None:
            self.timer.cancel()
        assert self.transport is not None
        if verdict:
            # the host without its port: a client retrying logs one line a window (logs.RepeatFilter)
            peer = self.transport.get_extra_info("peername")
            logger.info("plain HTTP on the TLS port answered 400", extra={"peer": peer[0] if peer else None})
            self.transport.write(ANSWER)
            self.transport.close()
            return
        self._start_tls()

    def _start_tls(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        left = max(self.handshake_timeout - (loop.time() - self.started), 0.001)
        tls = sslproto.SSLProtocol(
            loop, self.app_factory(), self.context, None, server_side=True, ssl_handshake_timeout=left
        )
        self.transport.set_protocol(tls)
        tls.connection_made(self.transport)
        view = memoryview(self.head)
        self.head = b""
        while view:  # SSLProtocol is a BufferedProtocol: the bytes read so far go through its buffer
            buf = tls.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            tls.buffer_updated(n)
            view = view[n:]

    def eof_received(self) -> bool | None:
        return None  # closes the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
