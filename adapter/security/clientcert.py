"""Client-certificate checks, as k8s.io/apiserver's x509 authenticator and request-header verifier do them.

The TLS handshake has already checked the chain's signatures against the union of the trusted client CAs (see
`tls.ServingTLS`). Here the leaf is checked against one specific bundle (cluster client CA, or front-proxy
CA), for validity in time, and for the clientAuth extended key usage: apiserver's
`x509.DefaultVerifyOptions()` (KeyUsages: ClientAuth). Pure functions, no I/O.

Python 3.11's ssl module hands out only the peer's leaf certificate, so a leaf must be issued directly by a
certificate in the bundle (put intermediate CAs in the bundle).
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID


class CertificateError(Exception):
    """A presented client certificate is not acceptable (the message says why)."""


@dataclass(frozen=True)
class CABundle:
    """Parsed PEM bundle of CA certificates; `source` says where it came from (file or ConfigMap key)."""

    pem: bytes
    certs: tuple[x509.Certificate, ...]
    source: str

    @classmethod
    def from_pem(cls, pem: bytes | str, source: str) -> CABundle:
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            certs = tuple(x509.load_pem_x509_certificates(data))
        except ValueError as exc:
            raise ValueError(f"{source}: not a PEM certificate bundle: {exc}") from None
        if not certs:
            raise ValueError(f"{source}: no certificates in bundle")
        return cls(pem=data, certs=certs, source=source)


def _hex(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in data)


def certificate_identifier(cert: x509.Certificate) -> str:
    """`SN=..., SKID=..., AKID=...`, the form apiserver logs a failed client certificate in."""
    try:
        skid = _hex(cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest)
    except x509.ExtensionNotFound:
        skid = ""
    try:
        akid_raw = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        akid = _hex(akid_raw or b"")
    except x509.ExtensionNotFound:
        akid = ""
    return f"SN={cert.serial_number}, SKID={skid}, AKID={akid}"


def common_name(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def organizations(cert: x509.Certificate) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]


def load_leaf(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateError(f"unparseable client certificate: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether `ca` signed `leaf`. Memoised (certificates hash and compare by their DER): a caller on a
    keep-alive connection presents the same certificate on every request, and the signature check is the
    costly part (~0.2 ms for ECDSA). Dates and usage are checked afresh each time by the caller."""
    if leaf.issuer != ca.subject:
        return False
    try:
        leaf.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def verify_client_certificate(leaf: x509.Certificate, bundle: CABundle, now: dt.datetime) -> x509.Certificate:
    """The CA in `bundle` that issued `leaf`, or CertificateError saying why the certificate is refused."""
    ident = certificate_identifier(leaf)
    issuer = next((ca for ca in bundle.certs if _issued_by(leaf, ca)), None)
    if issuer is None:
        raise CertificateError(f"verifying certificate {ident} failed: x509: certificate signed by unknown "
                               f"authority (not issued by {bundle.source})")
    for cert, what in ((leaf, "certificate"), (issuer, "issuing CA certificate")):
        if now < cert.not_valid_before_utc:
            raise CertificateError(f"verifying certificate {ident} failed: x509: {what} is not yet valid "
                                   f"(valid from {cert.not_valid_before_utc.isoformat()})")
        if now > cert.not_valid_after_utc:
            raise CertificateError(f"verifying certificate {ident} failed: x509: {what} has expired "
                                   f"(valid until {cert.not_valid_after_utc.isoformat()})")
    try:
        eku = leaf.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
    except x509.ExtensionNotFound:
        eku = None  # no EKU extension: any usage, as in Go's x509
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku and \
            ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
        raise CertificateError(f"verifying certificate {ident} failed: x509: certificate specifies an "
                               f"incompatible key usage (clientAuth required)")
    return issuer
