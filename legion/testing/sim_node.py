"""A simulated Legion node: the runtime's protocol, step for step, over the simulated network.

Pure (runs on ``legion.testing.sim_kernel``). ``SimNode`` keeps what a real
node keeps and runs what it runs, calling the same pure functions (through
their modules, so a test that patches the core patches the simulation too):

- ``legion.runtime.node.Node``: the believed ``ClusterState`` (persisted: it
  survives a crash), ``adopt`` (only a newer state), ``alive`` / ``claimant`` /
  ``may_claim`` (``membership.may_claim``: claimant among the alive, a majority
  heard within ``MAJORITY_FRESH_MS``, and past the grace period of a node that
  restarted on persisted state), ``change_state`` (forward to the claimant;
  commit only if this node may claim, else ``Unavailable``), ``reconcile``
  (drop what is no longer held), ``_join`` (through a seed, with the same
  retry rule, ending early once gossip brought the state);
- ``legion.runtime.gossiper.Gossiper``: a digest exchange with every other
  non-removed member each round (whichever side is newer sends its state
  whole; a node without state answers the digest (0, '')), then claimant
  duties (``membership.claimant_step``);
- ``legion.runtime.handoff_receiver.HandoffReceiver``: pull each gained slot
  that is still wanted (re-read before every pull) from a live current
  replica, report those still wanted ready to the claimant, re-sync;
- ``legion.runtime.http_api``: the gossip, join, remove, handoff-done and fold
  handlers, and the middleware that answers ``Unavailable`` to everything but
  gossip until the node has a cluster state.

Data is modelled, not stored: ``data`` is the set of partitions this node holds
a full copy of. A fold answers whether the source holds a copy; a pull of an
empty partition "succeeds" exactly as the runtime's would, and the checkers
notice. A re-sync (after a restart, or once marked up again) pulls like a
handoff does, so it takes the same time and can supply a missing copy. Not
modelled: client reads and writes (so no reads refused while re-syncing) and
the coordinator's local suspicion list (only client requests feed it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from legion import cluster_state as cs
from legion import membership, routing
from legion.errors import ConfigError, LegionError, NotOwner, Unavailable
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
JOIN_ATTEMPTS_MAX = 60
JOIN_RETRY_INTERVAL_MS = 500
GOSSIP_TIMEOUT_MS = HEARTBEAT_INTERVAL_MS * 2
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


class SimNode(Endpoint):
    """One node: its persisted state and data, its in-memory view of peers, and its loops."""

    def __init__(self, sim: Simulation, node_id: str, seed_id: str | None) -> None:
        super().__init__(node_id)
        self.sim = sim
        self.url = f"http://sim-{node_id}:7400"
        self.seed_id = seed_id  # None for the node that founds the cluster
        # Persisted: kept across crashes, like the node database.
        self.state: cs.ClusterState | None = None
        self.data: set[int] = set()
        # In memory: lost on a crash.
        self.last_heard_ms: dict[str, int] = {}
        self.started_ms = 0
        self.grace_until_ms = 0
        self.serving = False  # the gossip and handoff loops run
        self.pulled: set[int] = set()
        self.pulled_for: object = None
        self.resyncing: set[int] = set()
        self.was_down = False
        self.running = False

    # --- Node: the believed state -------------------------------------------

    @property
    def now_ms(self) -> int:
        return self.sim.kernel.now_ms

    def adopt(self, state: cs.ClusterState, *, committed: bool = False) -> bool:
        """Take ``state`` if it is newer than ours. True if adopted."""
        if self.state is not None and not cs.newer(state, self.state):
            return False
        self._note_own_liveness(state)
        before, self.state = self.state, state
        self.sim.adopted(self, before, state, committed)
        self.sim.kernel.wake(self, "handoff")
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

    def may_claim(self) -> bool:
        """Node.may_claim: the claimant among ``alive``, a majority heard within MAJORITY_FRESH_MS, past grace."""
        state, now = self._state(), self.now_ms
        fresh = membership.alive_ids(state, self.id, self.last_heard_ms, now, membership.MAJORITY_FRESH_MS)
        return membership.may_claim(state, self.alive(), fresh, self.id, in_grace=now < self.grace_until_ms)

    def heard_from(self, node_id: str) -> None:
        self.last_heard_ms[node_id] = self.now_ms

    def change_state(self, change: Change) -> cs.ClusterState:
        """Apply ``change`` as the claimant and return the result; ``Forward`` if another node is claimant."""
        state = self._state()
        target = self.claimant()
        if target is None:
            raise Unavailable("no live member can decide cluster changes right now; retry shortly")
        if target != self.id:
            raise Forward(target)
        if not self.may_claim():
            raise Unavailable(
                f"claimant {self.id} cannot commit yet: it is starting up or sees no majority of members; retry shortly"
            )
        new = cs.commit(state, change(state), self.id)
        if new is not state:
            self.adopt(new, committed=True)
            self.sim.kernel.wake(self, "gossip")
        return self.state

    def reconcile(self) -> None:
        """Drop the copies of partitions this node no longer holds or gains."""
        held = set(cs.partitions_held(self._state(), self.id))
        for p in sorted(self.data - held):
            self.sim.dropping(self, p)
            self.data.discard(p)

    def _state(self) -> cs.ClusterState:
        # Unreachable from a handler (``handler`` refuses requests until the
        # node has a state) or a loop (they start after it has one).
        if self.state is None:
            raise LegionError(f"{self.id} has no cluster state yet")
        return self.state

    # --- lifecycle -------------------------------------------------------------

    def forget(self) -> None:
        """The process died: what lives only in memory is lost; the state and the data are on disk."""
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
                self.adopt(state)
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
        if not self.may_claim():
            return
        state = self._state()
        committed = membership.claimant_step(state, self.alive(), self.id)
        if committed is not state:
            self.adopt(committed, committed=True)
            self.sim.kernel.wake(self, "gossip")

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

    def wanted(self) -> list[int]:
        state = self._state()
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
            self.change_state(lambda s: cs.try_commit(cs.mark_ready(s, self.id, partitions)))  # may be Unavailable
            return
        if target is None:
            raise Unavailable("no claimant to report handoff to")
        reply = yield Call(target, "handoff-done", body, REQUEST_DEADLINE_MS)
        self.adopt(cs.from_dict(reply["state"]))

    # --- http_api: the handlers ------------------------------------------------

    def handler(self, kind: str) -> Callable[[str, Any], Any]:
        if self.state is None and kind != "gossip":  # http_api._requires_state
            raise Unavailable(f"node {self.id} is still joining the cluster; retry shortly")
        handlers: dict[str, Callable[[str, Any], Any]] = {
            "gossip": self.on_gossip,
            "join": self.on_join,
            "remove": self.on_remove,
            "handoff-done": self.on_handoff_done,
            "fold": self.on_fold,
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

    def claimant_change(self, kind: str, body: Any, change: Change) -> Any:
        """_Api._claimant_change: commit here as the claimant, or forward the request to it."""
        try:
            state = self.change_state(change)
        except Forward as forward:
            reply = yield Call(forward.target, kind, body, REQUEST_DEADLINE_MS)
            return reply
        return {"state": cs.to_dict(state)}
