"""TLS between nodes and for clients: the SSL contexts a node and its peers use.

I/O (reads certificate and key files). A node started with ``--tls-cert``,
``--tls-key`` and ``--tls-ca`` serves HTTPS only — there is no plain-HTTP
port, so the cluster token never crosses the network in clear text — and:

- as a server, presents its certificate and *asks* every client for one,
  verified against the cluster's CA (``CERT_OPTIONAL``): a client that
  presents a certificate from another CA fails the handshake; a client with
  none gets in to the client API with the token (server TLS + token), while
  the peer API (``/internal/…``) also demands a verified certificate —
  mutual TLS for peer traffic (``require_peer_certificate``);
- as a client of its peers, verifies their certificates against the same CA
  (and their host name or IP against the certificate) and presents its own.

The same three files configure the map/reduce engine's Dask traffic: a node
hands them to its engines as the node options ``tls.ca``, ``tls.cert`` and
``tls.key`` (``OPTION_*``), which Dask's ``Security`` takes as they are.
Certificates for a local cluster come from ``legion.runtime.certificates``.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path

from legion.errors import ConfigError, Unauthorized

OPTION_CA = "tls.ca"
OPTION_CERT = "tls.cert"
OPTION_KEY = "tls.key"
PEER_PATH_PREFIX = "/internal/"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A node's certificate and key (PEM) and the cluster CA's certificate that every peer's must chain to."""

    cert: Path
    key: Path
    ca: Path

    def check(self) -> TlsFiles:
        for flag, path in (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-ca", self.ca)):
            if not Path(path).is_file():
                raise ConfigError(f"{flag} {path}: no such file")
        return self

    def as_options(self) -> dict[str, str]:
        """The node options that hand these files to the engines."""
        return {OPTION_CA: str(self.ca), OPTION_CERT: str(self.cert), OPTION_KEY: str(self.key)}


def tls_files(cert: Path | None, key: Path | None, ca: Path | None) -> TlsFiles | None:
    """The three ``--tls-*`` files, all or none; ConfigError for some without the others."""
    given = [value is not None for value in (cert, key, ca)]
    if not any(given):
        return None
    if not all(given):
        raise ConfigError("TLS needs all three of --tls-cert, --tls-key and --tls-ca")
    return TlsFiles(Path(cert), Path(key), Path(ca)).check()  # type: ignore[arg-type]


def _load(context: ssl.SSLContext, files: TlsFiles) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key)
        context.load_verify_locations(cafile=str(files.ca))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load the TLS files ({files.cert}, {files.key}, CA {files.ca}): {exc}") from None
    return context


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """What the node serves HTTPS with: its certificate, and clients' certificates checked against the CA if sent."""
    context = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def peer_context(files: TlsFiles) -> ssl.SSLContext:
    """What the node calls its peers with: their certificates checked against the CA, its own presented."""
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), files)


def client_context(ca: Path | str) -> ssl.SSLContext:
    """What a client verifies the nodes with: the cluster CA's certificate."""
    try:
        return ssl.create_default_context(cafile=str(ca))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load the CA certificate {ca}: {exc}") from None


def require_peer_certificate(path: str, peer_certificate: object) -> None:
    """Unauthorized for a call to the peer API without a certificate the CA signed (mutual TLS)."""
    if path.startswith(PEER_PATH_PREFIX) and not peer_certificate:
        raise Unauthorized("peer calls on a TLS cluster need a client certificate signed by the cluster CA")


PROBE_TIMEOUT_S = 2.0


async def speaks_tls(host: str | None, port: int | None) -> bool:
    """Whether ``host:port`` completes a TLS handshake (certificate unchecked: this only asks what it speaks)."""
    if not host or not port:
        return False
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=probe), PROBE_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError, ssl.SSLError):
        return False
    writer.close()
    return True
