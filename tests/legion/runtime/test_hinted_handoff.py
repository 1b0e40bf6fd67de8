"""Hinted handoff's replay and catch-up over a fake host and a real hint store."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from legion import cluster_state as cs
from legion.errors import BadRequest, LegionError, Unavailable
from legion.replication import Operation
from legion.runtime.hint_store import HintStore
from legion.runtime.hinted_handoff import HintedHandoff
from tests.legion.test_cluster_state import three_nodes


class FakeHost:
    """n1 of a 3-node cluster; owners answer, fail or refuse as each test says."""

    node_id = "n1"

    def __init__(self) -> None:
        self.state = three_nodes(8, 3)
        self.live_nodes = {"n1", "n2", "n3"}
        self.failing: set[str] = set()
        self.refuse_keys: set[bytes] = set()
        self.applied: dict[str, list[Operation]] = defaultdict(list)
        self.reports: dict[str, Any] = {}

    def current_state(self) -> cs.ClusterState:
        return self.state

    def live(self) -> set[str]:
        return set(self.live_nodes)

    def suspect(self, node_id: str) -> None:
        self.live_nodes.discard(node_id)

    async def apply_chunk(self, node_id: str, ops: Sequence[Operation], *, refresh: bool, timeout_ms: int) -> dict[int, LegionError]:
        if node_id in self.failing:
            raise Unavailable(f"{node_id} is unreachable")
        refused = {i: BadRequest("refused") for i, op in enumerate(ops) if op.key in self.refuse_keys}
        self.applied[node_id].extend(op for i, op in enumerate(ops) if i not in refused)
        return refused

    async def peer_json(self, node_id: str, method: str, path: str, body: Any = None) -> Any:
        if node_id in self.failing:
            raise Unavailable(f"{node_id} is unreachable")
        return self.reports.get(node_id, {"pending": {}, "lost": []})


class Counters:
    def __init__(self) -> None:
        self.kept = self.lost = self.replayed = 0

    def observe_hints(self, *, kept: int = 0, lost: int = 0, replayed: int = 0) -> None:
        self.kept += kept
        self.lost += lost
        self.replayed += replayed


def ops(partition: int, count: int) -> list[Operation]:
    return [Operation("kv", partition, f"k{partition}-{i}".encode(), 100 + i, "n1", "put", b"v") for i in range(count)]


def handoff(tmp_path, host: FakeHost) -> tuple[HintedHandoff, list[dict[str, str]], list[set[int]], Counters]:
    published: list[dict[str, str]] = []
    resynced: list[set[int]] = []
    counters = Counters()
    hh = HintedHandoff(host, HintStore(tmp_path), counters, lambda v: published.append(dict(v)), resynced.append)
    return hh, published, resynced, counters


def test_hints_are_dropped_only_once_their_owner_acknowledged_them(tmp_path):
    async def scenario() -> None:
        host = FakeHost()
        hh, published, _, counters = handoff(tmp_path, host)
        await hh.keep([("n3", op) for op in ops(2, 30)])
        host.failing = {"n3"}
        await hh.run_round()
        assert hh.pending() == {"n3": 30} and counters.replayed == 0  # no answer: all kept
        assert published[-1] == {"hints.pending": "n3=30"}
        host.failing = set()
        host.refuse_keys = {b"k2-7"}
        await hh.run_round()
        assert hh.pending() == {"n3": 1}  # the refused one stays
        assert sorted(op.key for op in host.applied["n3"]) == sorted(op.key for op in ops(2, 30) if op.key != b"k2-7")
        host.refuse_keys = set()
        await hh.run_round()
        assert hh.pending() == {} and counters.replayed == 30
        assert published[-1] == {}

    asyncio.run(scenario())


def test_a_hint_for_an_owner_that_lost_its_partition_goes_to_the_current_owners(tmp_path):
    async def scenario() -> None:
        host = FakeHost()
        four = cs.add_member(host.state, "n4", "http://127.0.0.1:4")
        gained = [p for p, n in cs.gained_slots(four.placement, four.pending) if n == "n4"]
        host.state = cs.try_commit(cs.mark_ready(four, "n4", gained))
        host.live_nodes |= {"n4"}
        moved = next(p for p in range(8) if "n4" not in cs.owners(host.state, p))
        hh, _, _, _ = handoff(tmp_path, host)
        await hh.keep([("n4", op) for op in ops(moved, 3)])  # kept while n4 owned it, say
        await hh.run_round()
        await hh.run_round()
        for owner in cs.owners(host.state, moved):
            assert sorted(op.key for op in host.applied[owner]) == sorted(op.key for op in ops(moved, 3))
        assert "n4" not in host.applied
        assert hh.pending() == {}

    asyncio.run(scenario())


def test_hints_for_a_removed_owner_follow_their_partitions_instead_of_being_dropped(tmp_path):
    """Found by the data-path simulator: a coordinator that had not heard of the removal counted a
    fallback's hint towards w; dropping it left the acknowledged write on one node."""

    async def scenario() -> None:
        host = FakeHost()
        hh, _, _, _ = handoff(tmp_path, host)
        partition = next(p for p in range(8) if "n3" in cs.owners(host.state, p))
        await hh.keep([("n3", op) for op in ops(partition, 5)])
        host.state = cs.remove_member(host.state, "n3")  # n3 leaves for good while the hints wait
        host.live_nodes.discard("n3")
        await hh.run_round()
        await hh.run_round()
        owners = cs.owners(host.state, partition)
        assert "n3" not in owners
        for owner in owners:
            assert sorted(op.key for op in host.applied[owner]) == sorted(op.key for op in ops(partition, 5))
        assert hh.pending() == {}

    asyncio.run(scenario())


def test_a_restarted_node_serves_a_partition_once_no_peer_holds_hints_for_it(tmp_path):
    async def scenario() -> None:
        host = FakeHost()
        hh, published, resynced, _ = handoff(tmp_path, host)
        hh.start_catch_up()
        assert hh.catching_up == set(range(8))
        host.reports = {"n2": {"pending": {"3": 4}, "lost": []}, "n3": {"pending": {}, "lost": [6]}}
        await hh.run_round()
        assert hh.catching_up == {3} and resynced == [{6}]
        assert published[-1] == {"hints.catching-up": "1: 3"}
        host.reports = {}
        await hh.run_round()
        assert hh.catching_up == set() and published[-1] == {}

    asyncio.run(scenario())


def test_a_peer_that_does_not_answer_keeps_every_partition_waiting_until_it_is_suspected(tmp_path):
    async def scenario() -> None:
        host = FakeHost()
        hh, _, _, _ = handoff(tmp_path, host)
        hh.start_catch_up()
        host.failing = {"n3"}
        await hh.run_round()
        assert hh.catching_up == set(range(8))
        await hh.run_round()  # n3 is suspected now: not asked
        assert hh.catching_up == set()

    asyncio.run(scenario())
