#!/usr/bin/env python3
"""Write a CA and a serving certificate for the adapter and the APIService caBundle patch next to this file.

Usage: python deploy/adapter/self-signed/make-certs.py [--days 365] [--out DIR] [--service S --namespace NS]
Needs the `cryptography` package (a toposcale dependency). The CA key is not kept: to renew, run it again and
re-apply (the APIService gets the new CA and the Secret the new certificate in the same apply).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent


def make(out: Path, service: str, namespace: str, days: int) -> None:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{service}-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    dns = [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_pem = ca.public_bytes(pem)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.crt").write_bytes(ca_pem)
    (out / "tls.crt").write_bytes(cert.public_bytes(pem))
    key_file = out / "tls.key"
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    (out / "apiservice-cabundle.yaml").write_text(
        "# written by make-certs.py: the CA that signed tls.crt\n"
        "apiVersion: apiregistration.k8s.io/v1\n"
        "kind: APIService\n"
        "metadata:\n"
        "  name: v1beta1.external.metrics.k8s.io\n"
        "spec:\n"
        f"  caBundle: {base64.b64encode(ca_pem).decode()}\n"
    )
    print(f"wrote ca.crt, tls.crt, tls.key, apiservice-cabundle.yaml to {out} (valid {days} days, {dns[0]})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--out", type=Path, default=HERE, help="folder for the files (default: this one)")
    p.add_argument("--service", default="toposcale-adapter",
                   help="Service the certificate names (default %(default)s)")
    p.add_argument("--namespace", default="toposcale", help="its namespace (default %(default)s)")
    p.add_argument("--days", type=int, default=365, help="validity in days (default %(default)s)")
    a = p.parse_args()
    make(a.out, a.service, a.namespace, a.days)


if __name__ == "__main__":
    main()
