"""Test PKI: real X.509 certificates made with `cryptography`, written to files the way kubeadm lays them out.

A cluster CA (signs client certificates: user = CN, groups = O), a front-proxy CA (signs the aggregator's
`front-proxy-client` certificate), serving certificates, expired and not-yet-valid certificates.

    pki = TestPKI(tmp_path)
    ca = pki.ca("kubernetes")                       # -> Issued (cert, key, cert_path, key_path)
    fp_ca = pki.ca("front-proxy-ca")
    pki.client(ca, "alice", groups=["dev"])         # client cert signed by the cluster CA
    pki.client(fp_ca, "front-proxy-client")         # what kube-apiserver presents to aggregated APIs
    pki.server(ca, "adapter", hosts=["127.0.0.1", "localhost"])
    pki.client(ca, "bob", expired=True)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    name: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class TestPKI:
    __test__ = False  # not a pytest class

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._serial = 1000

    def _write(self, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
        cert_path, key_path = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_key_pem(key))
        key_path.chmod(0o600)
        return Issued(name, cert, key, cert_path, key_path)

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def ca(self, common_name: str, *, file_name: str | None = None) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(self._next_serial())
            .not_valid_before(_now() - dt.timedelta(hours=1))
            .not_valid_after(_now() + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return self._write(file_name or common_name, cert, key)

    def _leaf(
        self,
        issuer: Issued,
        subject: x509.Name,
        *,
        eku: list[x509.ObjectIdentifier],
        hosts: list[str] | None,
        file_name: str,
        expired: bool,
        not_yet_valid: bool,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        if expired:
            start, end = _now() - dt.timedelta(days=30), _now() - dt.timedelta(days=1)
        elif not_yet_valid:
            start, end = _now() + dt.timedelta(days=1), _now() + dt.timedelta(days=30)
        else:
            start, end = _now() - dt.timedelta(minutes=5), _now() + dt.timedelta(days=30)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(self._next_serial())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=True,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
            )
        )
        if hosts:
            sans: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    sans.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(issuer.key, hashes.SHA256())
        return self._write(file_name, cert, key)

    def client(
        self,
        issuer: Issued,
        common_name: str,
        *,
        groups: list[str] | None = None,
        file_name: str | None = None,
        expired: bool = False,
        not_yet_valid: bool = False,
        server_auth_only: bool = False,
    ) -> Issued:
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups or []]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        eku = [ExtendedKeyUsageOID.SERVER_AUTH] if server_auth_only else [ExtendedKeyUsageOID.CLIENT_AUTH]
        return self._leaf(
            issuer, x509.Name(attrs), eku=eku, hosts=None,
            file_name=file_name or f"client-{common_name.replace(':', '_')}",
            expired=expired, not_yet_valid=not_yet_valid,
        )

    def server(
        self,
        issuer: Issued,
        common_name: str,
        *,
        hosts: list[str],
        file_name: str | None = None,
        expired: bool = False,
    ) -> Issued:
        return self._leaf(
            issuer, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
            eku=[ExtendedKeyUsageOID.SERVER_AUTH], hosts=hosts,
            file_name=file_name or f"server-{common_name}", expired=expired, not_yet_valid=False,
        )


def bundle(path: Path, *issued: Issued) -> Path:
    """Write several CA certificates into one PEM bundle (how client-ca-file often looks)."""
    path.write_bytes(b"".join(i.cert_pem for i in issued))
    return path


# --- the control plane's PKI (RSA, kubeadm's layout) -----------------------------------------------------


class KubePki:
    """RSA certificates laid out as kubeadm does (ca.crt, front-proxy-ca.crt, apiserver.crt, sa.key, ...)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._serial = int(time.time())

    def _key(self) -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def _write(self, name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> None:
        (self.dir / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kp = self.dir / f"{name}.key"
        kp.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        kp.chmod(0o600)

    def ca(self, name: str, cn: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        key = self._key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        self._serial += 1
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(self._serial)
            .not_valid_before(_now() - dt.timedelta(hours=1))
            .not_valid_after(_now() + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        self._write(name, cert, key)
        return cert, key

    def leaf(
        self,
        name: str,
        issuer: tuple[x509.Certificate, rsa.RSAPrivateKey],
        cn: str,
        *,
        orgs: tuple[str, ...] = (),
        hosts: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
    ) -> None:
        key = self._key()
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        eku = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        self._serial += 1
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(issuer[0].subject)
            .public_key(key.public_key())
            .serial_number(self._serial)
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
            )
        )
        if hosts:
            sans: list[x509.GeneralName] = []
            for h in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(h)))
                except ValueError:
                    sans.append(x509.DNSName(h))
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        self._write(name, b.sign(issuer[1], hashes.SHA256()), key)

    def service_account_keys(self) -> None:
        key = self._key()
        kp = self.dir / "sa.key"
        kp.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        kp.chmod(0o600)
        (self.dir / "sa.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
