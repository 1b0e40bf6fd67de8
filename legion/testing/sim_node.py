"""A simulated Legion node: the runtime's shell over the simulated network and disk.

Pure (runs on ``legion.testing.sim_kernel``). ``SimNode`` keeps what a real
node keeps and runs what it runs; every decision is a call into the pure core
(through its modules, so a test that patches the core patches the simulation
too): ``legion.consensus`` for elections, publications and commits,
``legion.membership`` for liveness and the claimant hint, ``legion.cluster_state``
for the changes themselves. The simulator replaces only the clock, the network
and the disk:

- the consensus record (``legion.consensus.Record``) lives in memory and on a
  simulated disk; ``set_record`` persists it before anything that depends on
  it is sent, and a crash restores the record from the disk;
- the believed cluster state is the record's committed state: gossip carries
  only committed states, and copies are dropped only against them;
- the lowest-id live voter is the claimant (a hint: it campaigns when it needs
  to decide something and is not the leader of the newest term it knows);
  other nodes forward changes to it;
- the handoff loop pulls gained slots and reports them ready, as
  ``legion.runtime.handoff_receiver`` does.

Data is modelled, not stored: ``data`` is the set of partitions this node holds
a full copy of. A fold answers whether the source holds a copy; a pull of an
empty partition "succeeds" exactly as the runtime's would, and the checkers
notice. Not modelled: client reads and writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from legion import cluster_state as cs
from legion import consensus as cn
from legion import membership, routing
from legion.errors import ConfigError, LegionError, NoQuorum, NotOwner, Unavailable
from legion.limits import (
    FAILURE_TIMEOUT_MS,
    GOSSIP_INTERVAL_MS,
    HANDOFF_RETRY_INTERVAL_MS,
    HEARTBEAT_INTERVAL_MS,
    REQUEST_DEADLINE_MS,
)
from legion.testing.sim_kernel import Call, Endpoint, Gather, Sleep

if TYPE_CHECKING:
    from legion.testing.sim import Simulation

# Mirrors of legion.runtime.node.JOIN_ATTEMPTS_MAX / JOIN_RETRY_INTERVAL_S
# (copied, not imported: the simulator must not load the I/O shell).
JOIN_ATTEMPTS_MAX = 150
JOIN_RETRY_INTERVAL_MS = 200
GOSSIP_TIMEOUT_MS = HEARTBEAT_INTERVAL_MS * 2
# A voter answers a start-join or a publication at once (after an fsync); silence this long is a no
# (five simulated round trips: the leader waits for every answer, not just a majority's).
CONSENSUS_TIMEOUT_MS = 250
# How long a change waits for the publication before it (one at a time) to finish.
PUBLISH_WAIT_MS_MAX = REQUEST_DEADLINE_MS // 2
PUBLISH_WAIT_STEP_MS = 10
# The runtime streams a fold with a 1 s connect and 30 s read timeout; a
# simulated fold is one message, so one deadline stands for both.
FOLD_TIMEOUT_MS = REQUEST_DEADLINE_MS
CLUSTER_ID = "c-sim"

Change = Callable[[cs.ClusterState], cs.ClusterState]


class Forward(Exception):
    """Raised by ``SimNode.change_state`` on a non-claimant, as ``node._Forward`` is: forward to ``target``."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target


class Crashed(LegionError):
    """Unwinds the process of a node that ``Simulation.crash_points`` crashed mid-step."""


class SimNode(Endpoint):
    """One node: its persisted record and data, its in-memory view of peers, and its loops."""

    def __init__(self, sim: Simulation, node_id: str, seed_id: str | None) -> None:
        super().__init__(node_id)
        self.sim = sim
        self.url = f"http://sim-{node_id}:7400"
        self.seed_id = seed_id  # None for the node that founds the cluster
        # Persisted: kept across crashes, like the node database.
        self.disk = cn.Record()
        self.data: set[int] = set()
        # In memory: lost on a crash (the record is restored from the disk).
        self.record = cn.Record()
        self._reconciled_with: cs.ClusterState | None = None
        self._held: set[int] = set()
        self.leader_term: int | None = None
        self.publishing = False
        self.deciding = False
        self.last_heard_ms: dict[str, int] = {}
        self.started_ms = 0
        self.grace_until_ms = 0
        self.serving = False  # the gossip and handoff loops run
        self.pulled: set[int] = set()
        self.pulled_for: object = None
        self.resyncing: set[int] = set()
        self.was_down = False
        self.running = False

    # --- the record and the believed state -------------------------------------

    @property
    def now_ms(self) -> int:
        return self.sim.kernel.now_ms

    @property
    def state(self) -> cs.ClusterState | None:
        """The state this node believes: the newest it knows committed."""
        return self.record.committed

    def persist(self) -> None:
        """Write the record to the disk (an fsync in the runtime)."""
        self.disk = self.record

    def set_record(self, record: cn.Record, *, decided: bool = False) -> None:
        """Take ``record``, persist it, and act on a newly committed state (``decided``: as its leader)."""
        before = self.record
        if record == before:
            return
        self.record = record
        self.persist()
        self.sim.recorded(self, before, record)
        if record.committed is not None and record.committed is not before.committed:
            self._believe(before.committed, record.committed, decided)

    def _believe(self, before: cs.ClusterState | None, after: cs.ClusterState, decided: bool) -> None:
        self._note_own_liveness(after)
        self.sim.adopted(self, before, after, decided)
        self.sim.kernel.wake(self, "handoff")

    def adopt(self, state: cs.ClusterState) -> bool:
        """Take ``state``, known committed (gossip, a join answer), if it is newer than ours. True if adopted."""
        record = cn.learn_commit(self.record, state)
        if record.committed is self.record.committed:
            return False
        self.set_record(record)
        return True

    def _note_own_liveness(self, state: cs.ClusterState) -> None:
        """Once the cluster has thought this node down, it may have skipped it: re-sync when back up."""
        if not state.has_member(self.id):
            return
        if state.member(self.id).down:
            self.was_down = True
        elif self.was_down:
            self.was_down = False
            self.resync_all()  # as in the runtime, of the state being replaced

    def alive(self) -> set[str]:
        assert self.state is not None
        return membership.alive_ids(self.state, self.id, self.last_heard_ms, self.now_ms)

    def claimant(self) -> str | None:
        assert self.state is not None
        return membership.claimant(self.state, self.alive())

    def heard_from(self, node_id: str) -> None:
        self.last_heard_ms[node_id] = self.now_ms

    def crash_point(self, point: str) -> None:
        """Crash here if the scenario asked for it (``Simulation.crash_points``): kill -9 mid-step."""
        if (self.id, point) in self.sim.crash_points:
            self.sim.crash_points.discard((self.id, point))
            self.sim.crash(self.id)
            raise Crashed(f"{self.id} crashed at {point}")

    def is_leader(self) -> bool:
        return self.leader_term is not None and self.leader_term == self.record.current_term

    def reconcile(self) -> None:
        """Drop the copies of partitions this node no longer holds or gains."""
        state = self._state()
        if state is self._reconciled_with and self.data <= self._held:
            return  # nothing changed since the last round (a speed-up of the simulator alone)
        held = self._held = set(cs.partitions_held(state, self.id))
        self._reconciled_with = state
        for p in sorted(self.data - held):
            self.sim.dropping(self, p)
            self.data.discard(p)

    def _state(self) -> cs.ClusterState:
        # Unreachable from a handler (``handler`` refuses requests until the
        # node has a state) or a loop (they start after it has one).
        if self.state is None:
            raise LegionError(f"{self.id} has no cluster state yet")
        return self.state

    # --- consensus: deciding a change as the leader ------------------------------

    def change_state(self, change: Change) -> Any:
        """Decide ``change`` as the leader and return the committed state; ``Forward`` if another
        node is the claimant, ``NoQuorum`` if no majority of the voters can be reached."""
        target = self.claimant()
        if target is None:
            raise Unavailable("no live voter can decide cluster changes right now; retry shortly")
        if target != self.id:
            raise Forward(target)
        waited_ms = 0
        while self.publishing:  # one publication at a time, each built on the last committed state
            if waited_ms >= PUBLISH_WAIT_MS_MAX:
                raise Unavailable(f"{self.id} is still deciding an earlier change; retry shortly")
            yield Sleep(PUBLISH_WAIT_STEP_MS)
            waited_ms += PUBLISH_WAIT_STEP_MS
        self.publishing = True
        try:
            if not self.is_leader():
                yield from self.campaign()
            committed = self._state()
            proposal = cn.propose(committed, change(committed), self.record.current_term, self.id)
            if proposal is not None:
                yield from self.publish(proposal)
        finally:
            self.publishing = False
        self.crash_point("replying")
        return self._state()

    def campaign(self) -> Any:
        """Ask the voters to join a higher term; lead it with a majority of both voter sets of
        the newest accepted state among the votes, and publish that state again under it."""
        term = self.record.current_term + 1
        record, vote = cn.start_join(self.record, term, self.id)
        assert vote is not None
        self.set_record(record)
        self.sim.log(f"{self.id} campaigns for term {term}")
        votes, asked = {self.id: vote}, {self.id}
        while True:
            wanted = cn.still_to_ask(votes, asked)
            if not wanted:
                break
            asked.update(wanted)
            replies = yield Gather(tuple(self.ask_to_join(peer, term) for peer in wanted))
            votes.update({v.voter: v for v in replies if v is not None})
            if self.record.current_term != term:
                break
        adopted = cn.elected(votes) if self.record.current_term == term else None
        if adopted is None:
            raise NoQuorum(
                f"{self.id} could not win term {term}: it reached {sorted(votes)}, no majority of the voters; "
                "membership changes wait for a majority (retry once the network heals)"
            )
        self.leader_term = term
        self.sim.elected(self, term, adopted)
        yield from self.publish(cn.republish(adopted, term, self.id))

    def ask_to_join(self, peer: str, term: int) -> Any:
        try:
            reply = yield Call(peer, "start-join", {"node_id": self.id, "term": term}, CONSENSUS_TIMEOUT_MS)
        except LegionError:
            return None
        self.heard_from(peer)
        return cn.vote_from_reply(peer, term, reply)

    def publish(self, state: cs.ClusterState) -> Any:
        """Have a majority of both voter sets persist ``state``, then commit it; else step down."""
        started_ms = self.now_ms
        record = cn.accept(self.record, state)
        if record is None:
            self.leader_term = None
            raise NoQuorum(f"{self.id} is no longer the leader of term {state.term}; retry shortly")
        self.set_record(record)
        self.sim.published(self, state)
        peers = [p for p in cn.electorate(state) if p != self.id]
        replies = yield Gather(tuple(self.send_publish(peer, state) for peer in peers))
        acks = {self.id, *(peer for peer, ok in zip(peers, replies) if ok)}
        if self.record.current_term != state.term or not cn.is_quorum(acks, state):
            self.leader_term = None
            raise NoQuorum(
                f"{self.id} could not commit epoch {state.epoch}: only {sorted(acks)} of the voters "
                f"{list(state.voters)} (before: {list(state.previous_voters)}) accepted it; retry shortly"
            )
        self.crash_point("quorum")
        self.sim.committing(self, state, acks, started_ms)
        self.set_record(cn.learn_commit(self.record, state), decided=True)
        self.crash_point("committed")
        for peer in peers:
            self.sim.kernel.spawn(self, self.send_commit(peer, state))
        self.sim.kernel.wake(self, "gossip")

    def send_publish(self, peer: str, state: cs.ClusterState) -> Any:
        try:
            reply = yield Call(peer, "publish", {"node_id": self.id, "state": cs.to_dict(state)}, CONSENSUS_TIMEOUT_MS)
        except LegionError:
            return False
        self.heard_from(peer)
        return bool(reply.get("accepted"))

    def send_commit(self, peer: str, state: cs.ClusterState) -> Any:
        body = {"node_id": self.id, "term": state.term, "epoch": state.epoch}
        try:
            yield Call(peer, "commit", body, CONSENSUS_TIMEOUT_MS)
        except LegionError:
            pass

    # --- lifecycle -------------------------------------------------------------

    def forget(self) -> None:
        """The process died: what lives only in memory is lost; the record and the data are on disk."""
        self.record = self.disk
        self.leader_term = None
        self.publishing = self.deciding = False
        self.last_heard_ms = {}
        self.serving = False
        self.pulled, self.pulled_for = set(), None
        self.resyncing, self.was_down = set(), False

    def boot(self) -> Any:
        """Node.start: found or join the cluster, then start the loops."""
        self.started_ms = self.now_ms
        self.forget()
        restarted = self.state is not None
        # Its persisted state may be stale: hear the cluster before deciding anything for it.
        self.grace_until_ms = self.started_ms + (FAILURE_TIMEOUT_MS if restarted else 0)
        if self.state is None:
            if self.seed_id is None:
                state = cs.new_cluster(CLUSTER_ID, self.id, self.url, self.sim.partitions, self.sim.replicas)
                # The founder is the whole placement when the partitions are created.
                self.data = {p for p, nodes in enumerate(state.placement) if self.id in nodes}
                self.set_record(cn.founding_record(state))
            else:
                yield from self.join()
                self.sim.joined(self)
        assert self.state is not None
        for member in self.state.members:
            self.last_heard_ms.setdefault(member.id, self.started_ms)
        self.reconcile()
        if restarted:
            self.resync_all()
        self.serving = True
        self.sim.kernel.spawn(self, self.gossip_loop())
        self.sim.kernel.spawn(self, self.handoff_loop())

    def join(self) -> Any:
        """Node._join: ask the seed (which forwards to the claimant) to admit us; adopt the answer."""
        assert self.seed_id is not None
        last_error: LegionError | None = None
        for _attempt in range(JOIN_ATTEMPTS_MAX):
            if self.state is not None:
                return  # the claimant's answer was lost, but gossip brought the state
            try:
                reply = yield Call(self.seed_id, "join", {"node_id": self.id, "url": self.url}, REQUEST_DEADLINE_MS)
                self.adopt(cs.from_dict(reply["state"]))
                return
            except LegionError as exc:
                if not isinstance(exc, Unavailable) and exc.http_status < 500:
                    raise
                last_error = exc
                yield Sleep(JOIN_RETRY_INTERVAL_MS)
        raise ConfigError(f"could not join through {self.seed_id}: {last_error}")

    # --- Gossiper ------------------------------------------------------------

    def gossip_loop(self) -> Any:
        interval_ms = min(GOSSIP_INTERVAL_MS, HEARTBEAT_INTERVAL_MS)
        while True:
            state = self._state()
            peers = [m.id for m in state.members if m.id != self.id and m.status != cs.REMOVED]
            yield Gather(tuple(self.exchange(peer) for peer in peers))
            self.claimant_duties()
            yield Sleep(interval_ms, wake="gossip")
            self.flags.discard("gossip")

    def exchange(self, peer: str) -> Any:
        """Gossiper._exchange: digests first; whichever side is newer sends its state whole."""
        mine = cs.digest(self.state)
        message = {"node_id": self.id, "epoch": mine[0], "committed_by": mine[1]}
        try:
            reply = yield Call(peer, "gossip", message, GOSSIP_TIMEOUT_MS)
            self.heard_from(peer)
            if reply.get("state") is not None:
                self.adopt(cs.from_dict(reply["state"]))
            theirs = (int(reply.get("epoch", 0)), str(reply.get("committed_by", "")))
            if cs.digest_newer(cs.digest(self.state), theirs):
                body = {**message, "state": cs.to_dict(self._state())}
                yield Call(peer, "gossip", body, GOSSIP_TIMEOUT_MS)
        except LegionError:
            pass

    def claimant_duties(self) -> None:
        """As the claimant, past its start-up grace period: decide what the failure detector and
        the handoffs call for (Gossiper.claimant_duties), campaigning first if it must."""
        if self.deciding or self.now_ms < self.grace_until_ms or self.claimant() != self.id:
            return
        state = self._state()
        if cn.propose(state, membership.claimant_changes(state, self.alive()), state.term, self.id) is None:
            return
        self.deciding = True
        self.sim.kernel.spawn(self, self.decide())

    def decide(self) -> Any:
        try:
            yield from self.change_state(lambda s: membership.claimant_changes(s, self.alive()))
        except (LegionError, Forward) as exc:
            self.sim.log(f"{self.id} could not decide its claimant duties: {exc}")
        finally:
            self.deciding = False

    # --- HandoffReceiver -------------------------------------------------------

    def handoff_loop(self) -> Any:
        while True:
            self.flags.discard("handoff")
            try:
                self.reconcile()
                yield from self.pull_gained()
                yield from self.resync()
            except LegionError as exc:
                self.sim.log(f"{self.id} handoff round failed: {exc}")
            yield Sleep(HANDOFF_RETRY_INTERVAL_MS, wake="handoff")

    def resync_all(self) -> None:
        """Re-copy every partition this node holds (after a restart, or once marked up again)."""
        state = self._state()
        self.resyncing = {p for p, nodes in enumerate(state.placement) if self.id in nodes}
        self.sim.kernel.wake(self, "handoff")

    def resync(self) -> Any:
        for p in sorted(self.resyncing):
            try:
                yield from self.pull(p, missing_source_ok=True)
                self.resyncing.discard(p)
            except LegionError:
                pass
            # The state may have moved the partition away while it was being copied.
            self.reconcile()

    def wanted(self) -> list[int]:
        state = self._state()
        if state.pending is None:
            return []
        return sorted(p for p, n in cs.gained_slots(state.placement, state.pending) - state.ready if n == self.id)

    def pull_gained(self) -> Any:
        wanted = self.wanted()
        if self.pulled_for != self._state().pending:
            self.pulled, self.pulled_for = set(), self._state().pending
        if not wanted:
            return
        for p in wanted:
            # HandoffReceiver.pull_gained: the plan may change while we copy; copy only what is still wanted.
            if p in self.pulled or p not in self.wanted():
                continue
            try:
                yield from self.pull(p)
                self.pulled.add(p)
            except LegionError:
                pass
        done = [p for p in self.wanted() if p in self.pulled]
        if done:
            yield from self.report(done)

    def pull(self, partition: int, *, missing_source_ok: bool = False) -> Any:
        """Copy ``partition`` from a live current replica (with ``missing_source_ok``, none is fine)."""
        state = self._state()
        live = routing.live_nodes(state) | {self.id}
        sources = [n for n in routing.read_order(state, partition, live, self.id) if n != self.id]
        if not sources:
            if missing_source_ok:
                return
            raise Unavailable(f"no live replica to pull partition {partition} from")
        reply = yield Call(sources[0], "fold", {"partition": partition}, FOLD_TIMEOUT_MS)
        self.sim.pulled(self, partition, sources[0], bool(reply["copy"]))
        if reply["copy"]:
            self.data.add(partition)

    def report(self, partitions: list[int]) -> Any:
        body = {"node_id": self.id, "partitions": partitions}
        target = self.claimant()
        if target == self.id:
            yield from self.change_state(lambda s: cs.try_commit(cs.mark_ready(s, self.id, partitions)))
            return
        if target is None:
            raise Unavailable("no claimant to report handoff to")
        reply = yield Call(target, "handoff-done", body, REQUEST_DEADLINE_MS)
        self.adopt(cs.from_dict(reply["state"]))

    # --- http_api: the handlers ------------------------------------------------

    def handler(self, kind: str) -> Callable[[str, Any], Any]:
        # http_api's admission: a node without a state answers only gossip and consensus requests
        # (a member becomes a voter after it is up, but its join answer may still be on its way).
        if self.state is None and kind not in ("gossip", "start-join", "publish", "commit"):
            raise Unavailable(f"node {self.id} is still joining the cluster; retry shortly")
        handlers: dict[str, Callable[[str, Any], Any]] = {
            "gossip": self.on_gossip,
            "join": self.on_join,
            "remove": self.on_remove,
            "handoff-done": self.on_handoff_done,
            "fold": self.on_fold,
            "start-join": self.on_start_join,
            "publish": self.on_publish,
            "commit": self.on_commit,
        }
        if kind not in handlers:
            return super().handler(kind)
        return handlers[kind]

    def on_gossip(self, src: str, body: dict[str, Any]) -> dict[str, Any]:
        """_Api.gossip: adopt a state sent whole; send ours whole only if it is newer than theirs."""
        self.heard_from(body["node_id"])
        if body.get("state") is not None:
            self.adopt(cs.from_dict(body["state"]))
        mine = cs.digest(self.state)
        theirs = (int(body.get("epoch", 0)), str(body.get("committed_by", "")))
        reply: dict[str, Any] = {"node_id": self.id, "epoch": mine[0], "committed_by": mine[1]}
        if cs.digest_newer(mine, theirs):
            reply["state"] = cs.to_dict(self._state())
        return reply

    def on_join(self, src: str, body: dict[str, Any]) -> Any:
        node_id, url = body["node_id"], body["url"]
        self.heard_from(node_id)
        return self.claimant_change("join", body, lambda s: cs.add_member(s, node_id, url))

    def on_remove(self, src: str, body: dict[str, Any]) -> Any:
        node_id = body["node_id"]
        self._state().member(node_id)  # NotFound before forwarding anything
        return self.claimant_change("remove", body, lambda s: cs.remove_member(s, node_id))

    def on_handoff_done(self, src: str, body: dict[str, Any]) -> Any:
        node_id, partitions = body["node_id"], body["partitions"]
        return self.claimant_change(
            "handoff-done", body, lambda s: cs.try_commit(cs.mark_ready(s, node_id, partitions))
        )

    def on_fold(self, src: str, body: dict[str, Any]) -> dict[str, Any]:
        partition = body["partition"]
        if self.id not in cs.owners(self._state(), partition):
            raise NotOwner(f"node {self.id} holds no replica of partition {partition}")
        return {"copy": partition in self.data}

    def on_start_join(self, src: str, body: dict[str, Any]) -> dict[str, Any]:
        """Join a higher term for good and vote with the accepted state, or refuse (persisted first)."""
        self.heard_from(body["node_id"])
        record, vote = cn.start_join(self.record, int(body["term"]), self.id)
        self.set_record(record)
        return cn.vote_reply(record, vote)

    def on_publish(self, src: str, body: dict[str, Any]) -> dict[str, Any]:
        """Accept a published state (persisted before the answer) or refuse it."""
        self.heard_from(body["node_id"])
        record = cn.accept(self.record, cs.from_dict(body["state"]))
        if record is None:
            return {"accepted": False, "term": self.record.current_term}
        self.set_record(record)
        self.crash_point("accepted")
        return {"accepted": True, "term": record.current_term}

    def on_commit(self, src: str, body: dict[str, Any]) -> dict[str, Any]:
        self.heard_from(body["node_id"])
        self.set_record(cn.commit_accepted(self.record, int(body["term"]), int(body["epoch"])))
        return {}

    def claimant_change(self, kind: str, body: Any, change: Change) -> Any:
        """_Api._claimant_change: decide it here as the claimant, or forward the request to it."""
        try:
            state = yield from self.change_state(change)
        except Forward as forward:
            reply = yield Call(forward.target, kind, body, REQUEST_DEADLINE_MS)
            return reply
        return {"state": cs.to_dict(state)}
