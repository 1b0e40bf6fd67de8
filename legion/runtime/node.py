"""A Legion node: one process holding some partitions of every engine.

I/O. The node owns the pieces and their lifecycle — the node database and log
writer, the engines (and the services they start beside the node), the HTTP
server, the peer client, the gossiper and the handoff receiver — and the one
mutable thing they share: the cluster state this node currently believes.
Beside it, outside the state, it keeps every member's gossiped attributes
(``legion.runtime.member_attributes``). ``adopt`` is the only way that belief changes;
the state is the committed state of the node's consensus record
(``legion.consensus``), which is fsynced before anything depends on it
(``consensus_store``); the node then reconciles local partitions with it
(open what this node now holds, drop what moved away).

State changes are decided by the claimant (``change_state``), as the leader
of a term, through the state publisher (``state_publisher``): any other node
forwards the request to it, and the answer comes once a majority of the
voters holds the change. A node started with ``--metadata etcd://…`` keeps
the state in etcd instead (``etcd_register``): it decides any change itself,
by compare-and-swap, and loads the newest state from etcd when it starts. The
data directory records which of the two it uses (``legion.etcd_metadata``).

Start-up order: HTTP server, cluster state (join or create), open the
partitions held (``reconcile``), ``Engine.start`` for every engine, then the
gossip, handoff and anti-entropy loops. Shutdown: those loops, the HTTP server,
``Engine.stop`` for every started engine, then the partitions and the log.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import secrets
import signal
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit
from typing import Any

from aiohttp import web

from legion import attributes
from legion import cluster_state as cs
from legion import consensus as cn
from legion.clock import HybridClock
from legion.durability import DEFAULT as DEFAULT_DURABILITY, Durability, check_durability
from legion.engine import Engine, NodeInfo, load_engines
from legion import etcd_metadata
from legion.errors import BadRequest, ConfigError, Conflict, EngineMissing, LegionError, NotOwner, Unavailable
from legion.keyspace import check_partition_count, partition_of
from legion.limits import (
    ANTI_ENTROPY_INTERVAL_MS,
    ENGINE_START_TIMEOUT_MS,
    ENGINE_STOP_TIMEOUT_MS,
    FAILURE_TIMEOUT_MS,
    HANDOFF_PULLS_MAX,
    PEER_BODY_BYTES_MAX,
    REPLICAS_MAX,
)
from legion.membership import alive_ids, check_node_id, claimant
from legion.replication import Operation
from legion.runtime.anti_entropy import AntiEntropy, ReplicaTrees
from legion.runtime.consensus_store import ConsensusStore
from legion.runtime.etcd_register import EtcdRegister
from legion.runtime.coordinator import Coordinator
from legion.runtime.gossiper import Gossiper
from legion.runtime.handoff_receiver import HandoffReceiver
from legion.runtime.hint_store import HintStore
from legion.hints import ATTRIBUTE_PREFIX as HINTS_ATTRIBUTE_PREFIX
from legion.runtime.hinted_handoff import HintedHandoff
from legion.options import check_options
from legion.runtime.log_writer import LogWriter
from legion.runtime.member_attributes import MemberAttributes
from legion.verify import Summary, summarise
from legion.runtime.node_metrics import NodeMetrics
from legion.runtime.node_view import ForwardToClaimant, StateRegister
from legion.runtime import tls
from legion.runtime.state_publisher import Change, StatePublisher
from legion.runtime.storage import NodeStore
from legion.runtime.snapshot_shelf import SnapshotShelf
from legion.runtime.tls import TlsFiles
from legion.runtime.transport import PeerClient, make_middlewares, quiet_parser_errors

log = logging.getLogger(__name__)

JOIN_ATTEMPTS_MAX = 150
GC_YOUNG_THRESHOLD = 20_000  # allocations between young collections (see _serve)
JOIN_RETRY_INTERVAL_S = 0.2  # a node started beside its seed (`legion cluster up`) gets in soon after the seed listens
# States remembered by digest: enough for the epochs a write can be planned with while gossip spreads.
RECENT_STATES_MAX = 64


@dataclass
class NodeConfig:
    """How to start one node: where its data lives, where it listens, whom it joins."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 7400
    join: str | None = None
    token_file: Path | None = None
    node_id: str | None = None
    partitions: int = 64
    replicas: int = 3
    # Node options (``--option KEY=VALUE``), handed to every engine's ``start``.
    options: Mapping[str, str] = field(default_factory=dict)
    # What an acknowledged write survives (``legion.durability``): the node's databases and engines follow it.
    durability: Durability = DEFAULT_DURABILITY
    # Serve GET /metrics without the token to loopback clients (a Prometheus on the same machine).
    metrics_open: bool = False
    # Serve HTTPS only and talk to peers with mutual TLS (``legion.runtime.tls``); None: plain HTTP.
    tls: TlsFiles | None = None
    # Between background anti-entropy rounds (``legion.runtime.anti_entropy``); 0: no background rounds.
    anti_entropy_interval_ms: int = ANTI_ENTROPY_INTERVAL_MS
    # Where the cluster state is kept (``legion.etcd_metadata``): None, by consensus among the
    # nodes; ``etcd://HOST:PORT[/PREFIX]``, in etcd.
    metadata: str | None = None


def load_token(config: NodeConfig) -> str:
    """The cluster token: from --token-file, or DATA_DIR/token (created, 0600, for a new cluster)."""
    path = config.token_file or config.data_dir / "token"
    if path.exists():
        token = path.read_text().strip()
        if not token:
            raise ConfigError(f"token file {path} is empty")
        return token
    if config.join or config.token_file:
        raise ConfigError(f"token file {path} does not exist; copy the cluster's token file and pass --token-file")
    token = secrets.token_urlsafe(32)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("generated a cluster token in %s", path)
    return token


class Node:
    """One running node; see the module docstring."""

    def __init__(self, config: NodeConfig) -> None:
        check_partition_count(config.partitions)
        if not 1 <= config.replicas <= REPLICAS_MAX:
            raise ConfigError(f"replicas must be between 1 and {REPLICAS_MAX}, got {config.replicas}")
        self.config = config
        # A TLS node hands its files to the engines too (the map/reduce engine's Dask traffic uses them).
        tls_options = config.tls.as_options() if config.tls is not None else {}
        self.options = MappingProxyType(check_options({**config.options, **tls_options}))
        self.url = f"{'https' if config.tls is not None else 'http'}://{config.host}:{config.port}"
        self.token = load_token(config)
        self.durability = check_durability(config.durability)
        self.store = NodeStore(config.data_dir, self.durability)
        self.node_id = check_node_id(self.store.meta_get("node_id") or config.node_id or f"node-{uuid.uuid4().hex[:8]}")
        self.store.meta_put("node_id", self.node_id)
        incarnation = attributes.next_incarnation(self.store.meta_get("incarnation"), int(time.time()))
        self.store.meta_put("incarnation", incarnation)
        self.attributes = MemberAttributes(self.node_id, incarnation)
        self.consensus_store = ConsensusStore(config.data_dir)
        record = self.consensus_store.load()
        if record is None:
            # A data directory from before consensus: its believed state becomes the committed one.
            raw_state = self.store.meta_get("cluster_state")
            record = cn.founding_record(cs.from_dict(raw_state)) if raw_state else cn.Record()
        self.record = record
        self.state: cs.ClusterState = record.committed  # type: ignore[assignment]
        target = etcd_metadata.parse_metadata_url(config.metadata) if config.metadata is not None else None
        self.metadata_choice = etcd_metadata.choice_of(target)
        etcd_metadata.check_choice(
            self.store.meta_get("metadata"), self.metadata_choice, has_state=record.committed is not None
        )
        self.store.meta_put("metadata", self.metadata_choice)
        self._recent_states: dict[cs.Digest, cs.ClusterState] = {}
        if self.state is not None:
            self._remember(self.state)
        self.clock = HybridClock(lambda: int(time.time() * 1000))
        self.clock.advance_to(self.store.clock_high())  # later than every write it logged, whatever its wall clock says
        self.engines: dict[str, Engine] = {
            name: cls(config.data_dir / "engines" / name) for name, cls in sorted(load_engines().items())
        }
        for engine in self.engines.values():
            engine.durability = self.durability  # the contract: set before the first open
        self.metrics = NodeMetrics()
        self.writer = LogWriter(self.store, self.engines, config.data_dir, self.metrics)
        self.peers = PeerClient(
            self.token, lambda: cs.digest(self.state), tls.peer_context(config.tls) if config.tls is not None else None
        )
        self.coordinator = Coordinator(self)
        self.gossiper = Gossiper(self)
        self.etcd = EtcdRegister(self, target) if target is not None else None
        self.publisher: StateRegister = self.etcd if self.etcd is not None else StatePublisher(self)
        self.handoff = HandoffReceiver(self)
        self.shelf = SnapshotShelf(config.data_dir, self.writer)
        self.hint_store = HintStore(config.data_dir, self.durability)
        self.hinted = HintedHandoff(
            self.coordinator,
            self.hint_store,
            self.metrics,
            lambda values: self.attributes.publish(HINTS_ATTRIBUTE_PREFIX, values),
            self.handoff.resync_partitions,
        )
        self.writer.on_missed = self.handoff.take_missed
        self.trees = ReplicaTrees(self.engines)
        self.writer.on_applied, self.writer.on_reset = self.trees.applied, self.trees.reset
        self.anti_entropy = AntiEntropy(self)
        self.metrics.watch(self)
        self.started_ms = self.now_ms()
        self.last_heard_ms: dict[str, int] = {}
        self._was_down = False
        self._cut_off = False
        self._had_majority = False  # a node still forming its view of the members is not cut off
        self._handing_over: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._hand_over_slots = asyncio.Semaphore(HANDOFF_PULLS_MAX)
        self._grace_until_ms = self.started_ms
        self._runner: web.AppRunner | None = None
        self._started_engines: list[Engine] = []

    @staticmethod
    def now_ms() -> int:
        return int(time.monotonic() * 1000)

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self.writer.start(asyncio.get_running_loop())
        await self.peers.start()
        from legion.runtime.http_api import add_routes, admission
        from legion.runtime.operator_api import observer, public_requests

        quiet_parser_errors()
        middlewares = make_middlewares(
            self.token, admission(self), public=public_requests(self), observe=observer(self)
        )
        app = web.Application(client_max_size=PEER_BODY_BYTES_MAX, middlewares=middlewares)
        add_routes(app, self)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        server_ssl = tls.server_context(self.config.tls) if self.config.tls is not None else None
        await web.TCPSite(self._runner, self.config.host, self.config.port, backlog=1024, ssl_context=server_ssl).start()
        restarted = self.state is not None
        if restarted:
            # Its persisted state may be stale: hear the cluster before deciding anything for it.
            self._grace_until_ms = self.started_ms + FAILURE_TIMEOUT_MS
        if self.etcd is not None:
            await self.etcd.open()
            if restarted:
                await self.etcd.catch_up()
        if self.state is None:
            if self.config.join:
                await self._join(self.config.join)
            else:
                cluster_id = f"c-{uuid.uuid4().hex[:12]}"
                founded = cs.new_cluster(cluster_id, self.node_id, self.url, self.config.partitions, self.config.replicas)
                if self.etcd is not None:
                    await self.etcd.found(founded)
                else:
                    self.set_record(cn.founding_record(founded))
        for member in self.state.members:
            self.last_heard_ms.setdefault(member.id, self.started_ms)
        await self.reconcile(hand_over=False)
        if restarted:
            # It may have missed writes while it was down: those are hints on its peers.
            self.hinted.start_catch_up()
        await self._start_engines()
        self.gossiper.start()
        if self.etcd is not None:
            self.etcd.start()
        self.handoff.start()
        self.hinted.start()
        if self.config.anti_entropy_interval_ms > 0:
            self.anti_entropy.interval_ms = self.config.anti_entropy_interval_ms
            self.anti_entropy.start()
        log.info("node %s serving %s (cluster %s, epoch %d)", self.node_id, self.url, self.state.cluster_id, self.state.epoch)

    async def stop(self) -> None:
        await self.gossiper.stop()
        await self.publisher.stop()
        await self.handoff.stop()
        await self.hinted.stop()
        await self.anti_entropy.stop()
        for task in list(self._handing_over.values()):
            task.cancel()
        await asyncio.gather(*self._handing_over.values(), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        try:
            await self._stop_engines()
        finally:
            self.coordinator.close()
            await self.peers.close()
            await asyncio.to_thread(self.writer.stop)
            self.store.close()
            self.hint_store.close()

    # --- what the metrics read (``legion.runtime.node_metrics.MetricsSource``) ---

    def handoffs_in_flight(self) -> int:
        return len(self.handoff.in_flight)

    def log_figures(self) -> tuple[int, int, int | None]:
        return self.store.log_figures()

    def hints_pending(self) -> dict[str, int]:
        return self.hint_store.pending()

    def partitions_catching_up(self) -> int:
        return len(self.hinted.catching_up)

    def partitions_handing_over(self) -> int:
        held = set(cs.partitions_held(self.state, self.node_id))
        return len({p for _, p in self.writer.open_partitions() if p not in held})

    # --- engine services -----------------------------------------------------

    def node_info(self, engine: Engine) -> NodeInfo:
        """What ``engine.start`` gets: this node's id, address, directories, options, and its ``publish``."""
        loop = asyncio.get_running_loop()

        def publish(values: Mapping[str, str]) -> None:
            self.attributes.publish(engine.name, values)
            if not loop.is_closed():
                # From any thread: wake the gossiper on its loop so the change spreads now.
                loop.call_soon_threadsafe(self.gossiper.push_soon)

        return NodeInfo(
            node_id=self.node_id,
            url=self.url,
            data_dir=self.config.data_dir,
            root=engine.root,
            options=self.options,
            publish=publish,
        )

    async def _start_engines(self) -> None:
        """``Engine.start`` for each engine in a worker thread, bounded; on failure, stop those started."""
        for engine in self.engines.values():
            self._started_engines.append(engine)  # before the call: stop follows even a start that raised
            try:
                await asyncio.wait_for(asyncio.to_thread(engine.start, self.node_info(engine)), ENGINE_START_TIMEOUT_MS / 1000)
            except asyncio.TimeoutError:
                await self._stop_engines()
                raise ConfigError(f"engine {engine.name!r} did not start within {ENGINE_START_TIMEOUT_MS} ms") from None
            except BaseException:
                await self._stop_engines()
                raise

    async def _stop_engines(self) -> None:
        """``Engine.stop`` for every started engine, last started first, each bounded."""
        if not self._started_engines:
            return
        engine = self._started_engines.pop()
        try:
            await asyncio.wait_for(asyncio.to_thread(engine.stop), ENGINE_STOP_TIMEOUT_MS / 1000)
        except asyncio.TimeoutError:
            log.error("engine %s did not stop within %d ms; shutting down anyway", engine.name, ENGINE_STOP_TIMEOUT_MS)
        finally:
            await self._stop_engines()  # the others stop even when this one's stop raised

    def member_ids(self) -> set[str]:
        """Members that are not removed (whose attributes this node keeps)."""
        return {m.id for m in self.state.members if m.status != cs.REMOVED} if self.state is not None else set()

    def member_attributes(self) -> dict[str, dict[str, str]]:
        """Every member's attributes as this node knows them."""
        return self.attributes.values(sorted(self.member_ids()))

    def take_attributes(self, raw: Any) -> None:
        """Merge attributes a peer gossiped (JSON); BadRequest if malformed."""
        if raw is not None and self.state is not None:
            self.attributes.merge(attributes.from_wire(raw), self.member_ids())

    async def _join(self, seed: str) -> None:
        """Ask a seed (which forwards to the claimant) to admit this node; adopt the answer."""
        await self._check_seed_scheme(seed)
        last_error: LegionError | None = None
        for _attempt in range(JOIN_ATTEMPTS_MAX):
            if self.state is not None:
                return  # the claimant's answer was lost, but gossip brought the state
            try:
                raw = await self.peers.call(
                    "POST", seed.rstrip("/") + "/v1/cluster/join",
                    json_body={"node_id": self.node_id, "url": self.url, "metadata": self.metadata_choice},
                )
                self.adopt(cs.from_dict(json.loads(raw)["state"]))
                return
            except (Unavailable, LegionError) as exc:
                if not isinstance(exc, Unavailable) and exc.http_status < 500:
                    raise
                last_error = exc
                await asyncio.sleep(JOIN_RETRY_INTERVAL_S)
        raise ConfigError(f"could not join through {seed}: {last_error}")

    async def _check_seed_scheme(self, seed: str) -> None:
        """ConfigError when this node and the cluster it joins do not both use TLS, or both not."""
        parts = urlsplit(seed)
        if self.config.tls is None and (parts.scheme == "https" or await tls.speaks_tls(parts.hostname, parts.port)):
            raise ConfigError(
                f"the cluster at {seed} uses TLS and this node serves plain HTTP: start it with "
                "--tls-cert, --tls-key and --tls-ca (a certificate from the cluster's CA), and join through https://"
            )
        if self.config.tls is not None and parts.scheme != "https":
            raise ConfigError(f"this node serves HTTPS: join the cluster through its https:// URL, not {seed}")

    # --- the cluster state ---------------------------------------------------

    def set_record(self, record: cn.Record) -> None:
        """Take ``record`` as this node's consensus record: on disk (fsynced) first, then in memory;
        a newly committed state becomes the state this node believes."""
        if record == self.record:
            return
        self.consensus_store.save(record)
        before, self.record = self.record.committed, record
        state = record.committed
        if state is not None and state is not before:
            self.store.meta_put("cluster_state", cs.to_dict(state))  # for tools that read the node database
            self._note_own_liveness(state)
            self.state = state
            self._remember(state)
            self.handoff.wake()
            self.hinted.wake()  # an owner may be back up

    def adopt(self, state: cs.ClusterState) -> bool:
        """Take ``state``, known committed (from gossip or an answer), if it is newer than ours. True if adopted."""
        if self.state is not None and state.cluster_id != self.state.cluster_id:
            raise Conflict(f"cluster id mismatch: {state.cluster_id} vs {self.state.cluster_id}")
        record = cn.learn_commit(self.record, state)
        if record.committed is self.record.committed:
            return False
        self.set_record(record)
        return True

    def _remember(self, state: cs.ClusterState) -> None:
        self._recent_states[cs.digest(state)] = state
        while len(self._recent_states) > RECENT_STATES_MAX:
            self._recent_states.pop(next(iter(self._recent_states)))

    def recent_state(self, digest: cs.Digest) -> cs.ClusterState | None:
        """A state this node adopted lately, by its digest (to see what a peer planned with)."""
        return self._recent_states.get(digest)

    def _note_own_liveness(self, state: cs.ClusterState) -> None:
        """Once the cluster has thought this node down, it skipped it (writes left hints for it on
        peers): catch up on those when back up, serving no read meanwhile."""
        if not state.has_member(self.node_id):
            return
        if state.member(self.node_id).down:
            self._was_down = True
        elif self._was_down:
            self._was_down = False
            self.hinted.start_catch_up()

    def alive(self) -> set[str]:
        return alive_ids(self.state, self.node_id, self.last_heard_ms, self.now_ms())

    def note_reachability(self) -> None:
        """Once cut off from a majority of the members (a network split), this node was skipped by
        writes on the other side, which kept hints for it, whether or not it ever sees a state that
        marked it down (gossip brings only the newest): catch up on them once a majority is back."""
        members = [m for m in self.state.members if m.status != cs.REMOVED]
        if len(self.alive()) * 2 < len(members):
            # A node joining a large cluster hears its members one by one: that is no cut.
            self._cut_off = self._had_majority
            return
        self._had_majority = True
        if self._cut_off:
            self._cut_off = False
            self.hinted.start_catch_up()

    def claimant(self) -> str | None:
        return claimant(self.state, self.alive())

    def in_grace(self) -> bool:
        """A restarted node first hears the cluster before it campaigns (its state may be stale)."""
        return self.now_ms() < self._grace_until_ms

    def heard_from(self, node_id: str) -> None:
        self.last_heard_ms[node_id] = self.now_ms()

    async def change_state(self, change: Change) -> cs.ClusterState:
        """Decide ``change`` as the claimant, or forward to the claimant. Returns the committed state.
        With the state in etcd, any node decides: etcd's compare-and-swap orders the changes.

        ``NoQuorum`` (503) if this node cannot reach a majority of the voters (or etcd)."""
        if self.etcd is not None:
            return await self.etcd.change(change)
        target = self.claimant()
        if target is None:
            raise Unavailable("no live voter can decide cluster changes right now; retry shortly")
        if target != self.node_id:
            raise ForwardToClaimant(self.state.url_of(target))
        return await self.publisher.change(change)

    def request_gossip(self) -> None:
        self.gossiper.push_soon()

    async def reconcile(self, *, hand_over: bool = True) -> None:
        """Open the partitions this node holds; start handing those that moved away for good to their
        owners, each dropped once they took it (with ``hand_over`` False, as at start-up before any
        peer was heard, keep them). Hand-overs run in the background: pulls must not wait for them."""
        held = set(cs.partitions_held(self.state, self.node_id))
        for engine in self.engines:
            for p in sorted(held):
                await self.writer.ensure_open(engine, p)
        if not hand_over:
            return
        for key in sorted(self.writer.open_partitions()):
            if key[1] not in held and key not in self._handing_over:
                task = asyncio.create_task(self._hand_over(*key), name=f"hand-over {key[0]}/{key[1]}")
                self._handing_over[key] = task
                task.add_done_callback(lambda _task, key=key: self._handing_over.pop(key, None))

    async def _hand_over(self, engine: str, partition: int) -> None:
        async with self._hand_over_slots:
            if partition in cs.partitions_held(self.state, self.node_id):
                return  # it came back meanwhile
            handed = await self.anti_entropy.hand_over(engine, partition)
            if handed and partition not in cs.partitions_held(self.state, self.node_id):
                try:
                    await self.writer.drop(engine, partition)
                except Exception:  # an engine's drop failed: the copy is kept, and dropped at a later round
                    log.exception("dropping %s/%d after handing it over failed", engine, partition)

    # --- local replica operations (called by the coordinator and the peer API) ---

    def installed(self, engine: str) -> Engine:
        """The engine a peer named; ``EngineMissing`` (409: ask another replica) if it is not installed here."""
        impl = self.engines.get(engine)
        if impl is None:
            raise EngineMissing(
                f"node {self.node_id} does not have engine {engine!r} installed (it has {sorted(self.engines)}); "
                "install it on every node and restart them"
            )
        return impl

    async def summaries(self, partitions: list[int]) -> dict[tuple[str, int], Summary]:
        """Every engine's fold summary (``legion.verify``) of those ``partitions`` this node holds."""
        out: dict[tuple[str, int], Summary] = {}
        for partition in partitions:
            for name in sorted(self.engines):
                try:
                    impl = self.check_holds(name, partition)
                except LegionError:
                    continue  # not held (any more): the caller's placement was older
                await self.writer.ensure_open(name, partition)
                out[(name, partition)] = await asyncio.to_thread(lambda: summarise(impl.fold(partition)))
        return out

    def check_holds(self, engine: str, partition: int) -> Engine:
        self.installed(engine)
        if not 0 <= partition < self.state.partitions:
            raise BadRequest(f"partition {partition} is out of range 0..{self.state.partitions - 1}")
        if self.node_id not in cs.owners(self.state, partition):
            raise NotOwner(f"node {self.node_id} holds no replica of partition {partition}", epoch=self.state.epoch)
        return self.engines[engine]

    async def accept_ops(self, ops: list[Operation], *, flush: bool = False) -> dict[int, LegionError]:
        """Log and apply the acceptable operations of a batch; the refused ones by index, with why.

        With ``flush``, the engine also flushes what they touched before this returns."""
        refused: dict[int, LegionError] = {}
        accepted: list[Operation] = []
        holds: dict[tuple[str, int], Engine] = {}  # check_holds once per partition of the batch
        horizon = self.clock.horizon()
        for i, op in enumerate(ops):
            try:
                engine = holds.get((op.engine, op.partition))
                if engine is None:
                    engine = holds[(op.engine, op.partition)] = self.check_holds(op.engine, op.partition)
                if partition_of(op.key, self.state.partitions) != op.partition:
                    raise BadRequest(f"operation key does not belong to partition {op.partition}")
                engine.validate(op)
                if op.hlc > horizon:
                    self.clock.observe(op.hlc)  # raises: the timestamp is too far ahead
                accepted.append(op)
            except LegionError as exc:
                refused[i] = exc
        if accepted:
            self.clock.advance_to(max(op.hlc for op in accepted))
            await self.writer.submit(accepted, flush=flush)
        return refused

    def check_serves(self, engine: str, partition: int) -> Engine:
        """The engine, if this node may answer reads of ``partition`` (it holds it and is not re-syncing it)."""
        impl = self.check_holds(engine, partition)
        if partition in self.handoff.resyncing:
            raise Unavailable(f"node {self.node_id} is re-syncing partition {partition}; ask another replica")
        if partition in self.hinted.catching_up:
            raise Unavailable(
                f"node {self.node_id} is receiving the writes it missed of partition {partition}; ask another replica"
            )
        if self.writer.is_behind(engine, partition):
            raise Unavailable(
                f"node {self.node_id} could not apply writes of partition {partition} yet; ask another replica"
            )
        return impl

    async def local_read(self, engine: str, partition: int, query: Any, *, version_of: bytes | None = None) -> Any:
        """This replica's answer to a read; with ``version_of``, ``[answer, its version of that key or None]``
        (``Engine.versions``: the coordinator of a read with r > 1 compares them, for read repair)."""
        impl = self.check_serves(engine, partition)
        if not self.writer.is_open(engine, partition):
            await self.writer.ensure_open(engine, partition)
        if version_of is not None:
            key = version_of

            def read_with_version() -> list[Any]:
                answer = impl.read(partition, query)
                return [answer, dict(impl.versions(partition, [key])).get(key)]

            return await asyncio.to_thread(read_with_version)
        if impl.inline_reads:
            return impl.read(partition, query)
        return await asyncio.to_thread(impl.read, partition, query)

    async def local_coverage(self, engine: str, partitions: list[int], query: Any) -> Any:
        """This node's answer to its share of a coverage request (see ``Engine.coverage_many``).

        An engine that overrides ``coverage_many`` gets one call, in one worker
        thread, and its value is the answer; otherwise ``coverage`` runs per
        partition in parallel worker threads and the answer is their list, in
        the order of ``partitions``."""
        impl = self.installed(engine)
        if len(set(partitions)) != len(partitions):
            raise BadRequest("coverage partitions must not repeat")
        for p in partitions:
            self.check_serves(engine, p)
        for p in partitions:
            if not self.writer.is_open(engine, p):  # a coroutine per partition costs a search more than its check
                await self.writer.ensure_open(engine, p)
        if type(impl).coverage_many is not Engine.coverage_many:
            return await asyncio.to_thread(impl.coverage_many, list(partitions), query)
        return list(await asyncio.gather(*(asyncio.to_thread(impl.coverage, p, query) for p in partitions)))


async def _serve(config: NodeConfig) -> None:
    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    # What start-up built (modules, classes, the node's parts) lives as long as the process: move it
    # out of the cyclic collector's sight, so that a full collection pauses requests for far less.
    gc.freeze()
    # A node allocates in bursts (a bulk chunk's thousands of parsed documents, a replica's decoded
    # batches, the versions a shard keeps until its commit), and at the default threshold (700) its
    # young collections traverse what is still alive of a burst again and again: about 200 ms of GC
    # per node for a 50,000-document ingest with 3 replicas, in pauses of up to ~10 ms (the older
    # generation). Collected every GC_YOUNG_THRESHOLD allocations instead, most of a burst is freed
    # before any collection sees it: 20-30 ms for the same ingest.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    print(f"legion node {node.node_id} listening on {node.url}", flush=True)
    await stop.wait()
    log.info("node %s stopping", node.node_id)
    await node.stop()


def run(config: NodeConfig) -> None:
    """Run one node in the foreground until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop  # the faster event loop where it is available (not on Windows)
    except ImportError:
        asyncio.run(_serve(config))
    else:
        uvloop.run(_serve(config))
