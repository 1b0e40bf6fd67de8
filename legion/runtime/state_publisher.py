"""The state publisher: the runtime shell of ``legion.consensus`` on one node.

I/O. As a voter it answers ``/internal/start-join``, ``/internal/publish`` and
``/internal/commit``, persisting its record (``Node.set_record``) before it
answers. As the claimant it campaigns for a term when it is not the leader,
then publishes changes one at a time: a change is committed once a majority
of both voter sets persisted it, and only then does ``change`` return (and
the operator hear back). Every decision is a call into ``legion.consensus``;
``legion.testing.sim_node`` is the same shell over the simulated network.

A node that cannot reach a majority of the voters raises ``NoQuorum`` (503):
on the minority side of a split, membership changes wait for the network.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from legion import cluster_state as cs
from legion import consensus as cn
from legion.errors import BadRequest, LegionError, NoQuorum, Unavailable
from legion.limits import HEARTBEAT_INTERVAL_MS, REQUEST_DEADLINE_MS
from legion.runtime.node_view import StateView

if TYPE_CHECKING:
    from legion.runtime.gossiper import Gossiper

log = logging.getLogger(__name__)


class PublisherHost(StateView, Protocol):
    """What the state publisher uses of its node (``legion.runtime.node_view``)."""

    gossiper: Gossiper
    record: cn.Record

    def heard_from(self, node_id: str) -> None: ...

    def set_record(self, record: cn.Record) -> None: ...


# A voter answers at once (after an fsync): silence this long counts as a no.
CONSENSUS_TIMEOUT_MS = HEARTBEAT_INTERVAL_MS * 4
# How long a change waits for the publication before it (one at a time) to finish.
PUBLISH_WAIT_MS_MAX = REQUEST_DEADLINE_MS // 2

Change = Callable[[cs.ClusterState], cs.ClusterState]


class StatePublisher:
    """Campaigns, publishes and commits for one node, and answers other nodes' campaigns and publications."""

    def __init__(self, node: PublisherHost) -> None:
        self.node = node
        self.leader_term: int | None = None
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()

    def is_leader(self) -> bool:
        return self.leader_term is not None and self.leader_term == self.node.record.current_term

    # --- as the claimant -------------------------------------------------------

    async def change(self, change: Change) -> cs.ClusterState:
        """Commit ``change`` applied to the last committed state (as leader, campaigning first if
        needed) and return the committed state; the state itself when ``change`` changes nothing."""
        try:
            await asyncio.wait_for(self._lock.acquire(), PUBLISH_WAIT_MS_MAX / 1000)
        except asyncio.TimeoutError:
            raise Unavailable(f"{self.node.node_id} is still deciding an earlier change; retry shortly") from None
        try:
            if not self.is_leader():
                await self._campaign()
            node = self.node
            committed = node.state
            proposal = cn.propose(committed, change(committed), node.record.current_term, node.node_id)
            if proposal is not None:
                await self._publish(proposal)
            return node.state
        finally:
            self._lock.release()

    async def _campaign(self) -> None:
        node = self.node
        term = node.record.current_term + 1
        record, vote = cn.start_join(node.record, term, node.node_id)
        assert vote is not None
        node.set_record(record)
        votes, asked = {node.node_id: vote}, {node.node_id}
        while node.record.current_term == term:
            wanted = cn.still_to_ask(votes, asked)
            if not wanted:
                break
            asked.update(wanted)
            known = [v.accepted for v in votes.values() if v.accepted is not None]
            replies = await asyncio.gather(*(self._ask_to_join(peer, term, known) for peer in wanted))
            votes.update({v.voter: v for v in replies if v is not None})
        adopted = cn.elected(votes) if node.record.current_term == term else None
        if adopted is None:
            log.info(
                "node %s lost term %d (now in %d): votes %s",
                node.node_id, term, node.record.current_term,
                {v: (cn.version(vote.accepted), vote.committed) for v, vote in votes.items()},
            )
            raise NoQuorum(
                f"node {node.node_id} cannot reach a majority of the voters (it reached {sorted(votes)}): "
                "membership changes wait until a majority can be reached, e.g. until a network split heals. "
                "Retrying is safe: add-node and remove-node are idempotent"
            )
        self.leader_term = term
        log.info("node %s leads term %d", node.node_id, term)
        await self._publish(cn.republish(adopted, term, node.node_id))

    async def _ask_to_join(self, peer: str, term: int, known: list[cs.ClusterState]) -> cn.Vote | None:
        url = self._url_of(peer, known)
        if url is None:
            return None
        try:
            raw = await self.node.peers.call(
                "POST", url + "/internal/start-join", json_body={"node_id": self.node.node_id, "term": term},
                timeout_ms=CONSENSUS_TIMEOUT_MS,
            )
            self.node.heard_from(peer)
            return cn.vote_from_reply(peer, term, json.loads(raw))
        except (LegionError, ValueError, TypeError, KeyError, IndexError) as exc:
            log.debug("start-join to %s failed: %s", peer, exc)
            return None

    def _url_of(self, peer: str, states: list[cs.ClusterState]) -> str | None:
        for state in [self.node.state, *states]:
            if state is not None and state.has_member(peer):
                return state.url_of(peer)
        return None

    async def _publish(self, state: cs.ClusterState) -> None:
        """Have a majority of both voter sets persist ``state``, then commit it; else step down."""
        node = self.node
        record = cn.accept(node.record, state)
        if record is None:
            self.leader_term = None
            raise NoQuorum(f"node {node.node_id} is no longer the leader of term {state.term}; retry shortly")
        node.set_record(record)
        peers = [p for p in cn.electorate(state) if p != node.node_id]
        acks = {node.node_id}
        sends = [asyncio.ensure_future(self._send_publish(peer, state)) for peer in peers]
        for done in asyncio.as_completed(sends):
            peer, accepted = await done
            if accepted:
                acks.add(peer)
            if cn.is_quorum(acks, state):
                break  # the rest finish in the background; the commit message follows them
        for send in sends:
            self._keep(send)
        if node.record.current_term != state.term or not cn.is_quorum(acks, state):
            self.leader_term = None
            raise NoQuorum(
                f"node {node.node_id} could not commit epoch {state.epoch}: only {sorted(acks)} of the voters "
                f"{list(state.voters)} (before: {list(state.previous_voters)}) accepted it. Membership changes need "
                "a majority of the voters; retrying is safe (add-node and remove-node are idempotent)"
            )
        node.set_record(cn.learn_commit(node.record, state))
        for peer in peers:
            self._keep(asyncio.ensure_future(self._send_commit(peer, state)))
        node.gossiper.push_soon()

    async def _send_publish(self, peer: str, state: cs.ClusterState) -> tuple[str, bool]:
        url = self._url_of(peer, [state])
        if url is None:
            return peer, False
        try:
            raw = await self.node.peers.call(
                "POST", url + "/internal/publish",
                json_body={"node_id": self.node.node_id, "state": cs.to_dict(state)},
                timeout_ms=CONSENSUS_TIMEOUT_MS,
            )
            self.node.heard_from(peer)
            return peer, bool(json.loads(raw).get("accepted"))
        except (LegionError, ValueError) as exc:
            log.debug("publish to %s failed: %s", peer, exc)
            return peer, False

    async def _send_commit(self, peer: str, state: cs.ClusterState) -> None:
        url = self._url_of(peer, [state])
        if url is None:
            return
        body = {"node_id": self.node.node_id, "term": state.term, "epoch": state.epoch}
        try:
            await self.node.peers.call("POST", url + "/internal/commit", json_body=body, timeout_ms=CONSENSUS_TIMEOUT_MS)
        except LegionError as exc:
            log.debug("commit to %s failed: %s", peer, exc)  # gossip brings it the committed state anyway

    def _keep(self, task: asyncio.Future[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # --- as a voter --------------------------------------------------------------

    def on_start_join(self, body: dict[str, Any]) -> dict[str, Any]:
        """Join a higher term for good and vote with the accepted state (persisted first), or refuse."""
        node = self.node
        term = _int(body, "term")
        record, vote = cn.start_join(node.record, term, node.node_id)
        node.set_record(record)
        return cn.vote_reply(record, vote)

    def on_publish(self, body: dict[str, Any]) -> dict[str, Any]:
        """Accept a published state (persisted before the answer), or refuse it."""
        node = self.node
        state = cs.from_dict(body.get("state"))
        if node.state is not None and state.cluster_id != node.state.cluster_id:
            raise BadRequest(f"cluster id mismatch: {state.cluster_id} vs {node.state.cluster_id}")
        record = cn.accept(node.record, state)
        if record is None:
            return {"accepted": False, "term": node.record.current_term}
        node.set_record(record)
        return {"accepted": True, "term": record.current_term}

    def on_commit(self, body: dict[str, Any]) -> dict[str, Any]:
        node = self.node
        node.set_record(cn.commit_accepted(node.record, _int(body, "term"), _int(body, "epoch")))
        return {}


def _int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"{name} must be a non-negative integer, got {value!r}")
    return value
