"""``legion.client``: finding a cluster, and requests against a real HTTP server.

The server is a small aiohttp app in a background thread on a free loopback
port — real sockets, real keep-alive, real timeouts — that speaks just enough
of the node API: it checks the bearer token, answers JSON errors, and can be
told to be slow. A URL with nothing listening on it stands in for a dead node.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from legion.client import Client, cluster_directory, describe_status
from legion.errors import (
    BadRequest,
    ConfigError,
    DeadlineExceeded,
    NotFound,
    StaleRing,
    Unauthorized,
    Unavailable,
)

TOKEN = "s3cret-token"
SERVER_START_TIMEOUT_S = 5.0


class FakeNode:
    """A real aiohttp server in its own thread and event loop; records what it was sent."""

    def __init__(self, name: str, *, slow_s: float = 0.0, keepalive_timeout_s: float = 75.0) -> None:
        self.name = name
        self.slow_s = slow_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.hits: list[dict[str, Any]] = []
        self.status: dict[str, Any] = {"epoch": 1, "rebalancing": True, "members": [{"id": name, "status": "joining"}]}
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> FakeNode:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        future.result(SERVER_START_TIMEOUT_S)
        return self

    def stop(self) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(SERVER_START_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(SERVER_START_TIMEOUT_S)

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._record_and_authenticate])
        app.router.add_get("/v1/health", self._health)
        app.router.add_get("/v1/cluster", self._status)
        app.router.add_post("/v1/cluster/join", self._echo)
        app.router.add_post("/v1/cluster/remove", self._echo)
        app.router.add_get("/v1/fail/{status}/{code}", self._fail)
        app.router.add_get("/v1/plain/{status}", self._plain)
        app.router.add_get("/v1/slow", self._slow)
        app.router.add_get("/v1/raw", self._raw)
        app.router.add_route("*", "/v1/echo", self._echo)
        app.router.add_post("/v1/slow-echo", self._slow_echo)
        self._runner = web.AppRunner(app, keepalive_timeout=self.keepalive_timeout_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    @web.middleware
    async def _record_and_authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        await request.read()  # drain the body, as a real server would
        self.hits.append(
            {
                "method": request.method,
                "path": request.path,
                "peer": request.transport.get_extra_info("peername"),
                "idempotency_key": request.headers.get("Idempotency-Key"),
            }
        )
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized", "message": "wrong or missing token"}, status=401)
        return await handler(request)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"node_id": self.name, "epoch": 1, "status": "ok"})

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status)

    async def _echo(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "node": self.name,
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "content_type": request.headers.get("Content-Type"),
                "x_extra": request.headers.get("X-Extra"),
                "idempotency_key": request.headers.get("Idempotency-Key"),
                "body": (await request.read()).decode(),  # read() caches: the middleware read it first
            }
        )

    async def _fail(self, request: web.Request) -> web.Response:
        code = request.match_info["code"]
        body = {"error": code, "message": f"{code} from {self.name}", "details": {"node": self.name}}
        return web.json_response(body, status=int(request.match_info["status"]))

    async def _plain(self, request: web.Request) -> web.Response:
        return web.Response(text="<html>proxy error</html>", status=int(request.match_info["status"]))

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.slow_s)
        return web.json_response({"node": self.name})

    async def _slow_echo(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.slow_s)
        return await self._echo(request)

    async def _raw(self, request: web.Request) -> web.Response:
        return web.Response(body=b"\x00\xffbytes", content_type="image/png", headers={"X-Legion-HLC": "42"})


@pytest.fixture
def node() -> Iterator[FakeNode]:
    server = FakeNode("a").start()
    yield server
    server.stop()


@pytest.fixture
def other_node() -> Iterator[FakeNode]:
    server = FakeNode("b").start()
    yield server
    server.stop()


@pytest.fixture
def dead_url() -> str:
    """A loopback URL nothing listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def write_cluster_dir(directory: Path, urls: list[str], token: str = TOKEN, **extra: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    nodes = [{"id": f"n{i + 1}", "url": url, "data_dir": "x", "pid": None, **extra} for i, url in enumerate(urls)]
    (directory / "cluster.json").write_text(json.dumps({"partitions": 64, "replicas": 3, "nodes": nodes}))
    (directory / "token").write_text(token + "\n")
    return directory


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No LEGION_* variables and an empty working directory (so no ./.legion)."""
    for name in ("LEGION_URL", "LEGION_TOKEN", "LEGION_CLUSTER", "LEGION_CA"):
        monkeypatch.delenv(name, raising=False)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


# -- Client.connect: where the cluster is found -----------------------------------------


def test_connect_prefers_an_explicit_url_and_token(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cluster_dir(clean_env / ".legion", ["http://127.0.0.1:1"])
    monkeypatch.setenv("LEGION_URL", "http://127.0.0.1:2")
    monkeypatch.setenv("LEGION_TOKEN", "env")
    client = Client.connect(clean_env / ".legion", url="http://127.0.0.1:3, http://127.0.0.1:4", token="t")
    assert client.urls == ["http://127.0.0.1:3", "http://127.0.0.1:4"]


def test_connect_uses_an_explicit_cluster_dir_before_the_environment(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    directory = write_cluster_dir(tmp_path / "mine", ["http://127.0.0.1:1", "http://127.0.0.1:2"])
    monkeypatch.setenv("LEGION_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LEGION_TOKEN", "env")
    client = Client.connect(directory)
    assert client.urls == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    assert client._token == TOKEN


def test_connect_uses_the_environment_before_dot_legion(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cluster_dir(clean_env / ".legion", ["http://127.0.0.1:1"])
    monkeypatch.setenv("LEGION_URL", "http://127.0.0.1:5,http://127.0.0.1:6/")
    monkeypatch.setenv("LEGION_TOKEN", "env-token")
    client = Client.connect()
    assert client.urls == ["http://127.0.0.1:5", "http://127.0.0.1:6"]
    assert client._token == "env-token"


def test_connect_falls_back_to_dot_legion_and_skips_removed_nodes(clean_env: Path) -> None:
    directory = write_cluster_dir(clean_env / ".legion", ["http://127.0.0.1:1", "http://127.0.0.1:2"])
    document = json.loads((directory / "cluster.json").read_text())
    document["nodes"][0]["removed"] = True
    (directory / "cluster.json").write_text(json.dumps(document))
    assert Client.connect().urls == ["http://127.0.0.1:2"]


def test_legion_cluster_names_the_directory_after_an_explicit_one_and_before_legion_url(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    named = write_cluster_dir(tmp_path / "named", ["http://127.0.0.1:3"])
    write_cluster_dir(clean_env / ".legion", ["http://127.0.0.1:4"])
    monkeypatch.setenv("LEGION_CLUSTER", str(named))
    monkeypatch.setenv("LEGION_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LEGION_TOKEN", "t")
    assert Client.connect().urls == ["http://127.0.0.1:3"]
    assert Client.connect(clean_env / ".legion").urls == ["http://127.0.0.1:4"]
    assert cluster_directory() == named and cluster_directory(Path("x")) == Path("x")
    monkeypatch.delenv("LEGION_CLUSTER")
    assert Client.connect().urls == ["http://127.0.0.1:9"]
    assert cluster_directory() == Path(".legion")


def test_connect_without_any_cluster_says_what_to_do(clean_env: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        Client.connect()
    assert caught.value.message == (
        "no cluster at ./.legion: run `legion cluster up`, or point LEGION_CLUSTER (or LEGION_URL and LEGION_TOKEN) at one"
    )


def test_connect_to_a_missing_dir_names_it(clean_env: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no cluster at .*nowhere: run `legion cluster up --cluster .*nowhere`"):
        Client.connect(tmp_path / "nowhere")


def test_connect_with_url_but_no_token_is_a_config_error(clean_env: Path) -> None:
    with pytest.raises(ConfigError, match="without a token"):
        Client.connect(url="http://127.0.0.1:1")


def test_legion_url_without_legion_token_is_a_config_error(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEGION_URL", "http://127.0.0.1:1")
    with pytest.raises(ConfigError, match="LEGION_URL is set but LEGION_TOKEN is not"):
        Client.connect()


@pytest.mark.parametrize(
    ("cluster_json", "token", "message"),
    [
        ("{not json", TOKEN, "cannot read"),
        ('{"nodes": "n1"}', TOKEN, "no valid 'nodes' list"),
        ('{"nodes": []}', TOKEN, "lists no nodes"),
        ('{"nodes": [{"id": "n1", "url": "http://127.0.0.1:1"}]}', None, "cannot read the cluster token"),
        ('{"nodes": [{"id": "n1", "url": "http://127.0.0.1:1"}]}', "  \n", "is empty"),
    ],
)
def test_a_broken_cluster_dir_is_a_config_error(
    clean_env: Path, cluster_json: str, token: str | None, message: str
) -> None:
    directory = clean_env / ".legion"
    directory.mkdir()
    (directory / "cluster.json").write_text(cluster_json)
    if token is not None:
        (directory / "token").write_text(token)
    with pytest.raises(ConfigError, match=message):
        Client.connect()


@pytest.mark.parametrize("url", ["127.0.0.1:7400", "ftp://host:1", "http://:80", "http://host:notaport"])
def test_a_malformed_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="must look like|invalid port"):
        Client([url], TOKEN)


def test_a_client_needs_urls_and_a_token() -> None:
    with pytest.raises(ConfigError):
        Client([], TOKEN)
    with pytest.raises(ConfigError):
        Client(["http://127.0.0.1:1"], "")
    with pytest.raises(ConfigError, match="list of URLs"):
        Client("http://127.0.0.1:1", TOKEN)  # type: ignore[arg-type]


# -- requests --------------------------------------------------------------------------


def test_request_sends_token_json_params_and_headers(node: FakeNode) -> None:
    with Client([node.url], TOKEN) as client:
        response = client.request(
            "POST", "/v1/echo", json={"a": [1, 2]}, params={"w": 2, "q": "x y"}, headers={"X-Extra": "yes"}
        )
    assert response.status == 200
    assert response.url == node.url
    echoed = response.json()
    assert echoed["query"] == {"w": "2", "q": "x y"}
    assert echoed["content_type"] == "application/json"
    assert echoed["x_extra"] == "yes"
    assert json.loads(echoed["body"]) == {"a": [1, 2]}


def test_response_headers_are_case_insensitive_and_body_is_raw(node: FakeNode) -> None:
    with Client([node.url], TOKEN) as client:
        response = client.request("GET", "/v1/raw")
    assert response.body == b"\x00\xffbytes"
    assert response.headers["x-legion-hlc"] == response.headers["X-LEGION-HLC"] == "42"
    assert response.headers.get("content-type") == "image/png"
    assert "X-Legion-HLC" in list(response.headers)


def test_a_wrong_token_raises_unauthorized(node: FakeNode) -> None:
    with Client([node.url], "wrong") as client, pytest.raises(Unauthorized, match="wrong or missing token"):
        client.health()


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [(404, "not_found", NotFound), (409, "stale_ring", StaleRing), (400, "bad_request", BadRequest),
     (503, "unavailable", Unavailable)],
)  # fmt: skip
def test_json_errors_come_back_typed_with_message_and_details(
    node: FakeNode, status: int, code: str, error: type
) -> None:
    with Client([node.url], TOKEN) as client, pytest.raises(error) as caught:
        client.request("GET", f"/v1/fail/{status}/{code}")
    assert type(caught.value) is error
    assert caught.value.message == f"{code} from a"
    assert caught.value.details == {"node": "a"}


@pytest.mark.parametrize(("status", "error"), [(404, NotFound), (418, BadRequest), (502, Unavailable)])
def test_non_json_errors_still_come_back_typed(node: FakeNode, status: int, error: type) -> None:
    with Client([node.url], TOKEN) as client, pytest.raises(error):
        client.request("GET", f"/v1/plain/{status}")


def test_an_unreachable_node_is_skipped(node: FakeNode, dead_url: str) -> None:
    with Client([dead_url, node.url], TOKEN) as client:
        assert client.health()["node_id"] == "a"
        # The node that answered is tried first from now on.
        assert client.request("GET", "/v1/echo").url == node.url


def test_a_timed_out_node_is_skipped(other_node: FakeNode) -> None:
    slow = FakeNode("slow", slow_s=1.0).start()
    try:
        with Client([slow.url, other_node.url], TOKEN, timeout_s=0.3) as client:
            started = time.monotonic()
            assert client.request("GET", "/v1/slow").json() == {"node": "b"}
            assert time.monotonic() - started < 0.9
    finally:
        slow.stop()


def test_an_http_error_is_an_answer_and_never_retried_elsewhere(node: FakeNode, other_node: FakeNode) -> None:
    with Client([node.url, other_node.url], TOKEN) as client, pytest.raises(NotFound):
        client.request("GET", "/v1/fail/404/not_found")
    assert other_node.hits == []


def test_no_node_answering_is_unavailable_naming_every_url(dead_url: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        second = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with Client([dead_url, second], TOKEN) as client, pytest.raises(Unavailable) as caught:
        client.status()
    assert dead_url in caught.value.message and second in caught.value.message
    assert "connection refused" in caught.value.message
    assert caught.value.details["urls"] == [dead_url, second]


def test_a_copy_starts_at_the_node_it_is_given_and_fails_over_from_there(node: FakeNode, other_node: FakeNode, dead_url: str) -> None:
    with Client([node.url, other_node.url, dead_url], TOKEN) as client:
        with client.copy(start_at=1) as second, client.copy(start_at=5, timeout_s=2.0) as third:
            assert second.request("GET", "/v1/echo").json()["node"] == "b"
            assert third.timeout_s == 2.0
            assert third.request("GET", "/v1/echo").json()["node"] == "a"  # node 5 % 3 is dead: the next one answers
        assert client.request("GET", "/v1/echo").json()["node"] == "a"


def test_requests_reuse_one_keep_alive_connection(node: FakeNode) -> None:
    with Client([node.url], TOKEN) as client:
        for _ in range(5):
            client.health()
    assert len({hit["peer"] for hit in node.hits}) == 1


def test_a_connection_the_server_closed_while_idle_is_reopened(other_node: FakeNode) -> None:
    impatient = FakeNode("impatient", keepalive_timeout_s=0.1).start()
    try:
        with Client([impatient.url], TOKEN) as client:
            client.health()
            time.sleep(0.5)  # the server drops the idle connection
            assert client.health()["node_id"] == "impatient"
        assert len({hit["peer"] for hit in impatient.hits}) == 2
    finally:
        impatient.stop()


def test_close_then_reuse_reconnects(node: FakeNode) -> None:
    client = Client([node.url], TOKEN)
    client.health()
    client.close()
    assert client.health()["status"] == "ok"
    client.close()


def test_body_and_json_together_are_refused(node: FakeNode) -> None:
    with Client([node.url], TOKEN) as client, pytest.raises(ConfigError):
        client.request("POST", "/v1/echo", body=b"x", json={})


def test_a_non_json_success_body_is_reported_not_crashed(node: FakeNode) -> None:
    with Client([node.url], TOKEN) as client, pytest.raises(Unavailable, match="not JSON"):
        client.request("GET", "/v1/raw").json()


# -- cluster operations -------------------------------------------------------------------


def test_join_and_remove_post_the_documented_bodies(node: FakeNode) -> None:
    with Client([node.url], TOKEN) as client:
        joined = client.join("n4", "http://127.0.0.1:7403")
        removed = client.remove_node("n2")
    assert (joined["method"], joined["path"]) == ("POST", "/v1/cluster/join")
    assert json.loads(joined["body"]) == {"node_id": "n4", "url": "http://127.0.0.1:7403"}
    assert removed["path"] == "/v1/cluster/remove"
    assert json.loads(removed["body"]) == {"node_id": "n2"}


def test_wait_for_returns_the_status_that_satisfied_it(node: FakeNode) -> None:
    def settle_soon() -> None:
        time.sleep(0.3)
        node.status = {"epoch": 2, "rebalancing": False, "members": [{"id": "a", "status": "up"}]}

    threading.Thread(target=settle_soon, daemon=True).start()
    with Client([node.url], TOKEN) as client:
        status = client.wait_for(lambda s: not s["rebalancing"], timeout_s=5, interval_s=0.05)
    assert status["epoch"] == 2


def test_wait_for_times_out_with_the_last_status(node: FakeNode) -> None:
    with Client([node.url], TOKEN) as client, pytest.raises(DeadlineExceeded) as caught:
        client.wait_for(lambda s: False, timeout_s=0.3, interval_s=0.05)
    assert "epoch 1, rebalancing, members: a joining" in caught.value.message


def test_wait_for_waits_out_unreachable_nodes(dead_url: str) -> None:
    with Client([dead_url], TOKEN) as client, pytest.raises(DeadlineExceeded, match="connection refused"):
        client.wait_for(lambda s: True, timeout_s=0.3, interval_s=0.05)


def test_describe_status_is_one_line() -> None:
    status = {"epoch": 7, "rebalancing": False, "members": [{"id": "n1", "status": "up"}, {"id": "n2", "status": "down"}]}
    assert describe_status(status) == "epoch 7, not rebalancing, members: n1 up, n2 down"


def test_every_attempt_of_a_write_carries_one_idempotency_key_and_each_write_its_own(other_node: FakeNode) -> None:
    slow = FakeNode("slow", slow_s=1.0).start()
    try:
        with Client([slow.url, other_node.url], TOKEN, timeout_s=0.3) as client:
            first = client.request("POST", "/v1/slow-echo", body=b"1")  # times out on slow, retried on b
            second = client.request("POST", "/v1/slow-echo", body=b"1")
            read = client.request("GET", "/v1/echo")
            mine = client.request("PUT", "/v1/echo", headers={"idempotency-key": "chosen-by-me"})
    finally:
        slow.stop()
    tried = [hit["idempotency_key"] for hit in slow.hits + other_node.hits if hit["method"] == "POST"]
    assert first.json()["node"] == "b" and len(tried) >= 3  # the first write was sent to both nodes
    assert tried[0] == first.json()["idempotency_key"] and len(tried[0]) == 32
    assert second.json()["idempotency_key"] != first.json()["idempotency_key"]
    assert read.json()["idempotency_key"] is None
    assert mine.json()["idempotency_key"] == "chosen-by-me"
