"""The Python client users script against, and the one the ``legion`` CLI uses.

Does I/O (blocking HTTP over the standard library's ``http.client``). A
``Client`` holds the cluster token and a list of node URLs. Any node accepts
any request, so the client sends each request to one node and moves on to the
next only when that node cannot be reached (connection refused, reset or timed
out). An HTTP error status is an *answer*: it is turned back into the typed
``LegionError`` the server raised and never retried elsewhere.

Quickstart::

    from legion.client import Client

    with Client.connect() as client:          # ./.legion, or LEGION_URL + LEGION_TOKEN
        print(client.status()["epoch"])
        client.request("PUT", "/v1/kv/greeting", body=b"hello")

``Client.connect`` finds the cluster in this order: an explicit ``url`` and
``token``; an explicit cluster directory; the ``LEGION_URL`` (comma-separated
URLs allowed) and ``LEGION_TOKEN`` environment variables; ``./.legion``. A
cluster directory is what ``legion cluster up`` writes: ``cluster.json``
listing the nodes and a ``token`` file.

Retrying a request on another node after a timeout may run it twice, so
every write (any method but GET, HEAD and OPTIONS) carries an
``Idempotency-Key`` header — a fresh random one per ``request`` call unless
the caller passed its own — and every attempt of the call sends the same
key: the core then makes each attempt the *same* operation (same id,
``legion.idempotency``), and an engine that keeps one entry per operation id
applies it once. An error status is not retried (a 503 is an answer); to
retry such a write yourself, send it again with the same key
(``headers={"Idempotency-Key": key}``). Membership changes are idempotent by
themselves.
"""

from __future__ import annotations

import http.client
import json as jsonlib
import os
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from legion import json_codec
from legion.errors import ConfigError, DeadlineExceeded, Unavailable, from_json
from legion.idempotency import IDEMPOTENCY_HEADER

T = TypeVar("T")
R = TypeVar("R")

CLUSTER_DIR_DEFAULT = Path(".legion")
CLUSTER_FILE_NAME = "cluster.json"
TOKEN_FILE_NAME = "token"
ENV_URL = "LEGION_URL"
ENV_TOKEN = "LEGION_TOKEN"
ENV_CA = "LEGION_CA"
ENV_CLUSTER = "LEGION_CLUSTER"
# Where ``legion cluster up --tls`` keeps the cluster CA's certificate, in the cluster directory.
CA_FILE_NAME = "tls/ca.pem"
TIMEOUT_S_DEFAULT = 10.0
# Requests that change nothing: the only ones sent without an idempotency key.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A status poll must not outlive the wait it serves by more than this.
WAIT_POLL_TIMEOUT_S_MAX = 5.0


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP answer: status, headers (case-insensitive), raw body, and which node sent it."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str = ""

    def json(self) -> Any:
        """The body parsed as JSON; ``Unavailable`` if the node sent something else (its fault, not the caller's)."""
        try:
            return json_codec.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Unavailable(f"node {self.url} sent a body that is not JSON: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """One node URL split into what ``http.client`` needs."""

    url: str
    scheme: str
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> _Endpoint:
        raw = url.strip().rstrip("/")
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"node URL {url!r} must look like http://HOST:PORT")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ConfigError(f"node URL {url!r} has an invalid port") from None
        return cls(raw, parts.scheme, parts.hostname, port, parts.path)


class Client:
    """A blocking client for one Legion cluster.

    Keeps one keep-alive connection per node URL. **Not thread-safe**: give
    each thread its own ``Client``. Use it as a context manager, or call
    ``close()``, to release the connections.
    """

    def __init__(
        self, urls: Sequence[str], token: str, *, timeout_s: float = TIMEOUT_S_DEFAULT, ca: str | Path | None = None
    ) -> None:
        if isinstance(urls, str):
            raise ConfigError("Client(urls=...) takes a list of URLs, not one string")
        if not urls:
            raise ConfigError("a Client needs at least one node URL")
        if not token:
            raise ConfigError("a Client needs the cluster token")
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be positive, got {timeout_s}")
        self._endpoints = [_Endpoint.parse(url) for url in urls]
        self._token = token
        # https:// nodes are verified against ``ca`` (a TLS cluster's private CA), else the system's CAs.
        self.ca = str(ca) if ca else None
        self._ssl: ssl.SSLContext | None = None
        self.timeout_s = timeout_s
        self._connections: dict[str, http.client.HTTPConnection] = {}
        # Index of the node that answered last: start there next time, so one
        # dead node costs one failed connect, not one per request.
        self._preferred = 0

    def copy(self, *, timeout_s: float | None = None, start_at: int = 0) -> Client:
        """A new client for the same nodes and token (e.g. one per worker thread), with its own connections.

        It sends its requests to node ``start_at`` (modulo the number of nodes) first,
        so that worker threads given different numbers spread their load over the nodes."""
        other = Client(self.urls, self._token, timeout_s=timeout_s if timeout_s is not None else self.timeout_s, ca=self.ca)
        other._preferred = start_at % len(other._endpoints)
        return other

    def pipelined(
        self, items: Iterable[T], send: Callable[[Client, T], R], *, in_flight: int, timeout_s: float, thread_name: str
    ) -> Iterator[R]:
        """``send(client, item)`` for every item on ``in_flight`` worker threads, at most that many at a time;
        each result as it arrives (an exception ``send`` raises propagates).

        Each worker has its own ``copy`` of this client, starting at another node, so every node
        coordinates a share of the requests; the copies are closed at the end."""
        local = threading.local()
        copies: list[Client] = []
        lock = threading.Lock()

        def run(item: T) -> R:
            own = getattr(local, "client", None)
            if own is None:
                with lock:
                    own = local.client = self.copy(timeout_s=timeout_s, start_at=len(copies))
                    copies.append(own)
            return send(own, item)

        try:
            with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix=thread_name) as pool:
                running: set[Future[R]] = set()
                for item in items:
                    running.add(pool.submit(run, item))
                    if len(running) >= in_flight:
                        done, running = wait(running, return_when=FIRST_COMPLETED)
                        yield from (future.result() for future in done)
                yield from (future.result() for future in wait(running).done)
        finally:
            for own in copies:
                own.close()

    @property
    def urls(self) -> list[str]:
        return [endpoint.url for endpoint in self._endpoints]

    def __repr__(self) -> str:
        return f"Client(urls={self.urls!r})"

    # -- finding a cluster ---------------------------------------------------

    @classmethod
    def connect(
        cls,
        cluster: str | Path | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        ca: str | Path | None = None,
    ) -> Client:
        """A client for the cluster named by the arguments, the environment, or ./.legion.

        In order: ``url`` (with ``token`` or ``LEGION_TOKEN``), the directory ``cluster``,
        the directory ``LEGION_CLUSTER``, ``LEGION_URL`` with ``LEGION_TOKEN``, ./.legion.

        The CA that https:// nodes are verified against: ``ca``, else ``LEGION_CA``, else a
        cluster directory's ``tls/ca.pem`` (what ``legion cluster up --tls`` made)."""
        ca = ca or os.environ.get(ENV_CA) or None
        if url is not None:
            token = token or os.environ.get(ENV_TOKEN)
            if not token:
                raise ConfigError(f"a node URL was given without a token: pass the token or set {ENV_TOKEN}")
            return cls(_split_urls(url, "the given URL"), token, timeout_s=timeout_s, ca=ca)
        if cluster is None and os.environ.get(ENV_CLUSTER, "").strip():
            cluster = cluster_directory()
        if cluster is not None:
            urls, dir_token = read_cluster_dir(Path(cluster))
            return cls(urls, token or dir_token, timeout_s=timeout_s, ca=ca or _cluster_ca(Path(cluster)))
        env_url = os.environ.get(ENV_URL, "").strip()
        if env_url:
            env_token = token or os.environ.get(ENV_TOKEN, "").strip()
            if not env_token:
                raise ConfigError(f"{ENV_URL} is set but {ENV_TOKEN} is not: set both, or neither to use ./.legion")
            return cls(_split_urls(env_url, ENV_URL), env_token, timeout_s=timeout_s, ca=ca)
        urls, dir_token = read_cluster_dir(CLUSTER_DIR_DEFAULT)
        return cls(urls, token or dir_token, timeout_s=timeout_s, ca=ca or _cluster_ca(CLUSTER_DIR_DEFAULT))

    # -- requests --------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one request to the first node that answers; raise the typed error for status >= 400.

        ``path`` starts with ``/`` and is already percent-encoded. ``json`` and
        ``body`` are exclusive. Raises ``Unavailable`` naming every URL tried
        if no node could be reached.
        """
        if body is not None and json is not None:
            raise ConfigError("pass either body= or json=, not both")
        if not path.startswith("/"):
            raise ConfigError(f"request path must start with '/', got {path!r}")
        send_headers = {"Authorization": f"Bearer {self._token}"}
        if json is not None:
            body = json_codec.dumps(json)
            send_headers["Content-Type"] = "application/json"
        send_headers.update(headers or {})
        if method.upper() not in READ_METHODS and not any(name.lower() == "idempotency-key" for name in send_headers):
            send_headers[IDEMPOTENCY_HEADER] = uuid.uuid4().hex  # one key for every attempt of this write
        target = path + ("?" + urlencode({k: str(v) for k, v in params.items()}) if params else "")
        failures: list[str] = []
        count = len(self._endpoints)
        for step in range(count):
            index = (self._preferred + step) % count
            endpoint = self._endpoints[index]
            try:
                response = self._send(endpoint, method, target, body, send_headers)
            except ssl.SSLCertVerificationError as exc:
                raise ConfigError(
                    f"{endpoint.url} presented a certificate this client does not trust ({exc.verify_message}): "
                    f"pass the cluster's CA certificate with --ca or {ENV_CA}"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                failures.append(f"{endpoint.url} ({_describe_failure(exc)})")
                continue
            self._preferred = index
            if response.status >= 400:
                raise from_json(response.status, _parse_error_body(response.body))
            return response
        raise Unavailable(
            f"no Legion node answered {method} {path} (is the cluster running?): tried " + ", ".join(failures),
            urls=self.urls,
        )

    def _send(
        self, endpoint: _Endpoint, method: str, target: str, body: bytes | None, headers: Mapping[str, str]
    ) -> Response:
        """One request on the endpoint's keep-alive connection, reconnecting once if it went stale."""
        reused = endpoint.url in self._connections
        try:
            return self._send_once(endpoint, method, target, body, headers)
        except (ConnectionError, http.client.BadStatusLine):
            # The server may close an idle keep-alive connection at any time;
            # the first request on it then fails without reaching the server.
            # Retry once on a fresh connection before calling the node dead.
            if not reused:
                raise
        return self._send_once(endpoint, method, target, body, headers)

    def _send_once(
        self, endpoint: _Endpoint, method: str, target: str, body: bytes | None, headers: Mapping[str, str]
    ) -> Response:
        connection = self._connection(endpoint)
        try:
            connection.request(method, endpoint.prefix + target, body=body, headers=dict(headers))
            raw = connection.getresponse()
            data = raw.read()
        except BaseException:
            # Whatever went wrong, the connection is in an unknown state.
            self._drop(endpoint)
            raise
        if raw.will_close:
            self._drop(endpoint)
        return Response(raw.status, CIMultiDictProxy(CIMultiDict(raw.getheaders())), data, endpoint.url)

    def _connection(self, endpoint: _Endpoint) -> http.client.HTTPConnection:
        connection = self._connections.get(endpoint.url)
        if connection is None:
            if endpoint.scheme == "https":
                connection = http.client.HTTPSConnection(
                    endpoint.host, endpoint.port, timeout=self.timeout_s, context=self._ssl_context()
                )
            else:
                connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=self.timeout_s)
            self._connections[endpoint.url] = connection
        return connection

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            if self.ca is None:
                self._ssl = ssl.create_default_context()
            else:
                try:
                    self._ssl = ssl.create_default_context(cafile=self.ca)
                except (OSError, ssl.SSLError) as exc:
                    raise ConfigError(f"cannot load the CA certificate {self.ca}: {exc}") from None
        return self._ssl

    def _drop(self, endpoint: _Endpoint) -> None:
        connection = self._connections.pop(endpoint.url, None)
        if connection is not None:
            connection.close()

    # -- cluster operations ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The cluster status document (``GET /v1/cluster``)."""
        return self.request("GET", "/v1/cluster").json()

    def metrics(self) -> str:
        """One node's Prometheus metrics, as text (``GET /metrics``; see ``legion.node_figures``)."""
        return self.request("GET", "/metrics").body.decode("utf-8", "replace")

    def for_node(self, url: str) -> Client:
        """A new client for the node at ``url`` alone, with this client's token and timeout (the caller closes it)."""
        return Client([url], self._token, timeout_s=self.timeout_s, ca=self.ca)

    def health(self) -> dict[str, Any]:
        """One node's liveness answer (``GET /v1/health``)."""
        return self.request("GET", "/v1/health").json()

    def join(self, node_id: str, url: str) -> dict[str, Any]:
        """Ask the cluster to admit node ``node_id`` serving at ``url``; the new status document."""
        return self.request("POST", "/v1/cluster/join", json={"node_id": node_id, "url": url}).json()

    def remove_node(self, node_id: str) -> dict[str, Any]:
        """Start removing ``node_id`` for good (its partitions are handed off); the new status document."""
        return self.request("POST", "/v1/cluster/remove", json={"node_id": node_id}).json()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout_s: float, interval_s: float = 0.2
    ) -> dict[str, Any]:
        """Poll the status until ``predicate(status)`` holds; return that status.

        Polls at least once. A node that cannot be reached (``Unavailable``)
        is waited out like a false predicate; any other error is raised.
        Raises ``DeadlineExceeded`` with the last status seen on timeout.
        """
        deadline = time.monotonic() + timeout_s
        last: str = "no node answered yet"
        while True:
            try:
                status = self.status()
            except Unavailable as exc:
                last = exc.message
            else:
                if predicate(status):
                    return status
                last = describe_status(status)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"gave up waiting after {timeout_s:g}s; last status: {last}", last_status=last)
            time.sleep(min(interval_s, remaining))

    def close(self) -> None:
        """Close every open connection; the client reconnects if used again."""
        for endpoint in self._endpoints:
            self._drop(endpoint)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def describe_status(status: Mapping[str, Any]) -> str:
    """A one-line summary of a status document, for error messages and logs."""
    members = ", ".join(f"{m.get('id')} {m.get('status')}" for m in status.get("members", ()))
    rebalancing = "rebalancing" if status.get("rebalancing") else "not rebalancing"
    return f"epoch {status.get('epoch')}, {rebalancing}, members: {members or 'none'}"


def _cluster_ca(directory: Path) -> Path | None:
    """The CA certificate ``legion cluster up --tls`` left in the cluster directory, if any."""
    path = directory / CA_FILE_NAME
    return path if path.is_file() else None


def cluster_directory(explicit: Path | None = None) -> Path:
    """The local cluster directory a command works on: ``explicit``, else ``LEGION_CLUSTER``, else ./.legion."""
    if explicit is not None:
        return explicit
    env_cluster = os.environ.get(ENV_CLUSTER, "").strip()
    return Path(env_cluster) if env_cluster else CLUSTER_DIR_DEFAULT


def read_cluster_dir(directory: Path) -> tuple[list[str], str]:
    """The node URLs and token of the cluster a ``legion cluster up`` wrote into ``directory``."""
    cluster_file = directory / CLUSTER_FILE_NAME
    hint = f"run `legion cluster up --cluster {directory}`, or point {ENV_CLUSTER} (or {ENV_URL} and {ENV_TOKEN}) at one"
    if directory == CLUSTER_DIR_DEFAULT:
        hint = f"run `legion cluster up`, or point {ENV_CLUSTER} (or {ENV_URL} and {ENV_TOKEN}) at one"
    try:
        document = jsonlib.loads(cluster_file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no cluster at {_shown(directory)}: {hint}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {cluster_file}: {exc}; fix or delete it, then {hint}") from None
    nodes = document.get("nodes") if isinstance(document, dict) else None
    if not isinstance(nodes, list) or not all(isinstance(n, dict) and isinstance(n.get("url"), str) for n in nodes):
        raise ConfigError(f"{cluster_file} has no valid 'nodes' list; fix or delete it, then {hint}")
    urls = [node["url"] for node in nodes if not node.get("removed")]
    if not urls:
        raise ConfigError(f"{cluster_file} lists no nodes; {hint}")
    try:
        token = (directory / TOKEN_FILE_NAME).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the cluster token {directory / TOKEN_FILE_NAME}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"the cluster token file {directory / TOKEN_FILE_NAME} is empty")
    return urls, token


def _shown(directory: Path) -> str:
    """``./.legion`` rather than ``.legion`` for relative paths: it reads as a place."""
    text = str(directory)
    return text if directory.is_absolute() or text.startswith(".") and "/" in text else f"./{text}"


def _split_urls(raw: str, source: str) -> list[str]:
    urls = [part.strip() for part in raw.split(",") if part.strip()]
    if not urls:
        raise ConfigError(f"{source} names no node URL")
    return urls


def _parse_error_body(body: bytes) -> object:
    """The JSON error document, or None when the server sent something else."""
    try:
        return jsonlib.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


__all__ = ["Client", "Response", "describe_status", "read_cluster_dir"]
