"""Certificates for a local TLS cluster: a private CA and one certificate per node.

I/O (writes PEM files; private keys with mode 0600). ``legion cluster up
--tls`` calls ``make_ca`` once and ``make_node_certificate`` per node; each
node certificate names its node id, ``localhost`` and the IP addresses it is
reached at, and serves both as a server and as a client certificate (a node
is both to its peers). Made with the ``cryptography`` package. For machines
of your own, bring certificates from your own CA: a node only needs the three
files (``legion node start --tls-cert/--tls-key/--tls-ca``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from legion.runtime.tls import TlsFiles

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
NODE_CERT_FILE = "node.pem"
NODE_KEY_FILE = "node.key"
VALID_DAYS = 825


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, data)
    finally:
        os.close(descriptor)


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALID_DAYS)


def make_ca(directory: Path, name: str = "Legion cluster CA") -> tuple[Path, Path]:
    """A new CA in ``directory`` (``ca.pem``, ``ca.key``); their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    not_before, not_after = _validity()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    (directory / CA_CERT_FILE).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(directory / CA_KEY_FILE, key)
    return directory / CA_CERT_FILE, directory / CA_KEY_FILE


def make_node_certificate(
    ca_cert: Path, ca_key: Path, directory: Path, node_id: str, hosts: Sequence[str] = ("127.0.0.1", "localhost")
) -> TlsFiles:
    """A certificate for ``node_id`` signed by the CA, valid for ``hosts`` as server and client; its TLS files."""
    directory.mkdir(parents=True, exist_ok=True)
    issuer = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    issuer_key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    not_before, not_after = _validity()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()), critical=False  # type: ignore[arg-type]
        )
        .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    (directory / NODE_CERT_FILE).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(directory / NODE_KEY_FILE, key)
    return TlsFiles(directory / NODE_CERT_FILE, directory / NODE_KEY_FILE, ca_cert)
