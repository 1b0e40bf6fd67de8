"""TLS between machines: a ``--tls`` cluster of real node processes on loopback.

The cluster's private CA and node certificates come from ``legion cluster up
--tls`` (``legion.runtime.certificates``). The tests check what a user and an
attacker on the network would meet: KV reads and writes over HTTPS, a client
that does not trust the CA refused, a peer whose certificate another CA
signed refused at the handshake, no plain-HTTP port anywhere in a node
process, a plain-HTTP node refused with a clear error, and a map/reduce job
whose Dask traffic runs over TLS too.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pytest

from engines.kv import KVClient
from engines.mapreduce.client import MRClient
from engines.mapreduce.examples import source
from legion.client import Client
from legion.errors import ConfigError
from legion.runtime import certificates
from legion.runtime import local_cluster
from tests.conftest import CLUSTER_START_TIMEOUT_S

PLAIN_NODE_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("tls") / "cluster"
    local_cluster.up(directory, nodes=3, partitions=16, replicas=3, base_port=0, timeout_s=CLUSTER_START_TIMEOUT_S, tls=True)
    try:
        yield directory
    finally:
        local_cluster.down(directory)


def node_address(directory: Path, node_id: str) -> tuple[str, int]:
    url = next(n["url"] for n in local_cluster.load(directory)["nodes"] if n["id"] == node_id)
    parts = urlsplit(url)
    assert parts.scheme == "https", url
    return parts.hostname, parts.port


def raw_call(directory: Path, context: ssl.SSLContext, path: str, method: str = "GET", body: bytes | None = None):
    host, port = node_address(directory, "n1")
    token = (directory / "token").read_text().strip()
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its socket inodes matched against /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_kv_reads_and_writes_over_https_through_every_node(tls_cluster: Path):
    with Client.connect(tls_cluster) as client:
        assert all(url.startswith("https://") for url in client.urls)
        status = client.status()
        assert {m["status"] for m in status["members"]} == {"up"}
        assert all(m["url"].startswith("https://") for m in status["members"])
        kv = KVClient(client)
        for i in range(50):
            kv.put(f"secret:{i}", f"value {i}".encode())
    for node in local_cluster.load(tls_cluster)["nodes"]:
        with Client([node["url"]], (tls_cluster / "token").read_text().strip(), ca=tls_cluster / "tls" / "ca.pem") as one:
            assert KVClient(one).get("secret:7").value == b"value 7"


def test_a_client_without_the_ca_is_refused_with_what_to_do(tls_cluster: Path, tmp_path: Path):
    urls = [n["url"] for n in local_cluster.load(tls_cluster)["nodes"]]
    with Client(urls, (tls_cluster / "token").read_text().strip()) as untrusting:
        with pytest.raises(ConfigError, match="--ca or LEGION_CA"):
            untrusting.status()
    # The CLI, pointed at the nodes by LEGION_URL and LEGION_TOKEN: one error line without the CA; in with --ca or LEGION_CA.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEGION_")}
    env.update(LEGION_URL=",".join(urls), LEGION_TOKEN=(tls_cluster / "token").read_text().strip(), NO_COLOR="1")
    ca = str(tls_cluster / "tls" / "ca.pem")

    def legion(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args], capture_output=True, text=True, env={**env, **extra}, cwd=tmp_path, timeout=60
        )

    refused = legion("kv", "put", "via-cli", "yes")
    assert refused.returncode == 1 and "--ca or LEGION_CA" in refused.stderr and "Traceback" not in refused.stderr
    assert legion("--ca", ca, "kv", "put", "via-cli", "yes").returncode == 0
    read = legion("kv", "get", "via-cli", LEGION_CA=ca)
    assert read.returncode == 0 and "yes" in read.stdout, read.stderr


def test_peers_need_a_certificate_from_the_cluster_ca(tls_cluster: Path, tmp_path: Path):
    ca_file = tls_cluster / "tls" / "ca.pem"
    gossip = json.dumps({"node_id": "intruder"}).encode()
    # No client certificate: the client API answers (server TLS + token), the peer API does not.
    trusting = ssl.create_default_context(cafile=str(ca_file))
    assert raw_call(tls_cluster, trusting, "/v1/health")[0] == 200
    status, body = raw_call(tls_cluster, trusting, "/internal/gossip", "POST", gossip)
    assert status == 401 and b"client certificate" in body
    # A certificate from another CA: the handshake itself fails, nothing is served.
    other_ca, other_key = certificates.make_ca(tmp_path / "other-ca", "Not the cluster CA")
    foreign = certificates.make_node_certificate(other_ca, other_key, tmp_path / "intruder", "intruder")
    impostor = ssl.create_default_context(cafile=str(ca_file))
    impostor.load_cert_chain(foreign.cert, foreign.key)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        raw_call(tls_cluster, impostor, "/internal/gossip", "POST", gossip)
    # A certificate the cluster CA signed is a peer.
    member = local_cluster.load(tls_cluster)["nodes"][1]
    peer = ssl.create_default_context(cafile=str(ca_file))
    peer.load_cert_chain(Path(member["data_dir"]) / "tls" / "node.pem", Path(member["data_dir"]) / "tls" / "node.key")
    assert raw_call(tls_cluster, peer, "/internal/gossip", "POST", json.dumps({"node_id": member["id"]}).encode())[0] == 200


def test_no_plain_http_port_exists(tls_cluster: Path):
    for node in local_cluster.load(tls_cluster)["nodes"]:
        port = urlsplit(node["url"]).port
        # The node process listens on its HTTPS port and nothing else.
        assert listening_ports(node["pid"]) == {port}, node["id"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            plain.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            plain.settimeout(5)
            try:
                answer = plain.recv(100)
            except ConnectionError:
                answer = b""
            assert not answer.startswith(b"HTTP/"), answer


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_plain_http_node_refuses_to_join_a_tls_cluster(tls_cluster: Path, tmp_path: Path, scheme: str):
    host, port = node_address(tls_cluster, "n1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "cli", "node", "start", "--data-dir", str(tmp_path / "plain"),
         "--listen", f"127.0.0.1:{free_port}", "--join", f"{scheme}://{host}:{port}",
         "--token-file", str(tls_cluster / "token")],
        capture_output=True, text=True, timeout=PLAIN_NODE_TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 1
    assert "uses TLS and this node serves plain HTTP" in result.stderr
    assert "--tls-cert" in result.stderr
    with Client.connect(tls_cluster) as client:
        assert len(client.status()["members"]) == 3


def test_a_map_reduce_job_runs_with_dask_over_tls(tls_cluster: Path):
    document = local_cluster.load(tls_cluster)
    assert document["options"]["mr.scheduler"].startswith("tls://")
    scheduler = next(s for s in document["services"] if s["id"].endswith("dask-scheduler"))
    assert "--tls-ca-file" in scheduler["argv"]
    with Client.connect(tls_cluster, timeout_s=60) as client:
        mr = MRClient(client)
        lines = ["the cat", "the dog", "a cat"]
        mr.ingest_table("lines", pa.table({"id": [str(i) for i in range(len(lines))], "line": lines}), key="id")
        _status, counted = mr.run(source("word_count"), "lines")
    counts = dict(zip(counted.column(0).to_pylist(), counted.column(1).to_pylist()))
    assert counts == {"the": 2, "cat": 2, "dog": 1, "a": 1}
