"""The HTTP endpoints a node serves: cluster API, peer API, engine routes.

I/O, and thin: each handler parses and checks its input (raising
``BadRequest`` with what to fix), calls the node or its coordinator, and
encodes the answer. Errors become responses in ``transport`` only.

Client API (JSON): ``GET /v1/health``, ``GET /v1/cluster`` (the status
document, each member with its gossiped ``attributes``),
``POST /v1/cluster/join``, ``POST /v1/cluster/remove``, plus every engine's
routes (an engine route's ``Idempotency-Key`` header names the writes its
handler makes: ``legion.idempotency``), and the operators' endpoints
(``operator_api``: ``/metrics``, the dashboard at ``/ui/``). Peer API
(msgpack bodies, same token): ``/internal/gossip``,
``/internal/apply`` (``?refresh=1``: flush what it touched before answering),
``/internal/read``, ``/internal/coverage``, ``/internal/fold`` (streamed),
``/internal/snapshot`` (``POST``: take one; ``DELETE ?id=``: release it),
``/internal/snapshot/file?id=&name=&offset=`` (streamed; ``snapshot_shelf``),
``/internal/handoff-done``, hinted handoff's ``/internal/hints`` (POST:
keep operations as hints for ``?owner=``; GET: what this node holds for
``?owner=``) and ``/internal/hints/lost`` (forget lost-hint marks), and
anti-entropy's ``/internal/tree``, ``/internal/fold-keys`` (streamed) and
``/internal/exchange`` (``legion.runtime.anti_entropy``); and
consensus on the cluster state (JSON, ``state_publisher``):
``/internal/start-join``, ``/internal/publish`` and ``/internal/commit``.
``join`` and ``remove`` answer once the change is committed (held by a
majority of the voters, or swapped into etcd with ``--metadata etcd://``),
with 503 ``no_quorum`` when this side of the cluster cannot reach such a
majority (or etcd); both are idempotent. A joining node says how it keeps
the state (``metadata``): another way than the cluster's is refused with 409.

``/v1/health`` also reports ``apply_requests``: how many ``/internal/apply``
requests this node has answered since it started. It is the one way to see from
outside how many round trips replication took (batching is the point of
``write_many``), and costs one integer.
It also reports the node's ``durability`` mode (``legion.durability``):
what a write this node acknowledged survives.
"""

from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import urlsplit
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import msgpack
from aiohttp import web

from legion import attributes
from legion import cluster_state as cs
from legion.engine import HttpRequest, Route, parse_flag
from legion.etcd_metadata import check_same_choice
from legion.errors import BadRequest, DeadlineExceeded, LegionError, Unavailable
from legion.idempotency import IDEMPOTENCY_CONTEXT, IDEMPOTENCY_HEADER, RequestKey
from legion.limits import (
    PEER_BODY_BYTES_MAX,
    REQUEST_DEADLINE_MS,
    STREAM_BODY_BYTES_MAX,
    VERIFY_DEADLINE_MS,
)
from legion.path_params import compile_route
from legion.replication import Operation, decode_ops, encode_apply_reply, unpack
from legion.runtime.anti_entropy import answer_tree, op_batches
from legion.runtime import operator_api
from legion.runtime.node_view import ForwardToClaimant, LocalReplica, StateRegister, StateView
from legion.runtime.tls import require_peer_certificate
from legion.runtime.transport import DEADLINE_HEADER, read_body, read_chunks, read_json, sender_digest
from legion.membership import check_node_id
from legion.verify import Report, Summary, compare

if TYPE_CHECKING:
    from legion.runtime.anti_entropy import AntiEntropy
    from legion.runtime.coordinator import Coordinator
    from legion.runtime.hint_store import HintStore
    from legion.runtime.hinted_handoff import HintedHandoff
    from legion.runtime.snapshot_shelf import SnapshotShelf

URL_PATTERN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
MSGPACK = "application/msgpack"
FOLD_STALL_S = 60


class TlsConfig(Protocol):
    """Whether the node serves TLS (then its peers must present certificates)."""

    tls: object | None


class ApiHost(StateView, LocalReplica, Protocol):
    """What the HTTP API — the node's shell towards clients and peers — uses of its node (``legion.runtime.node_view``)."""

    anti_entropy: AntiEntropy
    config: TlsConfig
    coordinator: Coordinator
    durability: str
    hint_store: HintStore
    hinted: HintedHandoff
    metadata_choice: str
    publisher: StateRegister
    shelf: SnapshotShelf
    url: str

    def adopt(self, state: cs.ClusterState) -> bool: ...

    async def change_state(self, change: Callable[[cs.ClusterState], cs.ClusterState]) -> cs.ClusterState: ...

    def claimant(self) -> str | None: ...

    def heard_from(self, node_id: str) -> None: ...

    def member_attributes(self) -> dict[str, dict[str, str]]: ...

    def request_gossip(self) -> None: ...

    async def summaries(self, partitions: list[int]) -> dict[tuple[str, int], Summary]: ...

    def take_attributes(self, raw: Any) -> None: ...


# What a node answers before it has a state: gossip (which brings the state) and consensus
# (a member becomes a voter once it is up, and its join answer may still be on its way).
STATELESS_PATHS = frozenset({"/internal/gossip", "/internal/start-join", "/internal/publish", "/internal/commit"})


def admission(node: ApiHost) -> Callable[[web.Request], None]:
    """Until a joining node has the cluster state, it can only take gossip (which brings the state).

    On a TLS cluster, the peer API also wants the caller's certificate (mutual TLS)."""

    peers_need_certificates = node.config.tls is not None

    def admit(request: web.Request) -> None:
        if peers_need_certificates:
            transport = request.transport
            require_peer_certificate(request.path, transport.get_extra_info("peercert") if transport else None)
        if node.state is None and request.path not in STATELESS_PATHS:
            raise Unavailable(f"node {node.node_id} is still joining the cluster; retry shortly")

    return admit


def add_routes(app: web.Application, node: ApiHost) -> None:
    api = _Api(node)
    app.router.add_get("/v1/health", api.health)
    app.router.add_get("/v1/cluster", api.cluster)
    app.router.add_get("/v1/cluster/verify", api.verify)
    app.router.add_post("/v1/cluster/repair", api.repair)
    app.router.add_post("/v1/cluster/join", api.join)
    app.router.add_post("/v1/cluster/remove", api.remove)
    app.router.add_post("/internal/gossip", api.gossip)
    app.router.add_post("/internal/apply", api.apply)
    app.router.add_post("/internal/read", api.read)
    app.router.add_post("/internal/coverage", api.coverage)
    app.router.add_get("/internal/fold", api.fold)
    app.router.add_post("/internal/snapshot", api.take_snapshot)
    app.router.add_get("/internal/snapshot/file", api.snapshot_file)
    app.router.add_delete("/internal/snapshot", api.release_snapshot)
    app.router.add_post("/internal/digest", api.digest)
    app.router.add_post("/internal/tree", api.tree)
    app.router.add_post("/internal/fold-keys", api.fold_keys)
    app.router.add_post("/internal/exchange", api.exchange)
    app.router.add_post("/internal/handoff-done", api.handoff_done)
    app.router.add_post("/internal/hints", api.keep_hints)
    app.router.add_get("/internal/hints", api.hints_for)
    app.router.add_post("/internal/hints/lost", api.clear_lost_hints)
    app.router.add_post("/internal/start-join", api.start_join)
    app.router.add_post("/internal/publish", api.publish)
    app.router.add_post("/internal/commit", api.commit)
    operator_api.add_routes(app, node)
    for engine in node.engines.values():
        for route in engine.routes():
            if not is_engine_path(engine.name, route.path):
                raise ValueError(f"engine {engine.name!r} route {route.path!r} must be /v1/{engine.name} or under /v1/{engine.name}/")
            app.router.add_route(route.method, route.path, _engine_handler(node, route))


def is_engine_path(engine: str, path: str) -> bool:
    """True if ``path`` is ``/v1/<engine>`` or below it (``/v1/kvx`` is not below ``/v1/kv``)."""
    return path == f"/v1/{engine}" or path.startswith(f"/v1/{engine}/")


def _engine_handler(node: ApiHost, route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
    pattern = compile_route(route.path)

    async def handle(request: web.Request) -> web.Response:
        # aiohttp decodes path parameters leniently (an invalid escape stays literal text),
        # so two URLs could name one key: decode the raw path once, exactly.
        path_params = pattern.match(request.rel_url.raw_path)
        if path_params is None:
            raise BadRequest(f"path {request.rel_url.raw_path!r:.200} does not match route {route.path!r}")
        req = HttpRequest(
            method=request.method,
            path_params=path_params,
            query=dict(request.query),
            headers=request.headers,
            body=b"" if route.stream_body else await read_body(request),
            request_id=request.get("request_id", ""),
            stream=read_chunks(request, STREAM_BODY_BYTES_MAX) if route.stream_body else None,
        )
        raw_key = request.headers.get(IDEMPOTENCY_HEADER)
        context_token = IDEMPOTENCY_CONTEXT.set(RequestKey(raw_key) if raw_key is not None else None)
        try:
            resp = await route.handler(req, node.coordinator)
        finally:
            IDEMPOTENCY_CONTEXT.reset(context_token)
        headers = {**resp.headers, "Content-Type": resp.content_type}
        return web.Response(status=resp.status, body=resp.body, headers=headers)

    return handle


def _msgpack_response(value: Any) -> web.Response:
    return web.Response(body=msgpack.packb(value, use_bin_type=True), content_type=MSGPACK)


async def _read_msgpack(request: web.Request) -> dict[str, Any]:
    return unpack(await read_body(request, PEER_BODY_BYTES_MAX), dict)


async def _json_object(request: web.Request, shape: str) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object {shape}")
    return body


def _refuse_if_expired(request: web.Request) -> None:
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return
    try:
        deadline_ms = int(raw)
    except ValueError:
        raise BadRequest(f"{DEADLINE_HEADER} must be Unix milliseconds, got {raw!r:.40}") from None
    late_ms = int(time.time() * 1000) - deadline_ms
    if late_ms > 0:
        raise DeadlineExceeded(
            f"this forwarded request expired {late_ms} ms before this node read it; it was not applied"
        )


def _int_list(body: dict[str, Any], name: str) -> list[int]:
    value = body.get(name)
    if not isinstance(value, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in value):
        raise BadRequest(f"field {name!r} must be a list of integers")
    return value


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise BadRequest(f"field {name!r} is missing or has the wrong type")
    return value


async def _stream_ops(request: web.Request, operations: Callable[[], Iterator[Operation]]) -> web.StreamResponse:
    """Stream ``operations()`` (run in a worker thread) as consecutive msgpack batches of operations."""
    response = web.StreamResponse(headers={"Content-Type": MSGPACK})
    await response.prepare(request)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=4)
    loop = asyncio.get_running_loop()

    def put(item: bytes | None) -> None:
        # Bounded: a receiver that stopped reading ends the fold instead of parking the thread.
        asyncio.run_coroutine_threadsafe(queue.put(item), loop).result(timeout=FOLD_STALL_S)

    def produce() -> None:
        try:
            for batch in op_batches(operations()):
                put(msgpack.packb([op.to_wire() for op in batch], use_bin_type=True))
        finally:
            put(None)  # also when the fold fails: the loop below would wait for ever

    producer = loop.run_in_executor(None, produce)
    while (chunk := await queue.get()) is not None:
        await response.write(chunk)
    await producer  # a failed fold raises here, and its response is cut short (transport.make_middlewares)
    await response.write_eof()
    return response


class _Api:
    """Handlers bound to one node."""

    def __init__(self, node: ApiHost) -> None:
        self.node = node
        self.apply_requests = 0

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "node_id": self.node.node_id,
                "epoch": self.node.state.epoch,
                "status": "ok",
                "apply_requests": self.apply_requests,
                "durability": self.node.durability,
            }
        )

    async def cluster(self, request: web.Request) -> web.Response:
        return web.json_response(
            cs.status_document(self.node.state, self.node.claimant(), self.node.member_attributes())
        )

    async def verify(self, request: web.Request) -> web.Response:
        """Compare every partition's replicas (``legion.verify``): each live node summarises what it holds."""
        state, report = await self._verify()
        return web.json_response({"epoch": state.epoch, **report.to_json()})

    async def repair(self, request: web.Request) -> web.Response:
        """Verify, then run an anti-entropy exchange between every two live replicas of each differing partition; verify again."""
        node = self.node
        _, before = await self._verify()
        live = node.coordinator.live()

        async def exchange(first: str, second: str, engine: str, partition: int) -> int:
            if first == node.node_id:
                return await node.anti_entropy.exchange(engine, partition, second)
            body = {"engine": engine, "partition": partition, "peer": second}
            raw = await node.peers.call(
                "POST", node.state.url_of(first) + "/internal/exchange",
                data=msgpack.packb(body, use_bin_type=True), timeout_ms=VERIFY_DEADLINE_MS,
            )  # fmt: skip
            return int(unpack(raw, dict).get("keys", 0))

        errors, keys = [], 0
        for d in before.differing:
            replicas = sorted(n for n in d.replicas if n in live)
            pairs = [(a, b) for i, a in enumerate(replicas) for b in replicas[i + 1 :]]
            # One pair after another: the first exchange's repairs are what the next one compares.
            for a, b in pairs:
                try:
                    keys += await exchange(a, b, d.engine, d.partition)
                except LegionError as exc:
                    errors.append({"engine": d.engine, "partition": d.partition, "message": exc.message})
        state, after = await self._verify()
        repaired = sorted({(d.engine, d.partition) for d in before.differing})
        return web.json_response(
            {
                "repaired": [{"engine": e, "partition": p} for e, p in repaired],
                "keys": keys,
                "errors": errors,
                "after": {"epoch": state.epoch, **after.to_json()},
            }
        )

    async def _verify(self) -> tuple[cs.ClusterState, Report]:
        node = self.node
        state, live = node.state, node.coordinator.live()
        held = {
            m.id: [p for p, replicas in enumerate(state.placement) if m.id in replicas]
            for m in state.members
            if any(m.id in replicas for replicas in state.placement)
        }
        unreachable = {n: "down" for n in held if n not in live}
        asked = [n for n in held if n in live]

        async def ask(node_id: str) -> dict[tuple[str, int], Summary]:
            if node_id == node.node_id:
                return await node.summaries(held[node_id])
            raw = await node.peers.call(
                "POST",
                state.url_of(node_id) + "/internal/digest",
                data=msgpack.packb({"partitions": held[node_id]}, use_bin_type=True),
                timeout_ms=VERIFY_DEADLINE_MS,
            )
            return {(e, p): Summary(c, d) for e, p, c, d in unpack(raw, list)}

        answers: dict[str, dict[tuple[str, int], Summary]] = {}
        for node_id, result in zip(asked, await asyncio.gather(*map(ask, asked), return_exceptions=True)):
            if isinstance(result, LegionError):
                unreachable[node_id] = result.message
            elif isinstance(result, BaseException):
                raise result
            else:
                answers[node_id] = result
        return state, compare(state.placement, sorted(node.engines), answers, unreachable)

    async def join(self, request: web.Request) -> web.Response:
        body = await _json_object(request, '{"node_id": …, "url": …}')
        node_id = check_node_id(body.get("node_id"))  # type: ignore[arg-type]
        url = body.get("url")
        if not isinstance(url, str) or not URL_PATTERN.match(url):
            raise BadRequest(f"url must look like http://HOST:PORT, got {url!r}")
        if urlsplit(url).scheme != urlsplit(self.node.url).scheme:
            raise BadRequest(
                f"this cluster serves {urlsplit(self.node.url).scheme.upper()} and node {node_id} {urlsplit(url).scheme.upper()}: "
                "every node of a cluster uses TLS (--tls-cert, --tls-key, --tls-ca) or none does"
            )
        if "metadata" in body:  # a node says how it keeps the state; an operator's request need not
            check_same_choice(self.node.metadata_choice, str(body["metadata"]), node_id)
        self.node.heard_from(node_id)
        return await self._claimant_change(request, body, lambda s: cs.add_member(s, node_id, url))

    async def remove(self, request: web.Request) -> web.Response:
        body = await _json_object(request, '{"node_id": …}')
        node_id = check_node_id(body.get("node_id"))  # type: ignore[arg-type]
        self.node.state.member(node_id)  # NotFound before forwarding anything
        return await self._claimant_change(request, body, lambda s: cs.remove_member(s, node_id))

    async def _claimant_change(
        self, request: web.Request, body: Any, change: Callable[[cs.ClusterState], cs.ClusterState]
    ) -> web.Response:
        _refuse_if_expired(request)
        try:
            state = await self.node.change_state(change)
        except ForwardToClaimant as fwd:
            # The claimant must not apply the change after we have answered 504: it gets
            # the deadline and drops the request once it has passed (a stalled claimant
            # reads it only when it resumes).
            deadline_ms = int(time.time() * 1000) + REQUEST_DEADLINE_MS
            try:
                raw = await self.node.peers.call(
                    "POST",
                    fwd.url + request.path,
                    json_body=body,
                    request_id=request.get("request_id", ""),
                    timeout_ms=REQUEST_DEADLINE_MS,
                    headers={DEADLINE_HEADER: str(deadline_ms)},
                )
            except DeadlineExceeded:
                raise DeadlineExceeded(
                    f"the claimant at {fwd.url} did not answer within {REQUEST_DEADLINE_MS} ms: outcome unknown. "
                    "It may have applied the change before its deadline, never after; check "
                    "'legion cluster status', then retry if needed (join and remove are idempotent)"
                ) from None
            return web.Response(body=raw, content_type="application/json")
        doc = cs.status_document(state, self.node.claimant(), self.node.member_attributes())
        doc["state"] = cs.to_dict(state)
        return web.json_response(doc)

    async def start_join(self, request: web.Request) -> web.Response:
        body = await _json_object(request, '{"node_id": …, "term": …}')
        return web.json_response(self.node.publisher.on_start_join(body))

    async def publish(self, request: web.Request) -> web.Response:
        body = await _json_object(request, '{"node_id": …, "state": …}')
        return web.json_response(self.node.publisher.on_publish(body))

    async def commit(self, request: web.Request) -> web.Response:
        body = await _json_object(request, '{"node_id": …, "term": …, "epoch": …}')
        return web.json_response(self.node.publisher.on_commit(body))

    async def gossip(self, request: web.Request) -> web.Response:
        body = await read_json(request, PEER_BODY_BYTES_MAX)
        if not isinstance(body, dict) or not isinstance(body.get("node_id"), str):
            raise BadRequest("gossip body must be a JSON object with node_id")
        self.node.heard_from(body["node_id"])
        if body.get("state") is not None:
            self.node.adopt(cs.from_dict(body["state"]))
        self.node.take_attributes(body.get("attributes"))
        mine = cs.digest(self.node.state)
        try:
            theirs = (int(body.get("epoch", 0)), str(body.get("committed_by", "")))
        except (TypeError, ValueError):
            raise BadRequest("gossip epoch must be an integer") from None
        reply: dict[str, Any] = {"node_id": self.node.node_id, "epoch": mine[0], "committed_by": mine[1]}
        if cs.digest_newer(mine, theirs):
            reply["state"] = cs.to_dict(self.node.state)
        if "attributes_digest" in body:
            # The exchange's first message: answer with the records it lacks, and our digest
            # so that its third message brings the records we lack.
            lacking = self.node.attributes.newer_than(attributes.digest_from_wire(body["attributes_digest"]))
            if lacking:
                reply["attributes"] = attributes.to_wire(lacking)
            reply["attributes_digest"] = self.node.attributes.digest()
        return web.json_response(reply)

    async def apply(self, request: web.Request) -> web.Response:
        try:
            refresh = parse_flag("refresh", request.query.get("refresh"))
            sender = sender_digest(request)
            ops = decode_ops(await read_body(request, PEER_BODY_BYTES_MAX))
            refused = await self.node.accept_ops(ops, flush=refresh)
            if sender is not None:
                # Logged here; the owners the coordinator did not know of must get them too.
                self.node.coordinator.forward([op for i, op in enumerate(ops) if i not in refused], sender)
            return web.Response(body=encode_apply_reply(len(ops), refused), content_type=MSGPACK)
        finally:
            self.apply_requests += 1  # once answered: a settled count means nothing is left in flight

    def _hint_owner(self, request: web.Request) -> str:
        owner = request.query.get("owner", "")
        if not any(m.id == owner and m.status != cs.REMOVED for m in self.node.state.members):
            raise BadRequest(f"?owner= must name a member of this cluster, got {owner!r:.80}")
        return owner

    async def keep_hints(self, request: web.Request) -> web.Response:
        """Keep a batch of operations durably as hints for ``?owner=`` (a fallback of a sloppy quorum)."""
        owner = self._hint_owner(request)
        ops = decode_ops(await read_body(request, PEER_BODY_BYTES_MAX))
        await self.node.hinted.keep([(owner, op) for op in ops])
        return web.json_response({"kept": len(ops)})

    async def hints_for(self, request: web.Request) -> web.Response:
        """What this node holds for ``?owner=``: hints pending per partition, and partitions whose hints it lost."""
        return web.json_response(await self.node.hinted.report_for(self._hint_owner(request)))

    async def clear_lost_hints(self, request: web.Request) -> web.Response:
        body = await _json_object(request, 'like {"owner": "n2", "partitions": [3, 7]}')
        owner, partitions = _field(body, "owner", str), _int_list(body, "partitions")
        await asyncio.to_thread(self.node.hint_store.clear_lost, owner, partitions)
        return web.json_response({"cleared": len(partitions)})

    async def read(self, request: web.Request) -> web.Response:
        body = await _read_msgpack(request)
        version_of = body.get("version_of")
        if version_of is not None and not isinstance(version_of, bytes):
            raise BadRequest("field 'version_of' must be a key (bytes) or absent")
        reply = await self.node.local_read(
            _field(body, "engine", str), _field(body, "partition", int), body.get("query"), version_of=version_of
        )
        return _msgpack_response(reply)

    async def coverage(self, request: web.Request) -> web.Response:
        body = await _read_msgpack(request)
        partitions = _int_list(body, "partitions")
        return _msgpack_response(await self.node.local_coverage(_field(body, "engine", str), partitions, body.get("query")))

    async def fold(self, request: web.Request) -> web.StreamResponse:
        """Stream a partition's fold as consecutive msgpack batches of operations."""
        engine = request.query.get("engine", "")
        try:
            partition = int(request.query.get("partition", ""))
        except ValueError:
            raise BadRequest("query parameter 'partition' must be an integer") from None
        impl = self.node.check_holds(engine, partition)
        self._check_knows_move(request)
        await self.node.writer.ensure_open(engine, partition)
        return await _stream_ops(request, lambda: impl.fold(partition))

    async def take_snapshot(self, request: web.Request) -> web.Response:
        """A snapshot of a partition for the puller (``{"manifest": …}``, or null: pull the fold instead)."""
        body = await _read_msgpack(request)
        engine, partition = _field(body, "engine", str), _field(body, "partition", int)
        self.node.check_holds(engine, partition)
        self._check_knows_move(request)
        manifest = await self.node.shelf.take(engine, partition)
        return _msgpack_response({"manifest": manifest.to_wire() if manifest is not None else None})

    async def snapshot_file(self, request: web.Request) -> web.StreamResponse:
        """One file of a snapshot on the shelf, from ``offset`` on."""
        snapshot_id, name = request.query.get("id", ""), request.query.get("name", "")
        try:
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            raise BadRequest("query parameter 'offset' must be an integer") from None
        if offset < 0:
            raise BadRequest("query parameter 'offset' must be 0 or more")
        chunks = self.node.shelf.read(snapshot_id, name, offset)  # checks id and name before anything is sent
        first = await anext(chunks, b"")
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response

    async def release_snapshot(self, request: web.Request) -> web.Response:
        self.node.shelf.release(request.query.get("id", ""))
        return _msgpack_response({"released": True})

    def _check_knows_move(self, request: web.Request) -> None:
        """Copy a partition out only once this node knows the move the puller knows: then every write
        it logs from now on is forwarded to the puller, whoever coordinated it (see apply)."""
        puller = sender_digest(request)
        if puller is not None and cs.digest_newer(puller, cs.digest(self.node.state)):
            self.node.request_gossip()
            raise Unavailable(
                f"node {self.node.node_id} has not yet seen cluster state {puller[0]}:{puller[1]}; retry shortly"
            )

    async def digest(self, request: web.Request) -> web.Response:
        body = await _read_msgpack(request)
        summaries = await self.node.summaries(_int_list(body, "partitions"))
        return _msgpack_response([[e, p, s.count, s.digest] for (e, p), s in sorted(summaries.items())])

    async def tree(self, request: web.Request) -> web.Response:
        """Anti-entropy: this replica's bucket hashes, some segments' hashes, or their items."""
        body = await _read_msgpack(request)
        engine, partition = _field(body, "engine", str), _field(body, "partition", int)
        self.node.check_holds(engine, partition)
        await self.node.writer.ensure_open(engine, partition)
        return _msgpack_response(await answer_tree(self.node, engine, partition, body))

    async def fold_keys(self, request: web.Request) -> web.StreamResponse:
        """Anti-entropy: stream the operations that rebuild the named keys, as ``/internal/fold`` streams a fold."""
        body = await _read_msgpack(request)
        engine, partition = _field(body, "engine", str), _field(body, "partition", int)
        keys = body.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, bytes) for k in keys):
            raise BadRequest("field 'keys' must be a list of byte strings")
        impl = self.node.check_holds(engine, partition)
        await self.node.writer.ensure_open(engine, partition)
        return await _stream_ops(request, lambda: impl.fold_keys(partition, keys))

    async def exchange(self, request: web.Request) -> web.Response:
        """Run one anti-entropy exchange from here with ``peer`` (``legion cluster repair`` asks)."""
        body = await _read_msgpack(request)
        engine, partition = _field(body, "engine", str), _field(body, "partition", int)
        peer = check_node_id(_field(body, "peer", str))
        self.node.check_holds(engine, partition)
        if peer == self.node.node_id or peer not in self.node.state.placement[partition]:
            raise BadRequest(f"node {peer!r} is not another replica of partition {partition}")
        return _msgpack_response({"keys": await self.node.anti_entropy.exchange(engine, partition, peer)})

    async def handoff_done(self, request: web.Request) -> web.Response:
        body = await _json_object(request, '{"node_id": …, "partitions": [...]}')
        node_id = check_node_id(body.get("node_id"))  # type: ignore[arg-type]
        partitions = _int_list(body, "partitions")
        return await self._claimant_change(
            request, body, lambda s: cs.try_commit(cs.mark_ready(s, node_id, partitions))
        )
