"""The gossiper: heartbeats, cluster-state dissemination, and claimant duties.

I/O. Every ``GOSSIP_INTERVAL_MS`` the node exchanges a digest (epoch and
committer) with every other member; a successful exchange is a heartbeat.
Whoever holds the newer state sends it whole, so the cluster converges on the
highest epoch within a round or two. Member attributes ride along the same
way, record by record (``legion.attributes``): the first message carries a
digest of versions, the reply the records the sender lacks and the replier's
digest, and a third message the records the replier lacks — so every record
reaches every node within a few rounds, relayed by whoever has it. Gossip
carries committed states only (``legion.consensus``). After each round the
claimant — and only the claimant, after its start-up grace period — turns
the failure detector's verdicts into state changes (``down`` / back up),
commits a finished rebalance and moves the voters towards the up members,
through the state publisher (campaigning first if it is not the leader), or
the etcd register with ``--metadata etcd://``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol

from legion import attributes
from legion import cluster_state as cs
from legion import consensus as cn
from legion.errors import LegionError
from legion.limits import GOSSIP_INTERVAL_MS, HEARTBEAT_INTERVAL_MS
from legion.membership import claimant_changes
from legion.runtime.rounds import Rounds
from legion.runtime.node_view import StateRegister, StateView

log = logging.getLogger(__name__)


class GossiperHost(StateView, Protocol):
    """What the gossiper uses of its node (``legion.runtime.node_view``)."""

    publisher: StateRegister

    def adopt(self, state: cs.ClusterState) -> bool: ...

    def alive(self) -> set[str]: ...

    def claimant(self) -> str | None: ...

    def heard_from(self, node_id: str) -> None: ...

    def in_grace(self) -> bool: ...

    def note_reachability(self) -> None: ...

    def take_attributes(self, raw: Any) -> None: ...



class Gossiper(Rounds):
    """Runs the gossip loop of one node."""

    name = "gossip"
    interval_ms = min(GOSSIP_INTERVAL_MS, HEARTBEAT_INTERVAL_MS)

    def __init__(self, node: GossiperHost) -> None:
        super().__init__()
        self.node = node
        self._deciding: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        await super().stop()
        if self._deciding is not None:
            self._deciding.cancel()
            await asyncio.gather(self._deciding, return_exceptions=True)

    def push_soon(self) -> None:
        """Run a round now rather than at the next tick (after a state change)."""
        self.wake()

    async def run_round(self) -> None:
        self.node.metrics.gossip_rounds.inc()
        await self.round()
        self.node.note_reachability()
        self.claimant_duties()

    async def round(self) -> None:
        state = self.node.state
        peers = [m for m in state.members if m.id != self.node.node_id and m.status != cs.REMOVED]
        await asyncio.gather(*(self._exchange(m.id, m.url) for m in peers))

    async def _exchange(self, peer_id: str, url: str) -> None:
        """One push-pull exchange: digests first; whichever side is newer sends its state whole."""
        mine = cs.digest(self.node.state)
        message: dict[str, Any] = {"node_id": self.node.node_id, "epoch": mine[0], "committed_by": mine[1]}
        first = {**message, "attributes_digest": self.node.attributes.digest()}
        try:
            reply = json.loads(
                await self.node.peers.call("POST", url + "/internal/gossip", json_body=first, timeout_ms=HEARTBEAT_INTERVAL_MS * 2)
            )
            self.node.heard_from(peer_id)
            if reply.get("state") is not None:
                self.node.adopt(cs.from_dict(reply["state"]))
            self.node.take_attributes(reply.get("attributes"))
            push: dict[str, Any] = {}
            theirs = (int(reply.get("epoch", 0)), str(reply.get("committed_by", "")))
            if cs.digest_newer(cs.digest(self.node.state), theirs):
                push["state"] = cs.to_dict(self.node.state)
            lacking = self.node.attributes.newer_than(attributes.digest_from_wire(reply.get("attributes_digest")))
            if lacking:
                push["attributes"] = attributes.to_wire(lacking)
            if push:
                await self.node.peers.call(
                    "POST", url + "/internal/gossip", json_body={**message, **push}, timeout_ms=HEARTBEAT_INTERVAL_MS * 2
                )
        except LegionError as exc:
            log.debug("gossip with %s failed: %s", peer_id, exc)
        except (ValueError, TypeError) as exc:
            log.warning("gossip reply from %s was malformed: %s", peer_id, exc)

    def claimant_duties(self) -> None:
        """Mark members down or back up, commit a rebalance whose handoffs are done, move the voters."""
        node = self.node
        if self._deciding is not None or node.in_grace() or node.claimant() != node.node_id:
            return
        state = node.state
        if cn.propose(state, claimant_changes(state, node.alive()), state.term, node.node_id) is None:
            return
        self._deciding = asyncio.ensure_future(self._decide())

    async def _decide(self) -> None:
        node = self.node
        before = node.state
        try:
            after = await node.publisher.change(lambda s: claimant_changes(s, node.alive()))
            for old, new in zip(before.members, after.members):
                if old.id == new.id and old.down != new.down:
                    log.info("marked %s %s", new.id, "down" if new.down else "up")
            # Voters move by one member per commit: decide the next step now, not a tick later.
            self.push_soon()
        except LegionError as exc:
            log.info("claimant %s could not decide: %s", node.node_id, exc)
        finally:
            self._deciding = None
