"""The batch writer over a fake host: grouping, chunking, concurrency and per-item results.

The host stands in for the coordinator: it holds a real cluster state and
records every chunk it is asked to ship, so the tests see exactly which
operations went to which replica, in how many requests, how many at once.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import pytest

from legion.cluster_state import ClusterState
from legion.engine import WriteItem, WriteResult
from legion.errors import BadRequest, LegionError, PayloadTooLarge, Unavailable
from legion.keyspace import partition_of
from legion.limits import OP_BODY_BYTES_MAX, PEER_BATCH_OPS_MAX, PEER_CHUNKS_IN_FLIGHT_MAX, WRITE_MANY_ITEMS_MAX
from legion.replication import Operation
from legion.runtime.batch_writer import BatchWriter
from tests.legion.test_cluster_state import three_nodes

NODES = ("n1", "n2", "n3")


class FakeHost:
    """A coordinator on n1 of a 3-node, N=3 cluster; peers behave as each test says."""

    node_id = "n1"

    def __init__(self, state: ClusterState | None = None) -> None:
        self.state = state or three_nodes(16, 3)
        self.live_nodes = set(NODES)
        self.clock = 1000
        self.calls: list[tuple[str, int, bool]] = []  # (node, ops in the chunk, refresh)
        self.down: set[str] = set()
        self.refuse_keys: set[bytes] = set()
        self.gates: dict[str, asyncio.Event] = {}  # a node whose chunks wait for its gate
        self.in_flight: Counter[str] = Counter()
        self.in_flight_max: Counter[str] = Counter()
        self.received: dict[str, list[Operation]] = defaultdict(list)
        self.kept: list[asyncio.Future[Any]] = []
        self.hints: dict[tuple[str, str], list[Operation]] = defaultdict(list)  # (holder, owner) -> ops
        self.hinted_after_failure: dict[str, list[Operation]] = defaultdict(list)  # owner -> ops

    def current_state(self) -> ClusterState:
        return self.state

    def live(self) -> set[str]:
        return set(self.live_nodes)

    def stamp(self) -> int:
        self.clock += 1
        return self.clock

    async def apply_chunk(
        self, node_id: str, ops: Sequence[Operation], *, refresh: bool, timeout_ms: int, hint_for: str | None = None
    ) -> dict[int, LegionError]:
        assert 0 < timeout_ms
        if hint_for is not None:
            if node_id in self.down:
                raise Unavailable(f"http://{node_id} is unreachable: ClientConnectorError")
            self.hints[(node_id, hint_for)].extend(ops)
            return {}
        self.calls.append((node_id, len(ops), refresh))
        self.in_flight[node_id] += 1
        self.in_flight_max[node_id] = max(self.in_flight_max[node_id], self.in_flight[node_id])
        try:
            await asyncio.sleep(0)  # let the other workers start: in-flight counts are real
            if node_id in self.gates:
                await self.gates[node_id].wait()
            if node_id in self.down:
                raise Unavailable(f"http://{node_id} is unreachable: ClientConnectorError")
            self.received[node_id].extend(ops)
            return {i: BadRequest("this key is refused") for i, op in enumerate(ops) if op.key in self.refuse_keys}
        finally:
            self.in_flight[node_id] -= 1

    def keep(self, task: asyncio.Future[Any]) -> None:
        self.kept.append(task)

    async def keep_hints_after_failure(self, owner: str, ops: Sequence[Operation]) -> None:
        self.hinted_after_failure[owner].extend(ops)


def items(count: int, body: bytes = b"v") -> list[WriteItem]:
    return [WriteItem(f"key-{i:06d}".encode(), "put", body) for i in range(count)]


def write_many(host: FakeHost, batch: Sequence[WriteItem], **options: Any) -> list[WriteResult | LegionError]:
    return asyncio.run(BatchWriter(host).write_many("kv", batch, **options))


def test_every_item_gets_its_result_in_order_with_its_own_timestamp():
    host = FakeHost()
    results = write_many(host, items(50))
    assert all(isinstance(r, WriteResult) and r.replicas == 3 for r in results)
    assert [r.hlc for r in results] == sorted({r.hlc for r in results})  # distinct, stamped in item order
    assert [r.partition for r in results] == [partition_of(item.key, host.state.partitions) for item in items(50)]
    for node in NODES:
        assert sorted(op.key for op in host.received[node]) == [item.key for item in items(50)]


def test_a_large_batch_is_sent_in_chunks_of_at_most_peer_batch_ops_max():
    host = FakeHost()
    results = write_many(host, items(2_500))
    assert all(isinstance(r, WriteResult) for r in results)
    sizes = defaultdict(list)
    for node, count, _ in host.calls:
        sizes[node].append(count)
    for node in NODES:
        assert sorted(sizes[node]) == [500, PEER_BATCH_OPS_MAX, PEER_BATCH_OPS_MAX]


def test_large_values_are_chunked_by_bytes():
    host = FakeHost()
    three_mib = bytes(3 * 1024 * 1024)
    results = write_many(host, items(5, three_mib))
    assert all(isinstance(r, WriteResult) for r in results)
    assert sorted(count for node, count, _ in host.calls if node == "n2") == [1, 2, 2]


def test_at_most_peer_chunks_in_flight_max_chunks_travel_to_one_node_at_once():
    host = FakeHost()
    write_many(host, items(20 * PEER_BATCH_OPS_MAX // 2))
    assert all(host.in_flight_max[node] == PEER_CHUNKS_IN_FLIGHT_MAX for node in NODES)


def test_an_oversized_item_and_a_bad_key_fail_alone():
    host = FakeHost()
    batch = items(3)
    batch.insert(1, WriteItem(b"huge", "put", bytes(OP_BODY_BYTES_MAX + 1)))
    batch.insert(3, WriteItem(b"", "put", b"v"))
    results = write_many(host, batch)
    assert isinstance(results[1], PayloadTooLarge) and isinstance(results[3], BadRequest)
    assert [isinstance(r, WriteResult) for r in results] == [True, False, True, False, True]
    assert all(op.key not in (b"huge", b"") for ops in host.received.values() for op in ops)


def test_a_refusal_from_the_replicas_maps_back_to_its_item():
    host = FakeHost()
    host.refuse_keys = {b"key-000007"}
    results = write_many(host, items(2_000))
    assert isinstance(results[7], BadRequest) and "refused" in results[7].message
    assert sum(isinstance(r, WriteResult) for r in results) == 1_999


def test_a_dead_replica_does_not_stop_a_quorum_and_fails_its_chunks_without_retrying():
    host = FakeHost()
    host.down = {"n3"}
    results = write_many(host, items(10 * PEER_BATCH_OPS_MAX))
    assert all(isinstance(r, WriteResult) and r.acks == 2 for r in results)
    # The first failure marks n3 unreachable for this batch: its other chunks are not sent.
    assert sum(1 for node, _, _ in host.calls if node == "n3") <= PEER_CHUNKS_IN_FLIGHT_MAX
    # ...and what n3 did not take is kept as hints for it, every operation once.
    assert sorted(op.key for op in host.hinted_after_failure["n3"]) == [item.key for item in items(10 * PEER_BATCH_OPS_MAX)]


def test_an_owner_known_down_gets_hints_on_the_coordinator_which_do_not_count_when_it_holds_a_replica():
    host = FakeHost()
    host.live_nodes = {"n1", "n2"}
    results = write_many(host, items(30))
    assert all(isinstance(r, WriteResult) and r.acks == 2 for r in results)
    assert sorted(op.key for op in host.hints[("n1", "n3")]) == [item.key for item in items(30)]
    assert "n3" not in {node for node, _, _ in host.calls}
    refused = write_many(host, items(3), w=3)  # n1's hint is not a second copy: no third acknowledgement
    assert all(isinstance(r, Unavailable) and "0 fallbacks" in r.message for r in refused)


def test_a_fallback_outside_the_preference_list_keeps_the_hint_and_counts_towards_w():
    from legion import cluster_state as cs

    four = cs.add_member(three_nodes(16, 3), "n4", "http://127.0.0.1:4")
    four = cs.try_commit(cs.mark_ready(four, "n4", [p for p, n in cs.gained_slots(four.placement, four.pending) if n == "n4"]))
    assert four.pending is None and all(len(nodes) == 3 for nodes in four.placement)
    host = FakeHost(four)
    host.live_nodes = {"n1", "n2", "n4"}  # n3 is down
    batch = items(200)
    results = write_many(host, batch, w=3)
    assert all(isinstance(r, WriteResult) and r.acks == 3 for r in results)
    for item, result in zip(batch, results):
        preference = four.placement[result.partition]
        if "n3" in preference:
            (fallback,) = {"n1", "n2", "n4"} - set(preference)
            assert item.key in {op.key for op in host.hints[(fallback, "n3")]}


def test_an_item_that_misses_its_quorum_names_the_replicas_that_failed():
    host = FakeHost()
    host.down = {"n2", "n3"}
    results = write_many(host, items(3))
    assert all(isinstance(r, Unavailable) for r in results)
    assert "n2: http://n2 is unreachable" in results[0].message and "n3:" in results[0].message


def test_items_without_enough_live_replicas_are_refused_before_anything_is_sent():
    host = FakeHost()
    host.live_nodes = {"n1"}
    results = write_many(host, items(4))
    assert all(isinstance(r, Unavailable) and "1 of 3 replicas are live" in r.message for r in results)
    assert host.calls == []
    assert all(isinstance(r, WriteResult) and r.acks == 1 for r in write_many(host, items(4), w=1))


def test_the_call_returns_once_every_item_is_decided_and_leaves_slow_chunks_running():
    async def scenario() -> None:
        host = FakeHost()
        host.gates["n3"] = asyncio.Event()
        results = await asyncio.wait_for(BatchWriter(host).write_many("kv", items(10)), timeout=5)
        assert all(isinstance(r, WriteResult) and r.acks == 2 for r in results)
        assert host.kept and not any(task.done() for task in host.kept)
        host.gates["n3"].set()
        await asyncio.wait_for(asyncio.gather(*host.kept), timeout=5)
        assert len(host.received["n3"]) == 10

    asyncio.run(scenario())


def test_refresh_waits_for_every_live_replica_and_asks_each_to_flush():
    async def scenario() -> None:
        host = FakeHost()
        host.gates["n3"] = asyncio.Event()
        call = asyncio.ensure_future(BatchWriter(host).write_many("kv", items(10), w=1, refresh=True))
        await asyncio.sleep(0.05)
        assert not call.done()  # w=1 was met long ago, but n3 has not answered
        host.gates["n3"].set()
        results = await asyncio.wait_for(call, timeout=5)
        assert all(isinstance(r, WriteResult) and r.acks == 3 for r in results)
        assert {refresh for _, _, refresh in host.calls} == {True}

    asyncio.run(scenario())


def test_a_gaining_node_receives_the_batch_but_does_not_count():
    from legion import cluster_state as cs

    joined = cs.add_member(three_nodes(16, 3), "n4", "http://127.0.0.1:4")
    host = FakeHost(joined)
    host.live_nodes = {"n1", "n2", "n3", "n4"}
    gaining = {p for p, node in cs.gained_slots(joined.placement, joined.pending) if node == "n4"}
    batch = items(400)
    results = write_many(host, batch, w=3)
    assert all(isinstance(r, WriteResult) and r.acks == 3 for r in results)
    assert {op.partition for op in host.received["n4"]} == gaining


@pytest.mark.parametrize(("batch", "options"), [(items(WRITE_MANY_ITEMS_MAX + 1), {}), (items(2), {"w": 0})])
def test_a_call_that_is_wrong_as_a_whole_is_refused_as_a_whole(batch, options):
    host = FakeHost()
    with pytest.raises(BadRequest):
        write_many(host, batch, **options)
    assert host.calls == []


def test_an_empty_batch_is_an_empty_answer():
    assert write_many(FakeHost(), []) == []
