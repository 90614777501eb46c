"""X.509 certificates with chosen subject alternative names of every type (DNS, IP address, email, URI) and a
chosen common name, made with ``cryptography`` (trustme, behind ``support.tls``, makes no URI names nor a name of
one type spelled as another's), signed by a CA made here; written as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
from dataclasses import dataclass
from typing import Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class San:
    """One subject alternative name: ``kind`` is "DNS", "IP", "email" or "URI"; ``value`` is written as it is
    (a DNS or email name need not look like one: that is what the tests are about)."""

    kind: str
    value: str

    def general_name(self) -> x509.GeneralName:
        if self.kind == "DNS":
            return x509.DNSName(self.value)
        if self.kind == "IP":
            return x509.IPAddress(ipaddress.ip_address(self.value))
        if self.kind == "email":
            return x509.RFC822Name(self.value)
        if self.kind == "URI":
            return x509.UniformResourceIdentifier(self.value)
        raise ValueError(f"unknown SAN type {self.kind!r}")


@dataclass(frozen=True)
class PemFiles:
    """A certificate's and its private key's PEM files."""

    certificate: str
    private_key: str


class CertificateAuthority:
    """A CA (ECDSA P-256) that issues leaf certificates for servers and clients alike."""

    def __init__(self, name: str = "mindserve test CA"):
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, path: pathlib.Path) -> str:
        """The CA's certificate written to ``path``; its path."""
        path.write_bytes(self.pem)
        return str(path)

    def issue(
        self, folder: pathlib.Path, name: str, sans: Sequence[San] = (), common_name: Optional[str] = None
    ) -> PemFiles:
        """A leaf certificate (for TLS servers and clients) with ``sans`` and, when given, ``common_name`` as
        its subject (else the subject is only an organization), written as ``<name>.pem`` and ``<name>.key``."""
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mindserve tests")]
        if common_name is not None:
            attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([s.general_name() for s in sans]), critical=False
            )
        certificate = builder.sign(self._key, hashes.SHA256())
        cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return PemFiles(str(cert_path), str(key_path))
