"""The etcd register against a real etcd (``running_etcd``), driven by hand: founding, a lost
compare-and-swap retried on the value that won, polling, and an etcd that does not answer.

The tests share one etcd, each under a key prefix of its own (``Etcd.url``)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from contextlib import asynccontextmanager
from typing import Any

import pytest

from legion import cluster_state as cs
from legion import etcd_metadata as em
from legion.errors import ConfigError, Conflict, NoQuorum
from legion.limits import ETCD_REQUEST_TIMEOUT_MS
from legion.runtime.etcd_register import EtcdRegister
from legion.runtime.local_cluster.ports import free_ports
from legion.runtime.node_metrics import NodeMetrics
from tests.conftest import EtcdServer, running_etcd


@dataclass
class Etcd:
    """The module's etcd, and the URL of this test's own prefix (``etcd://…/<test name>``)."""

    server: EtcdServer
    url: str


@pytest.fixture(scope="module")
def etcd_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with running_etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
def etcd(etcd_module: EtcdServer, request: pytest.FixtureRequest) -> Etcd:
    return Etcd(etcd_module, f"{etcd_module.url}/{request.node.name}")


class Gossiper:
    def __init__(self) -> None:
        self.pushes = 0

    def push_soon(self) -> None:
        self.pushes += 1


class Host:
    """The part of a node the register uses: its id, its state (newest epoch wins), metrics, gossip."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.state: cs.ClusterState | None = None
        self.metrics = NodeMetrics()
        self.gossiper = Gossiper()

    def adopt(self, state: cs.ClusterState) -> bool:
        if self.state is not None and state.epoch <= self.state.epoch:
            return False
        self.state = state
        return True


def run(scenario: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return asyncio.run(scenario(*args))


def new_state(node_id: str) -> cs.ClusterState:
    return cs.new_cluster(f"c-{node_id}", node_id, "http://127.0.0.1:7401", 8, 3)


@asynccontextmanager
async def register_on(url: str, node_id: str = "n1", *, founding: bool = True) -> AsyncIterator[EtcdRegister]:
    """An open register of a node ``node_id`` on ``url`` (that founds its cluster first), stopped on the way out."""
    register = EtcdRegister(Host(node_id), em.parse_metadata_url(url))  # type: ignore[arg-type]
    await register.open()
    try:
        if founding:
            await register.found(new_state(node_id))
        yield register
    finally:
        await register.stop()


def test_the_first_founder_creates_the_cluster_and_a_second_is_told_to_join(etcd: Etcd) -> None:
    async def scenario() -> None:
        async with register_on(etcd.url, "n1") as first:
            assert first.node.state == new_state("n1")
        async with register_on(etcd.url, "n2", founding=False) as second:
            with pytest.raises(ConfigError, match=r"already holds cluster c-n1: .*--join"):
                await second.found(new_state("n2"))
        # The founder lost its record (crashed right after the swap): its own cluster is taken back.
        async with register_on(etcd.url, "n1") as again:
            assert again.node.state == new_state("n1")

    run(scenario)
    read = etcd.server.state(etcd.url)
    assert read is not None and read.state == new_state("n1")


def test_a_lost_swap_is_retried_on_the_value_that_won(etcd: Etcd) -> None:
    """Another node's change lands between this node's read and its swap: both changes survive."""
    url = etcd.url
    target = em.parse_metadata_url(url)
    calls: list[int] = []

    def add_a_and_meanwhile_another_node_adds_b(state: cs.ClusterState) -> cs.ClusterState:
        calls.append(state.epoch)
        if len(calls) == 1:  # the other node's swap, between our read and our swap
            read = etcd.server.state(url)
            assert read is not None
            theirs = em.next_state(read.state, cs.add_member(read.state, "b", "http://127.0.0.1:9002"), "other")
            assert theirs is not None
            assert etcd.server.post("kv/txn", em.swap_request(target, read, theirs)).get("succeeded")
        return cs.add_member(state, "a", "http://127.0.0.1:9001")

    async def scenario() -> tuple[cs.ClusterState, EtcdRegister]:
        async with register_on(url) as register:
            return await register.change(add_a_and_meanwhile_another_node_adds_b), register

    committed, register = run(scenario)
    assert calls == [1, 2], "the change was applied again to the state that won"
    assert committed.has_member("a") and committed.has_member("b") and committed.epoch == 3
    assert register.node.metrics.registry.get_sample_value("legion_etcd_swaps_lost_total") == 1
    assert register.node.state == committed and register.node.gossiper.pushes == 1
    read = etcd.server.state(url)
    assert read is not None and read.state == committed


def test_a_change_that_changes_nothing_writes_nothing(etcd: Etcd) -> None:
    async def scenario() -> cs.ClusterState:
        async with register_on(etcd.url) as register:
            return await register.change(lambda state: state)

    before = time.monotonic()
    assert run(scenario) == new_state("n1")
    read = etcd.server.state(etcd.url)
    assert read is not None and read.state.epoch == 1
    assert time.monotonic() - before < 5


def test_a_poll_brings_a_change_made_through_another_node(etcd: Etcd) -> None:
    async def scenario() -> None:
        async with register_on(etcd.url, "n1") as one, register_on(etcd.url, "n2", founding=False) as other:
            other.node.state = one.node.state
            await other.catch_up()
            changed = await other.change(lambda s: cs.add_member(s, "n2", "http://127.0.0.1:7402"))
            assert one.node.state.epoch == 1
            await one.run_round()
            assert one.node.state == changed and one.seen_revision == other.seen_revision
            await one.run_round()  # nothing newer: an empty answer, nothing adopted
            assert one.node.state == changed

    run(scenario)


def test_a_restart_refuses_an_etcd_holding_another_cluster_or_nothing(etcd: Etcd) -> None:
    async def scenario() -> None:
        async with register_on(etcd.url) as register, register_on(etcd.url + "/empty", "n9", founding=False) as stranger:
            register.node.state = new_state("n7")  # a data directory of another cluster
            with pytest.raises(ConfigError, match="holds the state of cluster c-n1, and this node belongs to c-n7"):
                await register.catch_up()
            stranger.node.state = new_state("n9")
            with pytest.raises(ConfigError, match=r"holds no cluster state, but this node belongs to cluster c-n9"):
                await stranger.catch_up()
            with pytest.raises(Conflict, match="holds the state of cluster c-n1"):
                await register.change(lambda s: s)

    run(scenario)


def test_a_paused_etcd_makes_a_change_fail_with_no_quorum_naming_etcd(etcd: Etcd) -> None:
    async def scenario() -> None:
        async with register_on(etcd.url) as register:
            etcd.server.pause()
            try:
                started = time.monotonic()
                # A poll that gets no answer meanwhile is no error.
                changed, polled = await asyncio.gather(
                    register.change(lambda s: cs.add_member(s, "n2", "http://127.0.0.1:7402")),
                    register.run_round(),
                    return_exceptions=True,
                )
                assert time.monotonic() - started < ETCD_REQUEST_TIMEOUT_MS / 1000 + 1.5
                assert isinstance(changed, NoQuorum), changed
                assert re.search(r"etcd at 127\.0\.0\.1:\d+ .*could not be reached.*Retrying is safe", changed.message)
                assert polled is None
            finally:
                etcd.server.resume()
            changed = await register.change(lambda s: cs.add_member(s, "n2", "http://127.0.0.1:7402"))
            assert changed.has_member("n2")

    run(scenario)


def test_nothing_listening_is_no_quorum_at_once() -> None:
    (port,) = free_ports(1)

    async def scenario() -> None:
        async with register_on(f"etcd://127.0.0.1:{port}", founding=False) as register:
            register.node.state = new_state("n1")
            with pytest.raises(NoQuorum, match="could not be reached"):
                await register.change(lambda s: s)
            await register.catch_up()  # a restart with etcd away starts from the data directory's state
            assert register.node.state == new_state("n1")

    run(scenario)
