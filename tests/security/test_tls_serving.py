"""Secure serving: self-signed generation, TLS versions, plain HTTP refused, certificate rotation without
dropped connections, and the listener's limits (slow clients, oversized headers, connection and in-flight
caps).

Real TLS (OpenSSL through Python's ssl module on both ends), real certificates from lab/pki.py.
Limits are set small here so the cut-offs happen quickly; nothing asserts on timings.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import ssl
import stat
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from prometheus_client import CollectorRegistry
from toposcale.adapter.security.metrics import SecurityMetrics
from toposcale.adapter.security.middleware import SecurityFilter
from toposcale.adapter.security.tls import InsecureCertDir, ensure_self_signed, fingerprint

from lab.kube.standin import KubeStandIn
from toposcale.core import listener

from .conftest import METRIC_PATH, PKI, StartServer, auth_configmap, parse_flags, tls_flags, until

ANON_TLS = ["--insecure-allow-anonymous"]


async def collect(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent before closing. A server that cuts a client off may reset the connection
    (it closes with unread input); what arrived before the reset still counts."""
    received = bytearray()
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            received += chunk
    except (ConnectionError, ssl.SSLError):
        pass
    return bytes(received)


async def raw_request(port: int, ctx: ssl.SSLContext | None, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        writer.write(data)
        try:
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass  # cut off while sending: the answer may still be there
        return await collect(reader)
    finally:
        writer.close()


def peer_fingerprint(writer: asyncio.StreamWriter) -> str:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return fingerprint(x509.load_der_x509_certificate(der))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return status, await asyncio.wait_for(reader.readexactly(length), 10)


async def test_self_signed_pair_generated_into_cert_dir_and_fingerprint_logged(
        tmp_path: Path, start_server: StartServer, caplog: pytest.LogCaptureFixture) -> None:
    cert_dir = tmp_path / "certs"
    caplog.set_level(logging.INFO)
    srv = await start_server([*ANON_TLS, "--cert-dir", str(cert_dir)], ca_file=cert_dir / "apiserver.crt")
    cert_pem = (cert_dir / "apiserver.crt").read_bytes()
    leaf = x509.load_pem_x509_certificate(cert_pem)
    assert (cert_dir / "apiserver.key").stat().st_mode & 0o077 == 0, "the private key is private"
    logged = [getattr(r, "fingerprint", None) for r in caplog.records]
    assert fingerprint(leaf) in logged
    code, text = await srv.get("/healthz")  # verified against the generated CA, not skipped
    assert (code, text) == (200, "ok")
    # a restart reuses the pair (the APIService caBundle stays valid)
    again, _, generated = ensure_self_signed(cert_dir)
    assert not generated and again.read_bytes() == cert_pem


async def test_default_cert_dir_is_apiservers_relative_to_the_working_directory(
        pki: PKI, kube: KubeStandIn, start_server: StartServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No TLS flags at all: the pair goes to ./apiserver.local.config/certificates, as k8s.io/apiserver's
    servers do (delegated authentication through lab/kube/standin.py, the real wire format)."""
    monkeypatch.chdir(tmp_path)
    kube.add(auth_configmap(pki))
    kc = kube.kubeconfig  # type: ignore[attr-defined]
    cert_dir = tmp_path / "apiserver.local.config" / "certificates"
    srv = await start_server(["--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc],
                             ca_file=cert_dir / "apiserver.crt")
    assert stat.S_IMODE(cert_dir.stat().st_mode) & 0o077 == 0
    code, text = await srv.get("/healthz")  # verified against the CA written there
    assert (code, text) == (200, "ok")


def _pair(cert_dir: Path) -> tuple[bytes, bytes]:
    return (cert_dir / "apiserver.crt").read_bytes(), (cert_dir / "apiserver.key").read_bytes()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722, 0o1777])
def test_cert_dir_others_may_write_to_is_refused(tmp_path: Path, mode: int) -> None:
    cert_dir = tmp_path / "shared"
    cert_dir.mkdir()
    cert_dir.chmod(mode)
    with pytest.raises(InsecureCertDir, match="writable by its group or by everyone"):
        ensure_self_signed(cert_dir)
    assert list(cert_dir.iterdir()) == [], "nothing is written into it"


def test_cert_dir_of_another_user_or_a_symlink_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
    else:
        theirs = Path("/")  # root's
    with pytest.raises(InsecureCertDir, match="is owned by uid"):
        ensure_self_signed(theirs)
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(InsecureCertDir, match="not a directory"):
        ensure_self_signed(tmp_path / "link")


def test_pair_whose_key_is_not_private_is_regenerated_not_reused(tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    ensure_self_signed(cert_dir)
    first = _pair(cert_dir)
    _, _, generated = ensure_self_signed(cert_dir)
    assert not generated and _pair(cert_dir) == first  # private: reused
    (cert_dir / "apiserver.key").chmod(0o644)  # readable by everyone: may be known to others
    _, key, generated = ensure_self_signed(cert_dir)
    assert generated and _pair(cert_dir)[1] != first[1]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    if os.geteuid() == 0:  # a key another user owns (they can rewrite it) is not reused either
        second = _pair(cert_dir)
        os.chown(key, 65534, 65534)
        _, _, generated = ensure_self_signed(cert_dir)
        assert generated and _pair(cert_dir) != second and key.stat().st_uid == 0


async def test_insecure_cert_dir_stops_the_adapter_with_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from toposcale import cli

    cert_dir = tmp_path / "world"
    cert_dir.mkdir()
    cert_dir.chmod(0o777)
    args = cli.build_parser().parse_args(["adapter", "--insecure-allow-anonymous", "--port", "0",
                                          "--scrape-targets", str(tmp_path / "t.yaml"),
                                          "--cert-dir", str(cert_dir)])
    assert await asyncio.to_thread(args._main, args) == 2
    assert f"--cert-dir {cert_dir} is writable by its group or by everyone" in capsys.readouterr().err


async def test_plain_http_on_the_tls_port_gets_gos_one_line_400(pki: PKI, kube: KubeStandIn,
                                                                start_server: StartServer) -> None:
    """As kube-apiserver answers (Go's net/http): 400 and one line saying what is wrong, then closed; nothing
    is served over plain HTTP, and TLS clients are served as before."""
    from toposcale.core.plainhttp import ANSWER

    kube.add(auth_configmap(pki))
    srv = await start_server(tls_flags(pki, kube))
    answer = await raw_request(srv.site.port, None, b"GET /healthz HTTP/1.1\r\nHost: adapter\r\n\r\n")
    assert answer == b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
    assert answer == ANSWER
    # the first bytes in pieces: the answer waits for five of them, as Go's record header check does
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.site.port)
    for piece in (b"PO", b"ST /apis", b" HTTP/1.1\r\n\r\n"):
        writer.write(piece)
        await writer.drain()
    assert await collect(reader) == ANSWER
    writer.close()
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{srv.site.port}/healthz") as r:
        assert r.status == 400  # what curl http://... shows
        assert "Client sent an HTTP request to an HTTPS server." in await r.text()
    # not HTTP and not TLS: the TLS handshake refuses it, closing without an HTTP answer
    assert not (await raw_request(srv.site.port, None, b"\x00\x01garbage\r\n")).startswith(b"HTTP/")
    assert (await srv.get("/healthz"))[0] == 200, "and TLS clients are still served"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
async def test_tls_below_1_2_is_refused(version: ssl.TLSVersion, pki: PKI, kube: KubeStandIn,
                                        start_server: StartServer) -> None:
    kube.add(auth_configmap(pki))
    srv = await start_server(tls_flags(pki, kube))
    old = srv.client_ssl()
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = version
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await raw_request(srv.site.port, old, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ok = srv.client_ssl()
        ok.minimum_version = ok.maximum_version = v
        assert (await raw_request(srv.site.port, ok, b"GET /healthz HTTP/1.1\r\nHost: a\r\n"
                                  b"Connection: close\r\n\r\n")).startswith(b"HTTP/1.1 200")


async def test_certificate_rotation_applies_without_dropping_connections(
        pki: PKI, kube: KubeStandIn, start_server: StartServer, tmp_path: Path) -> None:
    kube.add(auth_configmap(pki))
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki.serving.cert_path, cert_file)
    shutil.copy(pki.serving.key_path, key_file)
    flags = tls_flags(pki, kube)
    flags[1], flags[3] = str(cert_file), str(key_file)
    srv = await start_server(flags, cert_reload_interval=0.05)
    old_fp = fingerprint(pki.serving.cert)
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.site.port, ssl=srv.client_ssl())
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await read_response(reader)) == (200, b"ok")
    assert peer_fingerprint(writer) == old_fp

    # cert-manager rotates: a new pair from the same CA; first the cert alone (mismatched with the old key)
    new = pki.root.server(pki.ca, "toposcale-adapter", hosts=["127.0.0.1"], file_name="rotated")
    cert_file.write_bytes(new.cert_path.read_bytes())
    await until(lambda: 'result="failed",what="serving-cert"' in srv.metrics_text(), "half pair rejected")
    assert srv.security.tls.reloads == 0, "a cert that does not match the key is not applied"
    key_file.write_bytes(new.key_path.read_bytes())
    await until(lambda: srv.security.tls.reloads == 1, "rotated pair loaded")

    # the open connection is still served, with the certificate it started with
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (await read_response(reader)) == (200, b"ok")
    assert peer_fingerprint(writer) == old_fp
    writer.close()
    # new connections get the new certificate
    _, w2 = await asyncio.open_connection("127.0.0.1", srv.site.port, ssl=srv.client_ssl())
    assert peer_fingerprint(w2) == fingerprint(new.cert)
    w2.close()
    expiry = srv.registry.get_sample_value(
        "toposcale_adapter_serving_certificate_expiration_timestamp_seconds")
    assert expiry == new.cert.not_valid_after_utc.timestamp()


async def test_slow_client_is_cut_off_while_others_are_served(pki: PKI, kube: KubeStandIn,
                                                              start_server: StartServer) -> None:
    kube.add(auth_configmap(pki))
    srv = await start_server([*tls_flags(pki, kube), "--request-header-timeout", "300ms"])
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.site.port, ssl=srv.client_ssl())
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
    answer_task = asyncio.create_task(collect(reader))
    served = 0
    for i in range(200):  # a header line every 50 ms: never finishes on its own
        if answer_task.done():
            break
        try:
            writer.write(f"X-Slow-{i}: x\r\n".encode())
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            break
        assert (await srv.get("/healthz"))[0] == 200  # everyone else is served meanwhile
        served += 1
        await asyncio.sleep(0.05)
    answer = await answer_task
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert served >= 1
    assert 'toposcale_adapter_connections_rejected_total{reason="header-timeout"} 1.0' in srv.metrics_text()


async def test_idle_tls_handshake_is_cut_off(pki: PKI, kube: KubeStandIn, start_server: StartServer) -> None:
    kube.add(auth_configmap(pki))
    srv = await start_server([*tls_flags(pki, kube), "--tls-handshake-timeout", "200ms"])
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.site.port)  # TCP only, never says hello
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
    writer.close()
    assert (await srv.get("/healthz"))[0] == 200


async def test_oversized_headers_are_refused_and_service_continues(pki: PKI, kube: KubeStandIn,
                                                                   start_server: StartServer) -> None:
    kube.add(auth_configmap(pki))
    srv = await start_server([*tls_flags(pki, kube), "--max-request-header-bytes", "16384"])
    many = b"".join(f"X-Pad-{i}: {'a' * 4000}\r\n".encode() for i in range(8))  # 32 KB in 8 legal lines
    answer = await raw_request(srv.site.port, srv.client_ssl(),
                               b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    one_huge = b"X-Huge: " + b"a" * 20000 + b"\r\n"  # beyond aiohttp's per-line limit
    answer = await raw_request(srv.site.port, srv.client_ssl(),
                               b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + one_huge + b"\r\n")
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer[:80]
    assert (await srv.get("/healthz"))[0] == 200


async def test_connection_cap(pki: PKI, kube: KubeStandIn, start_server: StartServer) -> None:
    """At --max-connections a new client gets the slot of the idle one quiet longest (issue 28: idle clients
    held the cap and every new one was closed at once); test_hostile_clients has the refusal when none is
    idle."""
    kube.add(auth_configmap(pki))
    srv = await start_server([*tls_flags(pki, kube), "--max-connections", "2"])
    held = [await asyncio.open_connection("127.0.0.1", srv.site.port, ssl=srv.client_ssl()) for _ in range(2)]
    await until(lambda: srv.site.open_connections == 2, "two connections open")
    answer = await raw_request(srv.site.port, srv.client_ssl(),
                               b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert await asyncio.wait_for(held[0][0].read(), 10) == b""  # the oldest idle one made room
    for _, w in held:
        w.close()
    await until(lambda: srv.site.open_connections == 0, "connections closed")
    assert 'reason="evicted"} 1.0' in srv.metrics_text()


async def test_requests_in_flight_are_bounded() -> None:
    """Beyond --max-requests-inflight a request gets 429 Status at once instead of queueing."""
    release = asyncio.Event()

    async def slow(_request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="done")

    filt = SecurityFilter(None, None, SecurityMetrics(CollectorRegistry()), insecure_allow_anonymous=True,
                          max_requests_inflight=1)
    app = web.Application(middlewares=[filt.middleware])
    app.router.add_get("/slow", slow)
    runner, site = await listener.serve(app, "127.0.0.1", 0, None)
    try:
        async with aiohttp.ClientSession() as s:
            first = asyncio.create_task(s.get(f"http://127.0.0.1:{site.port}/slow"))
            await until(lambda: filt.inflight == 1, "first request in flight")
            async with s.get(f"http://127.0.0.1:{site.port}/slow") as r:
                assert r.status == 429 and r.headers["Retry-After"] == "1"
                assert (await r.json())["reason"] == "TooManyRequests"
            release.set()
            resp = await first
            assert resp.status == 200
            resp.release()
    finally:
        await runner.cleanup()


async def test_insecure_allow_anonymous(start_server: StartServer, caplog: pytest.LogCaptureFixture,
                                        tmp_path: Path) -> None:
    caplog.set_level(logging.WARNING)
    srv = await start_server(ANON_TLS)  # no TLS flag either: plain HTTP, for local runs and the demo
    assert srv.url.startswith("http://")
    async with aiohttp.ClientSession() as s, s.get(srv.url + METRIC_PATH,
                                                   headers={"X-Remote-User": "system:admin"}) as r:
        body = await r.json()
    assert r.status == 200 and body["user"] == "system:anonymous" and body["leaked_headers"] == {}
    assert any("INSECURE" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


async def test_bad_flags_are_clear_errors(pki: PKI, tmp_path: Path) -> None:
    from toposcale.adapter.security.options import build_security

    with pytest.raises(ValueError, match="go together"):
        await build_security(parse_flags(["--tls-cert-file", str(pki.serving.cert_path)]),
                             CollectorRegistry())
    with pytest.raises(ValueError, match=r"--client-ca-file: cannot read /nonexistent/ca\.crt"):
        await build_security(parse_flags(["--client-ca-file", "/nonexistent/ca.crt",
                                          "--cert-dir", str(tmp_path / "c")]), CollectorRegistry())
    (tmp_path / "junk.crt").write_text("not a certificate")
    with pytest.raises(ValueError, match=r"not a PEM certificate bundle|no certificates"):
        await build_security(parse_flags(["--requestheader-client-ca-file", str(tmp_path / "junk.crt"),
                                          "--cert-dir", str(tmp_path / "c")]), CollectorRegistry())
    with pytest.raises(RuntimeError, match="--insecure-allow-anonymous"):
        await build_security(parse_flags(["--cert-dir", str(tmp_path / "c"), "--authentication-kubeconfig",
                                          str(tmp_path / "missing-kubeconfig")]), CollectorRegistry())
    with pytest.raises(ValueError, match="serving certificate"):
        await build_security(parse_flags(["--tls-cert-file", str(pki.serving.cert_path),
                                          "--tls-private-key-file", str(pki.alice.key_path),
                                          "--insecure-allow-anonymous"]), CollectorRegistry())


def test_client_ca_change_waits_for_a_usable_serving_pair(pki: PKI, tmp_path: Path) -> None:
    """A ConfigMap CA change that lands while the serving key is mid-rotation is applied once it is usable."""
    from toposcale.adapter.security.clientcert import CABundle
    from toposcale.adapter.security.tls import ServingTLS

    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(pki.serving.cert_path, cert_file)
    shutil.copy(pki.serving.key_path, key_file)
    tls = ServingTLS(cert_file, key_file)
    assert tls.context.target.verify_mode == ssl.CERT_NONE, "no client CA: no client certificate requested"
    key_file.write_text("half-written")
    tls.set_client_cas([CABundle.from_pem(pki.ca.cert_pem, "client-ca-file")])
    assert tls.context.target.verify_mode == ssl.CERT_NONE, "not applied with an unusable key"
    shutil.copy(pki.serving.key_path, key_file)
    assert tls.check() is True
    assert tls.context.target.verify_mode == ssl.CERT_OPTIONAL
