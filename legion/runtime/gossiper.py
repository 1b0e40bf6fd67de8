"""The gossiper: heartbeats, cluster-state dissemination, and claimant duties.

I/O. Every ``GOSSIP_INTERVAL_MS`` the node exchanges a digest (epoch and
committer) with every other member; a successful exchange is a heartbeat.
Whoever holds the newer state sends it whole, so the cluster converges on the
highest epoch within a round or two. Member attributes ride along the same
way, record by record (``legion.attributes``): the first message carries a
digest of versions, the reply the records the sender lacks and the replier's
digest, and a third message the records the replier lacks — so every record
reaches every node within a few rounds, relayed by whoever has it. After each round the claimant — and
only the claimant, after its start-up grace period — turns the failure
detector's verdicts into state changes (``down`` / back up) and commits a
finished rebalance.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from legion import attributes
from legion import cluster_state as cs
from legion.errors import LegionError
from legion.limits import GOSSIP_INTERVAL_MS, HEARTBEAT_INTERVAL_MS
from legion.membership import claimant_step
from legion.runtime.rounds import Rounds

if TYPE_CHECKING:
    from legion.runtime.node import Node

log = logging.getLogger(__name__)


class Gossiper(Rounds):
    """Runs the gossip loop of one node."""

    name = "gossip"
    interval_ms = min(GOSSIP_INTERVAL_MS, HEARTBEAT_INTERVAL_MS)

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node

    def push_soon(self) -> None:
        """Run a round now rather than at the next tick (after a state change)."""
        self.wake()

    async def run_round(self) -> None:
        self.node.metrics.gossip_rounds.inc()
        await self.round()
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
        """Mark members down or back up, and commit a rebalance whose handoffs are done."""
        node = self.node
        if not node.may_claim():
            return
        state = node.state
        committed = claimant_step(state, node.alive(), node.node_id)
        if committed is not state:
            for before, after in zip(state.members, committed.members):
                if before.down != after.down:
                    log.info("marking %s %s", after.id, "down" if after.down else "up")
            node.adopt(committed)
            self.push_soon()
