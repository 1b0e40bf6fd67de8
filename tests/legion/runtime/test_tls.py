"""Unit tests for ``legion.runtime.tls`` and ``legion.runtime.certificates`` (no node processes)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from legion.errors import ConfigError, Unauthorized
from legion.runtime import certificates
from legion.runtime.tls import peer_context, require_peer_certificate, server_context, speaks_tls, tls_files


def test_the_three_files_come_together_or_not_at_all(tmp_path: Path):
    assert tls_files(None, None, None) is None
    with pytest.raises(ConfigError, match="all three"):
        tls_files(tmp_path / "a.pem", None, None)
    with pytest.raises(ConfigError, match="--tls-cert .*no such file"):
        tls_files(tmp_path / "a.pem", tmp_path / "a.key", tmp_path / "ca.pem")


def test_only_the_peer_api_demands_a_certificate():
    require_peer_certificate("/v1/kv/x", None)
    require_peer_certificate("/internal/apply", {"subject": ()})
    with pytest.raises(Unauthorized):
        require_peer_certificate("/internal/apply", None)


def test_a_node_certificate_is_accepted_by_its_ca_and_refused_under_another(tmp_path: Path):
    ca, ca_key = certificates.make_ca(tmp_path / "ca")
    assert (tmp_path / "ca" / certificates.CA_KEY_FILE).stat().st_mode & 0o777 == 0o600
    n1 = certificates.make_node_certificate(ca, ca_key, tmp_path / "n1", "n1")
    n2 = certificates.make_node_certificate(ca, ca_key, tmp_path / "n2", "n2")
    other_ca, other_key = certificates.make_ca(tmp_path / "other", "Another CA")
    stranger = certificates.make_node_certificate(other_ca, other_key, tmp_path / "x", "x")
    stranger = type(stranger)(stranger.cert, stranger.key, ca)  # trusts our CA, but its own certificate is foreign

    async def handshake(client_files) -> dict:
        seen: dict = {}

        async def serve(reader, writer):
            seen["peer"] = writer.get_extra_info("peercert")
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context(n1))
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=peer_context(client_files))
            try:
                await asyncio.wait_for(reader.read(), 5)  # TLS 1.3: the server's verdict on our certificate comes now
            except (ssl.SSLError, ConnectionError):
                pass
            writer.close()
        finally:
            server.close()
        return seen

    seen = asyncio.run(handshake(n2))
    assert ("commonName", "n2") in [pair for rdn in seen["peer"]["subject"] for pair in rdn]
    # The server never completes a handshake with a certificate another CA signed: no connection is served.
    assert asyncio.run(handshake(stranger)) == {}


def test_speaks_tls_tells_a_tls_port_from_a_closed_one(tmp_path: Path):
    ca, ca_key = certificates.make_ca(tmp_path / "ca")
    files = certificates.make_node_certificate(ca, ca_key, tmp_path / "n1", "n1")

    async def check() -> tuple[bool, bool]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_context(files))
        port = server.sockets[0].getsockname()[1]
        try:
            return await speaks_tls("127.0.0.1", port), await speaks_tls("127.0.0.1", None)
        finally:
            server.close()

    assert asyncio.run(check()) == (True, False)
