"""The etcd register: the runtime shell of ``legion.etcd_metadata`` on one node.

I/O (aiohttp, to etcd's v3 JSON gateway). In a cluster started with
``--metadata etcd://HOST:PORT[/PREFIX]`` it stands where the state publisher
stands otherwise, with the same ``change``: read the state and its revision
from etcd, apply the change, compare-and-swap it in, and on a lost swap (a
change through another node came first) apply the change to the value that
won and try again — a bounded number of times, within a deadline. The answer
comes only after etcd took the swap; the node then adopts the new state and
gossips it. Any node may decide a change itself: etcd orders them.

If etcd cannot be reached (or has no quorum of its own, so it does not
answer), a change fails with ``NoQuorum`` (503) naming etcd, and retrying is
safe; data reads and writes never touch etcd. Besides gossip, the register
polls etcd every ``ETCD_POLL_INTERVAL_MS`` for a state newer than the last it
saw (an empty answer when nothing changed): gossip spreads a new state within
a round, and the poll covers a node whose change committed in etcd just
before it died, before it gossiped. A poll is simpler than a watch stream to
keep right across etcd restarts and pauses, and costs one small request per
node per round.

It takes no part in the voters' protocol: a consensus message (a peer started
without ``--metadata``) is refused with 409.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from legion import cluster_state as cs
from legion import etcd_metadata as em
from legion.errors import ConfigError, Conflict, LegionError, NoQuorum, Unavailable
from legion.limits import (
    ETCD_CHANGE_DEADLINE_MS,
    ETCD_POLL_INTERVAL_MS,
    ETCD_REQUEST_TIMEOUT_MS,
    ETCD_SWAP_ATTEMPTS_MAX,
)
from legion.runtime.node_view import StateView
from legion.runtime.rounds import Rounds

if TYPE_CHECKING:
    from legion.runtime.gossiper import Gossiper

log = logging.getLogger(__name__)

Change = Callable[[cs.ClusterState], cs.ClusterState]


class RegisterHost(StateView, Protocol):
    """What the etcd register uses of its node (``legion.runtime.node_view``)."""

    gossiper: Gossiper

    def adopt(self, state: cs.ClusterState) -> bool: ...


class EtcdRegister(Rounds):
    """Decides this node's cluster-state changes by compare-and-swap on one etcd key, and polls it."""

    name = "etcd-poll"
    interval_ms = ETCD_POLL_INTERVAL_MS

    def __init__(self, node: RegisterHost, target: em.EtcdTarget) -> None:
        super().__init__()
        self.node = node
        self.target = target
        self.seen_revision = 0
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._unreachable_logged = False

    async def open(self) -> None:
        """Make the HTTP session (on the running loop); before anything else."""
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=ETCD_REQUEST_TIMEOUT_MS / 1000)
            self._session = aiohttp.ClientSession(timeout=timeout, raise_for_status=False)

    async def stop(self) -> None:
        await super().stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- start-up ------------------------------------------------------------------

    async def found(self, state: cs.ClusterState) -> None:
        """Create the cluster with ``state`` if etcd holds none yet. If it holds one this node is a
        member of (it founded it and lost its data directory's record), adopt that; else ConfigError."""
        swapped, revision, current = em.swap_outcome(
            await self._call("kv/txn", em.swap_request(self.target, None, state)), self.target
        )
        if swapped:
            assert revision is not None
            self._learn(em.Read(state, revision))
            log.info("founded cluster %s in %s", state.cluster_id, self.target.describe())
            return
        if current is not None and current.state.has_member(self.node.node_id):
            if current.state.member(self.node.node_id).status != cs.REMOVED:
                self._learn(current)
                return
        held = "a cluster state" if current is None else f"cluster {current.state.cluster_id}"
        raise ConfigError(
            f"{self.target.describe()} already holds {held}: to add this node to it, start it with "
            "--join URL-of-a-member and the cluster's --token-file; for a new cluster, give it a prefix "
            "of its own (etcd://HOST:PORT/PREFIX)"
        )

    async def catch_up(self) -> None:
        """On a restart: take the newest state from etcd. If etcd does not answer, start from the data
        directory's (committed) state and take etcd's once a poll reaches it; ConfigError if etcd holds
        no state or another cluster's."""
        try:
            read = await self._read()
        except NoQuorum as exc:
            log.warning("starting from the data directory's state (epoch %d): %s", self.node.state.epoch, exc.message)
            return
        if read is None:
            raise ConfigError(
                f"{self.target.describe()} holds no cluster state, but this node belongs to cluster "
                f"{self.node.state.cluster_id} (epoch {self.node.state.epoch}): is the prefix right, or was "
                "etcd's data lost? Restore it, or start this node with a fresh data directory"
            )
        try:
            em.check_read(self.node.state, read.state, self.target)
        except Conflict as exc:
            raise ConfigError(exc.message) from None
        self._learn(read)
        log.info("loaded the cluster state from %s: epoch %d", self.target.describe(), read.state.epoch)

    # --- changes ---------------------------------------------------------------------

    async def change(self, change: Change) -> cs.ClusterState:
        """Commit ``change`` applied to the state in etcd and return the committed state (the state
        itself when ``change`` changes nothing). ``NoQuorum`` if etcd does not answer."""
        try:
            async with asyncio.timeout(ETCD_CHANGE_DEADLINE_MS / 1000):
                async with self._lock:  # this node's changes one at a time: they would only lose to each other
                    return await self._swap_until_done(change)
        except TimeoutError:
            raise NoQuorum(
                f"{self.target.describe()} did not take the change within {ETCD_CHANGE_DEADLINE_MS} ms "
                "(it may still have, if its answer was lost): retrying is safe, add-node and remove-node "
                "are idempotent"
            ) from None

    async def _swap_until_done(self, change: Change) -> cs.ClusterState:
        read = await self._read()
        for _attempt in range(ETCD_SWAP_ATTEMPTS_MAX):
            if read is None:
                raise Conflict(f"{self.target.describe()} holds no cluster state any more (was the key deleted?)")
            em.check_read(self.node.state, read.state, self.target)
            proposal = em.next_state(read.state, change(read.state), self.node.node_id)
            if proposal is None:
                self._learn(read)
                return read.state
            swapped, revision, current = em.swap_outcome(
                await self._call("kv/txn", em.swap_request(self.target, read, proposal)), self.target
            )
            if swapped:
                assert revision is not None
                self._learn(em.Read(proposal, revision))
                self.node.gossiper.push_soon()
                return proposal
            self.node.metrics.etcd_swaps_lost.inc()
            log.debug("lost a compare-and-swap at revision %d; trying again", read.mod_revision)
            read = current
        raise Unavailable(
            f"{ETCD_SWAP_ATTEMPTS_MAX} compare-and-swaps in a row on {self.target.describe()} lost to other "
            "nodes' changes: retry shortly (add-node and remove-node are idempotent)"
        )

    async def _read(self, *, newer_than: int = 0) -> em.Read | None:
        reply = await self._call("kv/range", em.range_request(self.target, newer_than=newer_than))
        return em.read_from_range(reply, self.target)

    def _learn(self, read: em.Read) -> None:
        self.seen_revision = max(self.seen_revision, read.mod_revision)
        self.node.adopt(read.state)

    async def _call(self, path: str, body: dict[str, Any]) -> Any:
        assert self._session is not None, "open() first"
        try:
            async with self._session.post(f"{self.target.gateway}/v3/{path}", json=body) as response:
                raw = await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            why = str(exc) or type(exc).__name__
            if path == "kv/txn":
                why += "; a compare-and-swap it received may still take effect"
            raise NoQuorum(self._unreachable(why)) from None
        if response.status != 200:
            # etcd without a quorum of its own answers 503 ("etcdserver: request timed out", "no leader").
            raise NoQuorum(self._unreachable(f"HTTP {response.status}: {raw[:200].decode('utf-8', 'replace')}"))
        try:
            return json.loads(raw)
        except ValueError:
            raise NoQuorum(self._unreachable(f"an answer that is not JSON: {raw[:200]!r}")) from None

    def _unreachable(self, why: str) -> str:
        return (
            f"{self.target.describe()} could not be reached ({why}): the cluster state lives there, so "
            "membership changes wait until etcd answers (data reads and writes go on). Retrying is safe: "
            "add-node and remove-node are idempotent"
        )

    # --- polling ---------------------------------------------------------------------

    async def run_round(self) -> None:
        try:
            read = await self._read(newer_than=self.seen_revision)
        except NoQuorum as exc:
            if not self._unreachable_logged:
                log.warning("%s", exc.message)
                self._unreachable_logged = True
            return
        except LegionError as exc:
            log.error("polling %s: %s", self.target.describe(), exc.message)
            return
        if self._unreachable_logged:
            log.info("%s answers again", self.target.describe())
            self._unreachable_logged = False
        if read is not None:
            try:
                em.check_read(self.node.state, read.state, self.target)
                self._learn(read)
            except Conflict as exc:
                log.error("%s", exc.message)

    # --- the voters' protocol: not in this mode ----------------------------------------

    def _refuse(self) -> dict[str, Any]:
        raise Conflict(
            f"node {self.node.node_id} keeps the cluster state in {self.target.describe()} and takes no part in "
            "the voters' protocol: every node of a cluster must be started with the same --metadata"
        )

    def on_start_join(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._refuse()

    def on_publish(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._refuse()

    def on_commit(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._refuse()
