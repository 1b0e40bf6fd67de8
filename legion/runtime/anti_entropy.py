"""Active anti-entropy: replicas compare hash trees in the background and ship each other what differs.

I/O. Two parts:

- ``ReplicaTrees`` keeps a ``legion.hash_tree.HashTree`` per engine's
  partition held here, over the engine's ``versions``. A tree is built from
  the engine (in a worker thread) the first time it is needed and again after
  the partition is (re)opened or dropped; after that the log writer tells it,
  from its thread, which keys each applied batch touched
  (``Engine.digest_keys``), and those keys' versions are read again
  (``versions(partition, keys)``) before the tree is next used — the tree is
  updated key by key, never rebuilt for a write.
- ``AntiEntropy`` runs rounds: for every partition this node holds, with every
  other live replica whose id is greater (so each pair is compared by one of
  its two nodes), for every engine, one *exchange*, then a short pause; one
  partition pair at a time. An exchange walks the two trees down where they
  differ (``/internal/tree``: buckets, then segments, then items — three
  round trips, one when the replicas agree), asks for the items again
  ``ANTI_ENTROPY_SETTLE_MS`` later (a write still in flight to one replica
  differs for a moment; only keys that differ both times are repaired), then
  ships the differing keys both ways: it pulls the peer's ``fold_keys`` (``/internal/fold-keys``,
  streamed) into its own log writer and pushes its own to the peer's
  ``/internal/apply``. Engines merge what arrives as they merge any write
  (last-writer-wins by ``Operation.version``, insert-once by id), so after an
  exchange both replicas hold the union, and once the cluster is quiet every
  replica of every partition holds the same state.

``legion cluster repair`` forces exchanges for the partitions ``verify``
finds differing (``/internal/exchange``). Rounds, exchanges and keys repaired
are counted in ``/metrics`` and published as the member attribute
``anti-entropy.repaired`` (shown by ``legion cluster status``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgpack

from legion.engine import Engine
from legion.errors import BadRequest, LegionError
from legion.hash_tree import FANOUT_DEFAULT, SEGMENTS_DEFAULT, HashTree, differing_indexes, differing_keys
from legion.limits import (
    ANTI_ENTROPY_INTERVAL_MS,
    ANTI_ENTROPY_PAIR_PAUSE_MS,
    ANTI_ENTROPY_SEGMENTS_PER_REQUEST,
    ANTI_ENTROPY_SETTLE_MS,
    HANDOFF_BATCH_BYTES_MAX,
    HANDOFF_BATCH_OPS_MAX,
)
from legion.replication import Operation, encode_ops, unpack
from legion.runtime.rounds import Rounds
from legion.runtime.node_view import Liveness, StateView

if TYPE_CHECKING:
    from legion.runtime.log_writer import LogWriter

log = logging.getLogger(__name__)


class Resyncing(Protocol):
    """The partitions a node is re-copying, which anti-entropy leaves alone meanwhile."""

    resyncing: set[int]


class AntiEntropyHost(StateView, Protocol):
    """What anti-entropy uses of its node (``legion.runtime.node_view``)."""

    coordinator: Liveness
    engines: dict[str, Engine]
    handoff: Resyncing
    trees: ReplicaTrees
    writer: LogWriter


Key = tuple[str, int]
T = TypeVar("T")
# Member attributes are replaced per prefix: this one is anti-entropy's alone.
STATUS_PREFIX = "anti-entropy"


class ReplicaTrees:
    """The hash trees of this node's replicas (see the module docstring). Thread-safe where it says so."""

    def __init__(self, engines: Mapping[str, Engine]) -> None:
        self.engines = engines
        self._lock = threading.Lock()  # guards _trees and _dirty between the writer thread and the loop
        self._trees: dict[Key, HashTree] = {}
        # Keys applied since the tree was last brought up to date; present while a tree is kept or built.
        self._dirty: dict[Key, set[bytes]] = {}
        self._uses: dict[Key, asyncio.Lock] = {}

    # --- the writer thread -----------------------------------------------------

    def applied(self, engine: str, batch: Mapping[int, Sequence[Operation]]) -> None:
        """``batch`` was applied to ``engine``: note the keys whose versions may have changed."""
        impl = self.engines[engine]
        touched: dict[int, set[bytes]] = {}
        for partition, ops in batch.items():
            keys: set[bytes] = set()
            for op in ops:
                try:
                    found = impl.digest_keys(op)
                except Exception:  # an engine bug must not fail the write: list the partition again instead
                    log.exception("engine %s: digest_keys failed; its hash trees will be rebuilt", engine)
                    found = None
                if found is None:
                    self.reset_engine(engine)
                    return
                keys.update(found)
            touched[partition] = keys
        with self._lock:
            for partition, keys in touched.items():
                dirty = self._dirty.get((engine, partition))
                if dirty is not None:
                    dirty |= keys

    def reset(self, engine: str, partition: int) -> None:
        """The partition was opened, replayed or dropped: its tree is built again when next needed."""
        with self._lock:
            self._trees.pop((engine, partition), None)
            self._dirty.pop((engine, partition), None)

    def reset_engine(self, engine: str) -> None:
        with self._lock:
            for key in [k for k in self._dirty if k[0] == engine]:
                self._trees.pop(key, None)
                self._dirty.pop(key, None)

    # --- the event loop -----------------------------------------------------

    async def view(self, engine: str, partition: int, look: Callable[[HashTree], T]) -> T:
        """``look(tree)`` on the partition's current tree (built or brought up to date first, off the loop)."""
        key = (engine, partition)
        use = self._uses.setdefault(key, asyncio.Lock())
        async with use:
            tree = await self._current(key)
            return look(tree)

    async def _current(self, key: Key) -> HashTree:
        engine, partition = key
        impl = self.engines[engine]
        with self._lock:
            tree = self._trees.get(key)
            if tree is None:
                self._dirty[key] = set()  # from here on, applies note what they change
        if tree is None:
            tree = await asyncio.to_thread(lambda: HashTree.build(impl.versions(partition)))
            with self._lock:
                if key in self._dirty:  # else reset while we built: use it once, keep nothing
                    self._trees[key] = tree
        with self._lock:
            keys, self._dirty[key] = self._dirty.get(key, set()), set()
        if keys:
            await asyncio.to_thread(_refresh, impl, partition, tree, keys)
        return tree


def _refresh(impl: Engine, partition: int, tree: HashTree, keys: set[bytes]) -> None:
    now = dict(impl.versions(partition, keys))
    for key in keys:
        tree.set(key, now.get(key))


def op_batches(ops: Iterator[Operation]) -> Iterator[list[Operation]]:
    """``ops`` cut into batches bounded by count and bytes, as a fold is (``HANDOFF_BATCH_*``)."""
    batch: list[Operation] = []
    size = 0
    for op in ops:
        batch.append(op)
        size += len(op.body) + len(op.key)
        if len(batch) >= HANDOFF_BATCH_OPS_MAX or size >= HANDOFF_BATCH_BYTES_MAX:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class AntiEntropy(Rounds):
    """The background rounds of one node, and the exchange they (and ``cluster repair``) run."""

    name = "anti-entropy"
    interval_ms = ANTI_ENTROPY_INTERVAL_MS

    def __init__(self, node: AntiEntropyHost) -> None:
        super().__init__()
        self.node = node
        self.rounds = 0
        self.keys_repaired = 0

    async def run_round(self) -> None:
        node = self.node
        me = node.node_id
        pairs = [(p, peer) for p, replicas in enumerate(node.state.placement) if me in replicas for peer in replicas if peer > me]
        for partition, peer in pairs:
            if peer not in node.coordinator.live() or partition in node.handoff.resyncing:
                continue
            if node.node_id not in node.state.placement[partition]:
                continue  # moved away during the round
            for engine in sorted(node.engines):
                try:
                    await self.exchange(engine, partition, peer)
                except LegionError as exc:
                    node.metrics.anti_entropy_exchanges.labels(engine, "failed").inc()
                    log.info("anti-entropy of %s/%d with %s failed: %s", engine, partition, peer, exc)
            await asyncio.sleep(ANTI_ENTROPY_PAIR_PAUSE_MS / 1000)
        self.rounds += 1
        node.metrics.anti_entropy_rounds.inc()
        node.attributes.publish(
            STATUS_PREFIX, {f"{STATUS_PREFIX}.repaired": f"{self.keys_repaired} keys in {self.rounds} rounds"}
        )

    async def exchange(self, engine: str, partition: int, peer: str, *, pull: bool = True) -> int:
        """Compare this replica of ``engine``'s ``partition`` with ``peer``'s and ship what differs both
        ways (only to ``peer`` unless ``pull``).

        Returns how many keys differed (without ``pull``: how many of this replica's keys the peer
        lacked or held in another version, the ones shipped)."""
        node = self.node
        await node.writer.ensure_open(engine, partition)
        mine = await node.trees.view(engine, partition, lambda t: t.bucket_hashes())
        theirs = await self._ask(peer, engine, partition, {"level": "buckets"})
        buckets = differing_indexes(mine, theirs)
        repaired = 0
        if buckets:
            mine_segments = await node.trees.view(engine, partition, lambda t: t.segment_hashes(buckets))
            theirs_segments = dict(await self._ask(peer, engine, partition, {"level": "segments", "buckets": buckets}))
            segments = differing_indexes(mine_segments, theirs_segments)
            step = ANTI_ENTROPY_SEGMENTS_PER_REQUEST
            for chunk in (segments[i : i + step] for i in range(0, len(segments), step)):
                # Without ``pull`` only what this replica holds can be shipped: keys it lacks are left alone.
                keys = await self._differing(peer, engine, partition, chunk, only_mine=not pull)
                if keys:
                    # A write in flight differs for a moment: ship only what still differs a little later.
                    await asyncio.sleep(ANTI_ENTROPY_SETTLE_MS / 1000)
                    keys &= await self._differing(peer, engine, partition, chunk, only_mine=not pull)
                if keys:
                    if pull:
                        await self._pull(peer, engine, partition, sorted(keys))
                    await self._push(peer, engine, partition, sorted(keys))
                    repaired += len(keys)
        outcome = "repaired" if repaired else "same"
        node.metrics.anti_entropy_exchanges.labels(engine, outcome).inc()
        if repaired:
            node.metrics.anti_entropy_keys.labels(engine).inc(repaired)
            self.keys_repaired += repaired
            log.info("anti-entropy repaired %d keys of %s/%d with %s", repaired, engine, partition, peer)
        return repaired

    async def hand_over(self, engine: str, partition: int) -> bool:
        """Ship each owner of ``partition`` what it lacks of this node's copy, which it no longer owns.

        True once every owner took it all, and the copy may be dropped; False while an owner is down
        or a call failed (the copy is kept, to try again). Dropping at the commit would lose what a
        coordinator that had not heard of the move yet counted towards W on this node."""
        node = self.node
        owners = [n for n in node.state.placement[partition] if n != node.node_id]
        if not set(owners) <= set(node.coordinator.live()):
            return False
        # A write this node accepted before it heard of the move may still be on its way to the engine.
        await node.writer.barrier()
        try:
            for owner in owners:
                await self.exchange(engine, partition, owner, pull=False)
        except LegionError as exc:
            log.info("handing %s/%d over to %s failed, will retry: %s", engine, partition, owners, exc)
            return False
        return True

    async def _differing(self, peer: str, engine: str, partition: int, segments: list[int], *, only_mine: bool) -> set[bytes]:
        mine = await self.node.trees.view(engine, partition, lambda t: t.items_in(segments))
        theirs = dict(await self._ask(peer, engine, partition, {"level": "items", "segments": segments}))
        keys = differing_keys(mine, theirs)
        return {key for key in keys if key in mine} if only_mine else keys

    async def _ask(self, peer: str, engine: str, partition: int, question: dict[str, Any]) -> Any:
        body = msgpack.packb({"engine": engine, "partition": partition, **question}, use_bin_type=True)
        raw = await self.node.peers.call("POST", self.node.state.url_of(peer) + "/internal/tree", data=body)
        return unpack(raw, list)

    async def _pull(self, peer: str, engine: str, partition: int, keys: list[bytes]) -> None:
        node = self.node
        body = msgpack.packb({"engine": engine, "partition": partition, "keys": keys}, use_bin_type=True)
        async for ops in node.peers.stream_ops(node.state.url_of(peer) + "/internal/fold-keys", data=body):
            await node.writer.submit(ops)

    async def _push(self, peer: str, engine: str, partition: int, keys: list[bytes]) -> None:
        node = self.node
        impl = node.engines[engine]
        batches = await asyncio.to_thread(lambda: list(op_batches(impl.fold_keys(partition, keys))))
        url = node.state.url_of(peer) + "/internal/apply"
        for batch in batches:
            await node.peers.call("POST", url, data=encode_ops(batch))


async def answer_tree(node: AntiEntropyHost, engine: str, partition: int, question: Mapping[str, Any]) -> list[Any]:
    """This replica's answer to a peer's ``/internal/tree`` question: its bucket hashes, some segments' hashes, or their items."""
    level = question.get("level")
    trees = node.trees
    if level == "buckets":
        return await trees.view(engine, partition, lambda t: t.bucket_hashes())
    if level == "segments":
        buckets = _ints(question.get("buckets"), "buckets", SEGMENTS_DEFAULT // FANOUT_DEFAULT)
        return [[s, h] for s, h in (await trees.view(engine, partition, lambda t: t.segment_hashes(buckets))).items()]
    if level == "items":
        segments = _ints(question.get("segments"), "segments", SEGMENTS_DEFAULT)
        if len(segments) > ANTI_ENTROPY_SEGMENTS_PER_REQUEST:
            raise BadRequest(f"ask for the items of at most {ANTI_ENTROPY_SEGMENTS_PER_REQUEST} segments at once")
        return [[k, v] for k, v in (await trees.view(engine, partition, lambda t: t.items_in(segments))).items()]
    raise BadRequest("field 'level' must be 'buckets', 'segments' or 'items'")


def _ints(value: object, name: str, below: int) -> list[int]:
    if not isinstance(value, list) or not all(type(i) is int and 0 <= i < below for i in value):
        raise BadRequest(f"field {name!r} must be a list of numbers from 0 to {below - 1}")
    return value
