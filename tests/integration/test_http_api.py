"""Bad input over HTTP gets a 4xx that says what to fix; nothing gets a 500 or kills a node.

One 3-node cluster for the module; raw HTTP (aiohttp-free, stdlib) so the
tests see exactly what a curl user would.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legion.limits import KEY_BYTES_MAX, REQUEST_BODY_BYTES_MAX, VALUE_BYTES_MAX
from legion.runtime import local_cluster
from tests.conftest import NO_DASK


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("api") / "cluster"
    local_cluster.up(directory, nodes=3, partitions=16, replicas=3, base_port=0, timeout_s=60, options=NO_DASK)
    doc = local_cluster.load(directory)
    token = (directory / "token").read_text().strip()
    schema = json.dumps(SEARCH_SCHEMA).encode()
    status, _, body = send(doc["nodes"][0]["url"], "PUT", "/v1/search/fz", schema, auth(token, **{"Content-Type": "application/json"}))
    assert status == 201, body
    try:
        yield [n["url"] for n in doc["nodes"]], token, directory
    finally:
        local_cluster.down(directory)


def send(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def auth(token: str, **extra: str) -> dict:
    return {"Authorization": f"Bearer {token}", **extra}


def error_of(body: bytes) -> dict:
    parsed = json.loads(body)
    assert isinstance(parsed.get("message"), str) and parsed["message"], parsed
    return parsed


@pytest.mark.parametrize(
    "method,path",
    [("GET", "/v1/cluster"), ("GET", "/v1/kv/a"), ("PUT", "/v1/kv/a"), ("POST", "/internal/apply"), ("GET", "/internal/fold?engine=kv&partition=0"), ("GET", "/nope")],
)
def test_requests_without_the_token_get_401_and_run_nothing(cluster, method, path):
    urls, token, _ = cluster
    status, _, body = send(urls[0], method, path, body=b"x" if method in ("PUT", "POST") else None)
    assert status == 401
    assert "token" in error_of(body)["message"]
    status, _, _ = send(urls[0], method, path, headers={"Authorization": "Bearer wrong"})
    assert status == 401


def test_an_unauthenticated_put_writes_nothing(cluster):
    urls, token, _ = cluster
    assert send(urls[0], "PUT", "/v1/kv/sneaky", b"x")[0] == 401
    assert send(urls[1], "GET", "/v1/kv/sneaky", headers=auth(token))[0] == 404


def test_oversized_values_and_bodies_get_413(cluster):
    urls, token, _ = cluster
    status, _, body = send(urls[0], "PUT", "/v1/kv/big", b"v" * (VALUE_BYTES_MAX + 1), auth(token))
    assert status == 413 and str(VALUE_BYTES_MAX) in error_of(body)["message"]
    status, _, body = send(urls[0], "PUT", "/v1/kv/huge", b"v" * (REQUEST_BODY_BYTES_MAX + 1), auth(token))
    assert status == 413
    error_of(body)


def test_json_nested_too_deep_is_a_400_not_a_500(cluster):
    urls, token, _ = cluster
    for depth_bomb in (b"[" * 100_000, b'{"a": ' * 50_000):
        status, _, raw = send(urls[0], "POST", "/v1/cluster/join", depth_bomb, auth(token))
        assert status == 400 and "JSON" in error_of(raw)["message"], raw


def test_bad_keys_and_parameters_get_400_with_a_reason(cluster):
    urls, token, _ = cluster
    long_key = "k" * (KEY_BYTES_MAX + 1)
    status, _, body = send(urls[0], "PUT", f"/v1/kv/{long_key}", b"x", auth(token))
    assert status == 400 and "key" in error_of(body)["message"]
    status, _, body = send(urls[0], "PUT", "/v1/kv/a?w=two", b"x", auth(token))
    assert status == 400 and "'w'" in error_of(body)["message"]
    status, _, body = send(urls[0], "GET", "/v1/kv/a?r=0", None, auth(token))
    assert status == 400


def test_a_key_has_exactly_one_url_and_undecodable_paths_get_400(cluster):
    urls, token, _ = cluster
    # %ff%fe is not UTF-8: refused, so it cannot alias the key "%ff%fe", whose URL is %25ff%25fe.
    status, _, body = send(urls[0], "PUT", "/v1/kv/%ff%fe", b"raw", auth(token))
    assert status == 400 and "UTF-8" in error_of(body)["message"]
    status, _, _ = send(urls[0], "PUT", "/v1/kv/%25ff%25fe", b"escaped", auth(token))
    assert status in (200, 201, 204)
    status, _, body = send(urls[1], "GET", "/v1/kv/" + quote("%ff%fe", safe="") + "?r=2", None, auth(token))
    assert status == 200 and body == b"escaped"
    for path, reason in [
        ("/v1/kv/a%00b", "NUL"),
        ("/v1/kv/%ed%a0%80", "UTF-8"),  # an encoded lone surrogate
        ("/v1/kv/%zz", "invalid escape"),
        ("/v1/search/fz/docs/%c0%af", "UTF-8"),
    ]:
        status, _, body = send(urls[0], "GET", path, None, auth(token))
        assert status == 400 and reason in error_of(body)["message"], (path, body)


def test_malformed_cluster_and_peer_bodies_get_400(cluster):
    urls, token, _ = cluster
    for path, body in [
        ("/v1/cluster/join", b"{not json"),
        ("/v1/cluster/join", b'{"node_id": "../../etc", "url": "http://127.0.0.1:1"}'),
        ("/v1/cluster/join", b'{"node_id": "n9", "url": "ftp://x"}'),
        ("/v1/cluster/remove", b"[]"),
        ("/internal/apply", b"\xc1\xc1"),
        ("/internal/apply", b"\x91\x01"),
        ("/internal/read", b"\x80"),
        ("/internal/gossip", b'{"node_id": "n1", "state": {"bogus": 1}}'),
    ]:
        status, _, raw = send(urls[0], "POST", path, body, auth(token, **{"Content-Type": "application/json"}))
        assert 400 <= status < 500, (path, body, status, raw)
        error_of(raw)


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type", "words"),
    [
        ("POST", "/v1/kv", b"", "application/x-ndjson", "no items"),
        ("POST", "/v1/kv", b"\xc1\xc1", "application/msgpack", "msgpack"),
        ("POST", "/v1/kv", b"\x81\xa3key\xa1k", "application/msgpack", "list"),
        ("POST", "/v1/kv?w=two", b'{"key": "k", "value": "v"}', "application/x-ndjson", "'w'"),
        ("POST", "/v1/kv?w=0", b'{"key": "k", "value": "v"}', "application/x-ndjson", "w must be"),
        ("POST", "/v1/kv?refresh=maybe", b'{"key": "k", "value": "v"}', "application/x-ndjson", "'refresh'"),
        ("GET", "/v1/kv?limit=0", None, "text/plain", "limit"),
        ("GET", "/v1/kv?limit=many", None, "text/plain", "'limit'"),
        ("GET", "/v1/kv?allow_partial=2", None, "text/plain", "'allow_partial'"),
        ("GET", "/v1/kv?prefix=" + "k" * (KEY_BYTES_MAX + 1), None, "text/plain", "prefix"),
        ("PUT", "/v1/kv/k?refresh=sure", b"v", "text/plain", "'refresh'"),
        ("POST", "/internal/apply?refresh=2", b"\x90", "application/msgpack", "'refresh'"),
        ("POST", "/internal/coverage", b"\x83\xa6engine\xa2kv\xaapartitions\x92\x00\x00\xa5query\xc0", "application/msgpack", "repeat"),
        ("POST", "/internal/coverage", b"\x83\xa6engine\xa2kv\xaapartitions\x91\x63\xa5query\xc0", "application/msgpack", "out of range"),
        ("POST", "/internal/coverage", b"\x83\xa6engine\xa2kv\xaapartitions\x91\x00\xa5query\xa1x", "application/msgpack", "listing query"),
    ],
)
def test_bad_input_on_bulk_listing_refresh_and_coverage_routes_gets_4xx_with_a_reason(
    cluster, method, path, body, content_type, words
):
    urls, token, _ = cluster
    status, _, raw = send(urls[0], method, path, body, auth(token, **{"Content-Type": content_type}))
    assert 400 <= status < 500, (path, status, raw)
    assert words in error_of(raw)["message"], raw


def test_a_bad_line_of_a_bulk_put_fails_alone_with_its_line_number(cluster):
    urls, token, _ = cluster
    body = b'{"key": "bulk-a", "value": "1"}\n{"key": "bulk-b", "value": ' + b"[" * 100_000 + b'\n{"key": "bulk-c", "value": "3"}\n'
    # refresh=1: every replica has the good lines before the answer, so any node reads them.
    headers = auth(token, **{"Content-Type": "application/x-ndjson"})
    status, _, raw = send(urls[1], "POST", "/v1/kv?refresh=1", body, headers)
    assert status == 200, raw
    reply = json.loads(raw)
    assert (reply["written"], reply["failed"]) == (2, 1)
    assert reply["results"][1]["line"] == 2 and reply["results"][1]["message"].startswith("line 2: ")
    status, _, value = send(urls[2], "GET", "/v1/kv/bulk-c", None, auth(token))
    assert (status, value) == (200, b"3")


def test_removing_an_unknown_node_is_404(cluster):
    urls, token, _ = cluster
    status, _, body = send(urls[0], "POST", "/v1/cluster/remove", b'{"node_id": "ghost"}', auth(token))
    assert status == 404 and "ghost" in error_of(body)["message"]


def test_unknown_routes_and_methods_get_json_4xx(cluster):
    urls, token, _ = cluster
    status, _, body = send(urls[0], "GET", "/v2/whatever", None, auth(token))
    assert status == 404
    error_of(body)
    status, _, body = send(urls[0], "PATCH", "/v1/kv/a", b"", auth(token))
    assert status == 405
    error_of(body)


SEARCH_SCHEMA = {
    "id_field": "id",
    "fields": {"id": {"type": "keyword"}, "t": {"type": "text"}, "n": {"type": "i64", "fast": True}, "d": {"type": "date", "fast": True}, "j": {"type": "json"}},
}
# Characters of tantivy's query language, so that random queries reach the parser's corners.
QUERY_ALPHABET = 'abt:nd"()[]{}^~*+-!<>=/\\ .,01239TOANDORNOTIN'

paths = st.one_of(
    st.sampled_from(["/v1/kv/", "/v1/cluster", "/v1/cluster/join", "/v1/cluster/remove", "/internal/apply",
                     "/internal/read", "/internal/coverage", "/internal/gossip", "/internal/handoff-done",
                     "/internal/fold", "/v1/health"]).flatmap(
        lambda base: st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="#?"), max_size=40).map(lambda tail: base + tail)
    ),
    st.text(alphabet="abc/%.?=&", max_size=30).map(lambda p: "/" + p),
    st.text(alphabet="abcdefiklmnoprstuwx=&%01-", max_size=40).map(lambda q: "/v1/kv?" + q),
    st.sampled_from(["/v1/search/", "/v1/search/fz", "/v1/search/fz/docs/", "/v1/search/fz/_search", "/v1/search/fz/_stats"]).flatmap(
        lambda base: st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="#?"), max_size=20).map(lambda tail: base + tail)
    ),
    st.text(alphabet=QUERY_ALPHABET, max_size=40).map(lambda q: "/v1/search/fz?q=" + quote(q) + "&limit=3"),
    st.text(alphabet="qlimtofsenp=&%01-", max_size=40).map(lambda q: "/v1/search/fz?" + q),
    st.tuples(st.text(alphabet=QUERY_ALPHABET, max_size=12), st.sampled_from(["exact", "global_idf", "local", "", "LOCAL", "%00"])).map(
        lambda qr: "/v1/search/fz?q=" + quote(qr[0]) + "&ranking=" + qr[1]
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD"]),
    path=paths,
    body=st.one_of(
        st.binary(max_size=512),
        st.just(b'{"node_id": "n1", "partitions": [1e9]}'),
        st.just(b"\x92\xa2kv\x00"),
        st.just(b'{"key": "fuzz", "value": "v"}\n{"key": 1}\n'),
        st.just(b"\x91\x82\xa3key\xa4fuzz\xa5value\xc4\x01\x00"),
        st.just(b'{"id": "a", "t": "hello", "n": 3}\n{"id": "b", "n": "x"}\n{"id": "c", "d": "2024-01-01T00:00:00Z", "j": {"k": [1, {"z": null}]}}\n'),
        st.just(b'{"q": "hello", "aggs": {"a": {"terms": {"field": "n"}}, "b": {"range": {"field": "d", "ranges": [{"to": 5}]}}}}'),
        st.just(b'{"fields": {"id": {"type": "keyword"}, "t": {"type": "text", "tokenizer": "raw"}}}'),
        st.text(alphabet=QUERY_ALPHABET, max_size=40).map(lambda q: json.dumps({"q": q, "limit": 2}).encode()),
    ),
    content_type=st.sampled_from(["application/json", "application/msgpack", "text/plain", "x/y"]),
)
def test_random_requests_never_get_a_500_nor_kill_a_node(cluster, method, path, body, content_type):
    urls, token, _ = cluster
    status, _, _ = send(urls[0], method, path, body if method != "HEAD" else None, auth(token, **{"Content-Type": content_type}))
    assert status < 500, (method, path, body, status)


def test_nodes_survive_the_fuzzing(cluster):
    urls, token, _ = cluster
    for url in urls:
        status, _, body = send(url, "GET", "/v1/health", None, auth(token))
        assert status == 200 and json.loads(body)["status"] == "ok"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=st.one_of(
    st.binary(min_size=1, max_size=300),
    st.binary(max_size=200).map(lambda b: b"GET /v1/kv/" + b + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    st.binary(max_size=200).map(lambda b: b"PUT /v1/kv/k HTTP/1.1\r\nContent-Length: 5\r\n" + b + b"\r\n\r\nhello"),
))
def test_raw_garbage_on_the_socket_never_gets_a_500(cluster, raw):
    """Not even HTTP: whatever bytes arrive, the node answers 4xx or closes, and lives on."""
    urls, _, _ = cluster
    parts = urlsplit(urls[1])
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    for status_line in re.findall(rb"HTTP/1\.[01] (\d{3})", answer):
        assert int(status_line) < 500, (raw, answer[:200])


def test_nodes_survive_the_raw_garbage(cluster):
    test_nodes_survive_the_fuzzing(cluster)


def test_w_or_r_above_n_is_refused_with_a_400_naming_n(cluster):
    urls, token, _ = cluster
    # 3 copies, or fewer if the fuzzing above made a node leave: the message names the range either way.
    status, _, body = send(urls[0], "PUT", "/v1/kv/wide?w=4", b"x", auth(token))
    assert status == 400 and "w=4" in (msg := error_of(body)["message"]) and re.search(r"between 1 and [123]\b", msg)
    status, _, body = send(urls[0], "GET", "/v1/kv/wide?r=4", None, auth(token))
    assert status == 400 and "r=4" in error_of(body)["message"]
    status, _, body = send(urls[0], "POST", "/v1/kv?w=5", b'{"key": "a", "value": "b"}\n', auth(token))
    assert status == 400 and "w=5" in error_of(body)["message"]
    status, _, _ = send(urls[0], "PUT", "/v1/kv/wide?w=1", b"x", auth(token))
    assert status in (200, 201)


def test_a_request_aiohttp_cannot_parse_is_logged_at_info_without_a_traceback(cluster):
    urls, _, directory = cluster
    parts = urlsplit(urls[2])
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n")
        answer = sock.recv(65536)
    assert re.match(rb"HTTP/1\.[01] 400 ", answer), answer[:200]
    log_path = local_cluster.load(directory)["nodes"][2]["log"]
    deadline = time.monotonic() + 5
    while "bad request (400)" not in (text := open(log_path, encoding="utf-8", errors="replace").read()):
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.05)
    line = next(line for line in text.splitlines() if "bad request (400)" in line)
    assert "INFO" in line and "ERROR" not in line, line
    assert "Traceback" not in text, text[-2000:]
