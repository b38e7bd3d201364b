"""Serving certificates: loading, self-signed generation into --cert-dir, and reload on change.

`ServingTLS.context` is what the listener gets. It is an `ssl.SSLContext` whose `wrap_bio` (what asyncio calls
for every accepted connection) delegates to the newest inner context, so a rotated certificate or a changed
client-CA bundle applies to new connections while open ones keep theirs: nothing is dropped, nothing restarts.

TLS 1.2 or newer, ECDHE with AES-GCM or ChaCha20 for TLS 1.2 (Go's secure defaults), no compression, no
renegotiation. Client certificates are requested when a client CA is known and checked by the handshake
against the union of the trusted CAs, not for validity dates: expiry is judged per request by
`clientcert.verify_client_certificate`, so an expired certificate gets a 401 that says so, as from apiserver.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import socket
import ssl
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .clientcert import CABundle

logger = logging.getLogger(__name__)

SELF_SIGNED_PAIR = "apiserver"  # k8s.io/apiserver writes <cert-dir>/apiserver.crt and apiserver.key
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
# OpenSSL X509_V_FLAG_NO_CHECK_TIME: the handshake checks signatures; dates are checked per request
_NO_CHECK_TIME = 0x200000
TLS_VERSIONS = {"VersionTLS12": ssl.TLSVersion.TLSv1_2, "VersionTLS13": ssl.TLSVersion.TLSv1_3}


def fingerprint(cert: x509.Certificate) -> str:
    return "SHA256:" + ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def default_hosts() -> list[str]:
    hosts = ["localhost", "127.0.0.1", "::1"]
    name = socket.gethostname()
    if name and name not in hosts:
        hosts.append(name)
    return hosts


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=not ca,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


def _usable(cert_path: Path, key_path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        serialization.load_pem_private_key(key_path.read_bytes(), None)
    except (OSError, ValueError, TypeError):
        return False
    return cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=1)


def _write_private(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class InsecureCertDir(ValueError):
    """--cert-dir belongs to another user or others may write into it: a key there is not ours alone."""


def _private_dir(directory: Path) -> None:
    """Create `directory` (0700) or check an existing one: a directory, owned by us, not group/world
    writable. Others who can write there could plant the pair we would serve, or swap ours."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = directory.lstat()
    why = ("is not a directory (a symlink or file)" if not stat.S_ISDIR(st.st_mode)
           else f"is owned by uid {st.st_uid}, not by this process (euid {os.geteuid()})"
           if st.st_uid != os.geteuid()
           else f"is writable by its group or by everyone (mode {stat.S_IMODE(st.st_mode):04o})"
           if st.st_mode & 0o022 else "")
    if why:
        raise InsecureCertDir(
            f"--cert-dir {directory} {why}: refusing to keep a private key there; use a private directory "
            f"(mode 0700, owned by this user) or pass --tls-cert-file/--tls-private-key-file")


def _private_key_file(path: Path) -> bool:
    """The key is a plain file of ours that only we can read or write (else it is not reused)."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def ensure_self_signed(cert_dir: str | Path, hosts: Sequence[str] | None = None,
                       *, valid_days: int = 365) -> tuple[Path, Path, bool]:
    """(cert_path, key_path, generated). Reuses an unexpired pair in cert_dir, as apiserver does, but only
    when the directory and key are this user's alone; else writes a new CA-signed pair there (the cert file
    holds leaf then CA, like `GenerateSelfSignedCertKey`). Raises InsecureCertDir for a directory others
    control."""
    directory = Path(cert_dir)
    cert_path, key_path = directory / f"{SELF_SIGNED_PAIR}.crt", directory / f"{SELF_SIGNED_PAIR}.key"
    _private_dir(directory)
    if _private_key_file(key_path) and cert_path.is_file() and _usable(cert_path, key_path):
        return cert_path, key_path, False
    if key_path.exists() or key_path.is_symlink():
        logger.warning("self-signed pair in --cert-dir not reused (key not private to this user, unusable or "
                       "expiring): generating a new one", extra={"key_file": str(key_path)})
    hosts = list(hosts or default_hosts())
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(days=valid_days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{hosts[0]}-ca@{int(now.timestamp())}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(_key_usage(ca=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{hosts[0]}@{int(now.timestamp())}")])
    leaf = (x509.CertificateBuilder().subject_name(leaf_name).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .add_extension(_san(hosts), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    _write_private(key_path, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), 0o600)
    _write_private(cert_path, leaf.public_bytes(pem) + ca.public_bytes(pem), 0o644)
    return cert_path, key_path, True


@dataclass(frozen=True)
class LoadedCert:
    cert: x509.Certificate
    digest: bytes  # of cert file + key file contents: what "changed" means


def _read_pair(cert_file: Path, key_file: Path) -> tuple[bytes, bytes]:
    return cert_file.read_bytes(), key_file.read_bytes()


class _DelegatingContext(ssl.SSLContext):
    """Hands each new connection to the newest real context (see module doc)."""

    target: ssl.SSLContext

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:  # type: ignore[override]
        return self.target.wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        return self.target.wrap_socket(*args, **kwargs)


class ServingTLS:
    """Serving certificate + trusted client CAs -> `context` for the listener; `watch()` reloads on change."""

    def __init__(self, cert_file: str | Path, key_file: str | Path, *,
                 client_cas: Sequence[CABundle] = (), min_version: str = "VersionTLS12",
                 on_reload: Callable[[str, bool], None] | None = None) -> None:
        if min_version not in TLS_VERSIONS:
            raise ValueError(f"--tls-min-version must be one of {', '.join(TLS_VERSIONS)}, "
                             f"not {min_version!r}")
        self.cert_file, self.key_file = Path(cert_file), Path(key_file)
        self.min_version = TLS_VERSIONS[min_version]
        self.client_cas: tuple[CABundle, ...] = tuple(client_cas)
        self.on_reload = on_reload or (lambda _what, _ok: None)
        self.context = _DelegatingContext(ssl.PROTOCOL_TLS_SERVER)
        self.loaded: LoadedCert | None = None
        self.reloads = 0
        self._stat: tuple[Any, ...] | None = None
        self._failed_stat: tuple[Any, ...] | None = None
        self._pending = False  # a client-CA change waiting for a usable serving pair
        self._build()  # raises: a server must not start without a usable certificate

    def _build(self) -> None:
        cert_bytes, key_bytes = _read_pair(self.cert_file, self.key_file)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = self.min_version
        ctx.set_ciphers(TLS12_CIPHERS)
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
        # aiohttp speaks HTTP/1.1 only; Go clients (the aggregator, kubectl) offer h2 first
        ctx.set_alpn_protocols(["http/1.1"])
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as exc:
            raise ValueError(f"serving certificate {self.cert_file} / key {self.key_file}: {exc}") from None
        if self.client_cas:
            ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.verify_flags = ctx.verify_flags | _NO_CHECK_TIME
            ctx.load_verify_locations(cadata=b"".join(b.pem for b in self.client_cas).decode())
        else:
            ctx.verify_mode = ssl.CERT_NONE
        cert = x509.load_pem_x509_certificate(cert_bytes)
        self.context.target = ctx
        self.loaded = LoadedCert(cert, hashlib.sha256(cert_bytes + b"\0" + key_bytes).digest())
        self._stat = self._file_stat()
        logger.info("serving certificate loaded", extra={
            "cert_file": str(self.cert_file), "subject": cert.subject.rfc4514_string(),
            "fingerprint": fingerprint(cert), "not_after": cert.not_valid_after_utc.isoformat(),
            "client_cas": [b.source for b in self.client_cas]})

    def _file_stat(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for p in (self.cert_file, self.key_file):
            try:
                st = p.stat()  # follows symlinks: Secret volumes swap a ..data symlink
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def set_client_cas(self, bundles: Sequence[CABundle]) -> None:
        bundles = tuple(bundles)
        if tuple(b.pem for b in bundles) == tuple(b.pem for b in self.client_cas):
            return
        self.client_cas = bundles
        try:
            self._build()
            self._pending = False
            self.on_reload("client-ca", True)
        except (OSError, ValueError) as exc:
            # e.g. the serving pair is mid-rotation: `check()` retries until it builds
            self._pending = True
            self.on_reload("client-ca", False)
            logger.error("client CA change not applied yet, retrying", extra={"error": str(exc)})

    def check(self) -> bool:
        """Reload if the files changed; True when a new certificate is in use. A half-written pair
        (cert-manager writes the two files separately) fails to load and is retried at the next check."""
        stat = self._file_stat()
        if self._pending:
            before = self.loaded.digest if self.loaded else b""
            try:
                self._build()
            except (OSError, ValueError):
                return False
            self._pending = False
            self.on_reload("client-ca", True)
            if self.loaded is not None and self.loaded.digest != before:
                self.reloads += 1
                self.on_reload("serving-cert", True)
            return True
        if stat == self._stat or stat == self._failed_stat:
            return False  # unchanged, or the same unusable files we already warned about
        try:
            cert_bytes, key_bytes = _read_pair(self.cert_file, self.key_file)
        except OSError as exc:
            logger.warning("serving certificate unreadable, keeping the current one",
                           extra={"error": str(exc)})
            return False
        if self.loaded and hashlib.sha256(cert_bytes + b"\0" + key_bytes).digest() == self.loaded.digest:
            self._stat = stat
            return False
        try:
            self._build()
        except (OSError, ValueError) as exc:
            logger.warning("new serving certificate not usable yet, keeping the current one",
                           extra={"error": str(exc)})
            self._failed_stat = stat
            self.on_reload("serving-cert", False)
            return False
        self.reloads += 1
        self.on_reload("serving-cert", True)
        return True

    async def watch(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()
