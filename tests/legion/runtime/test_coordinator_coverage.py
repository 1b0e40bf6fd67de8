"""Coverage v2 in the coordinator, over a fake node and fake peers.

The coordinator is real; the node under it is a stand-in with a real cluster
state, whose local share and whose peers answer (or fail) as each test says.
Replies name who answered, so the tests check ``served_by`` against them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from legion import cluster_state as cs
from legion.engine import CoverageResult
from legion.errors import BadRequest, LegionError, Unavailable
from legion.limits import FORWARD_ATTEMPTS_MAX
from legion.runtime.coordinator import Coordinator
from tests.legion.test_cluster_state import three_nodes


class FakePeers:
    """``PeerClient.call`` for /internal/coverage: each node answers ``[[node, p], …]`` or fails."""

    def __init__(self, node: FakeNode) -> None:
        self.node = node

    async def call(self, method: str, url: str, *, data: bytes, timeout_ms: int, **_: Any) -> bytes:
        assert url.endswith("/internal/coverage") and timeout_ms > 0
        node_id = next(m.id for m in self.node.state.members if url.startswith(m.url + "/"))
        request = msgpack.unpackb(data, raw=False)
        answer = await self.node.answer(node_id, request["partitions"], request["query"])
        return msgpack.packb(answer, use_bin_type=True)


class FakeNode:
    """What the coordinator reaches for: node id, state, peers, the local replica."""

    def __init__(self, state: cs.ClusterState) -> None:
        self.node_id = "n1"
        self.state = state
        self.peers = FakePeers(self)
        self.down: set[str] = set()  # these nodes fail as unreachable (n1: as re-syncing)
        self.asked: list[tuple[str, tuple[int, ...]]] = []
        self.hook: Callable[[str], Any] | None = None

    async def answer(self, node_id: str, partitions: list[int], query: Any) -> list[list[Any]]:
        self.asked.append((node_id, tuple(partitions)))
        if self.hook is not None:
            await self.hook(node_id)
        if query == "bad":
            raise BadRequest("this query makes no sense")
        if node_id in self.down:
            raise Unavailable(f"{node_id} is unreachable")
        return [[node_id, p] for p in partitions]

    async def local_coverage(self, engine: str, partitions: list[int], query: Any) -> Any:
        return await self.answer(self.node_id, partitions, query)

    def request_gossip(self) -> None:
        pass


def coverage(node: FakeNode, **options: Any) -> CoverageResult:
    return asyncio.run(Coordinator(node).coverage("kv", options.pop("query", "q"), **options))  # type: ignore[arg-type]


def assert_replies_match(result: CoverageResult) -> None:
    """Every reply is the answer of the node ``served_by`` names, for exactly its partitions."""
    for reply in result.replies:
        assert reply.value == [[reply.node, p] for p in reply.partitions]
        assert all(result.served_by[p] == reply.node for p in reply.partitions)


def test_every_partition_is_served_once_and_the_node_serves_itself_first():
    node = FakeNode(three_nodes(16, 3))
    result = coverage(node)
    assert result.served_by == {p: "n1" for p in range(16)} and result.missing == ()
    assert [reply.partitions for reply in result.replies] == [tuple(range(16))]
    assert result.by_partition() == {p: ["n1", p] for p in range(16)}


def test_prefer_keeps_a_second_round_on_the_first_rounds_replicas():
    node = FakeNode(three_nodes(16, 3))
    wanted = {p: ("n2" if p % 2 else "n3") for p in range(16)}
    first = coverage(node, prefer=wanted)
    assert first.served_by == wanted
    assert_replies_match(first)
    second = coverage(node, prefer=first.served_by, partitions=[1, 2, 3])
    assert second.served_by == {1: "n2", 2: "n3", 3: "n2"}


def test_nodes_are_asked_in_parallel():
    node = FakeNode(three_nodes(16, 3))
    started: set[str] = set()
    both = asyncio.Event()

    async def hook(node_id: str) -> None:
        started.add(node_id)
        if {"n2", "n3"} <= started:
            both.set()
        await asyncio.wait_for(both.wait(), timeout=2)  # times out unless the other call is in flight too

    node.hook = hook
    result = coverage(node, prefer={0: "n2", 1: "n3"}, partitions=[0, 1])
    assert result.served_by == {0: "n2", 1: "n3"}


def test_a_failed_nodes_partitions_are_re_planned_onto_other_replicas():
    node = FakeNode(three_nodes(16, 3))
    node.down = {"n2"}
    result = coverage(node, prefer={p: "n2" for p in range(16)})
    assert result.missing == () and "n2" not in result.served_by.values()
    assert sorted(result.served_by) == list(range(16))
    assert_replies_match(result)
    assert [n for n, _ in node.asked].count("n2") == 1  # avoided after it failed


def test_partitions_without_a_live_replica_are_missing_with_allow_partial_else_unavailable():
    state = three_nodes(16, 1)
    node = FakeNode(state)
    node.down = {"n2"}
    on_n2 = tuple(p for p in range(16) if state.placement[p] == ("n2",))
    assert on_n2
    partial = coverage(node, allow_partial=True)
    assert partial.missing == on_n2
    assert sorted(partial.served_by) == sorted(set(range(16)) - set(on_n2))
    assert_replies_match(partial)
    with pytest.raises(Unavailable) as caught:
        coverage(node)
    assert list(on_n2) == caught.value.details["partitions"]
    assert ", ".join(map(str, on_n2[:3])) in caught.value.message


def test_rounds_are_capped():
    node = FakeNode(three_nodes(16, 3))
    node.down = {"n1", "n2", "n3"}
    result = coverage(node, allow_partial=True)
    assert result.missing == tuple(range(16)) and result.replies == ()
    assert len(node.asked) == FORWARD_ATTEMPTS_MAX  # one node per round: n1, then n2, then n3


def test_a_bad_query_is_raised_at_once_not_retried_elsewhere():
    node = FakeNode(three_nodes(16, 3))
    with pytest.raises(BadRequest, match="makes no sense"):
        coverage(node, query="bad", prefer={p: "n2" for p in range(16)})
    assert [n for n, _ in node.asked] == ["n2"]


@pytest.mark.parametrize(
    "options",
    [{"partitions": [16]}, {"partitions": [1, 1]}, {"partitions": [True]}, {"deadline_ms": 0}, {"deadline_ms": "5"}],
)
def test_bad_arguments_are_bad_requests(options):
    with pytest.raises(BadRequest):
        coverage(FakeNode(three_nodes(16, 3)), **options)


def test_only_the_asked_partitions_are_covered():
    result = coverage(FakeNode(three_nodes(16, 3)), partitions=[5, 3])
    assert sorted(result.served_by) == [3, 5] and result.replies[0].partitions == (5, 3)


def test_an_internal_error_on_a_node_counts_as_that_nodes_failure():
    node = FakeNode(three_nodes(16, 3))

    async def hook(node_id: str) -> None:
        raise LegionError("internal error; the node's log has the details")

    node.hook = hook
    result = coverage(node, allow_partial=True)  # a 500 is the node's failure: re-planned, then missing
    assert result.missing == tuple(range(16)) and len(node.asked) == FORWARD_ATTEMPTS_MAX


def test_the_deadline_bounds_the_local_share_and_the_rounds_after_it():
    node = FakeNode(three_nodes(16, 3))

    async def hook(node_id: str) -> None:
        if node_id == "n1":
            await asyncio.sleep(5)  # far beyond the deadline below

    node.hook = hook
    started = time.monotonic()
    result = coverage(node, deadline_ms=300, partitions=[0, 1], allow_partial=True)
    assert time.monotonic() - started < 2
    assert result.missing == (0, 1)
    assert [n for n, _ in node.asked] == ["n1"]  # no time was left for another round


def test_the_whole_keyspace_plan_is_planned_again_when_the_state_or_the_live_nodes_change():
    node = FakeNode(three_nodes(16, 1))
    coordinator = Coordinator(node)  # type: ignore[arg-type]

    def served_by() -> dict[int, str]:
        return dict(asyncio.run(coordinator.coverage("kv", "q", allow_partial=True)).served_by)

    first = served_by()
    assert served_by() == first and set(first.values()) == {"n1", "n2", "n3"}
    coordinator.suspect("n2")  # n2 looks dead: its partitions are not planned onto it
    assert "n2" not in served_by().values()
    coordinator._suspects.clear()
    node.state = three_nodes(16, 3)  # a new state: every node holds every partition, n1 serves itself
    assert set(served_by().values()) == {"n1"}
