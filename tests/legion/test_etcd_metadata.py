"""The cluster state in etcd, pure part: the --metadata URL, the recorded choice, and the compare-and-swap.

The swap is checked against a model of the two etcd calls it uses (range, and
a txn comparing one revision), answering as etcd's JSON gateway does; the
runtime is tested against a real etcd (``tests/legion/runtime/test_etcd_register.py``
and ``tests/integration/test_etcd_metadata.py``).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legion import cluster_state as cs
from legion import etcd_metadata as em
from legion.errors import ConfigError, Conflict

TARGET = em.parse_metadata_url("etcd://127.0.0.1:2379/legion/test")


# --- the URL -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "key"),
    [
        ("etcd://127.0.0.1:2379", "127.0.0.1", 2379, "/legion/state"),
        ("etcd://127.0.0.1:2379/", "127.0.0.1", 2379, "/legion/state"),
        ("etcd://etcd.internal:12379/prod/legion-a/", "etcd.internal", 12379, "/prod/legion-a/state"),
        ("etcd://[::1]:2379/x", "::1", 2379, "/x/state"),
    ],
)
def test_a_metadata_url_names_etcd_and_the_key(url: str, host: str, port: int, key: str) -> None:
    target = em.parse_metadata_url(url)
    assert (target.host, target.port, target.key) == (host, port, key)
    assert target.gateway.endswith(f":{port}") and target.gateway.startswith("http://")
    assert target.choice == f"etcd:{key}"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:2379", "must be etcd://HOST:PORT"),
        ("etcd://127.0.0.1", "must be etcd://HOST:PORT"),
        ("etcd://:2379", "must be etcd://HOST:PORT"),
        ("etcd://127.0.0.1:0", "must be etcd://HOST:PORT"),
        ("etcd://127.0.0.1:99999", "must be etcd://HOST:PORT"),
        ("etcd://127.0.0.1:port", "must be etcd://HOST:PORT"),
        ("etcd://127.0.0.1:2379?x=1", "must be etcd://HOST:PORT"),
        ("etcd://user:secret@127.0.0.1:2379", "authentication is not supported"),
        ("etcd://127.0.0.1:2379/a b", "the prefix must be"),
        ("etcd://127.0.0.1:2379/a//b", "the prefix must be"),
        ("127.0.0.1:2379", "must be etcd://HOST:PORT"),
    ],
)
def test_a_malformed_metadata_url_is_refused_saying_what_one_looks_like(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        em.parse_metadata_url(url)
    assert "etcd://127.0.0.1:2379/legion" in caught.value.message or "not supported" in caught.value.message


# --- the recorded choice ----------------------------------------------------------------


def test_a_new_data_directory_takes_either_choice() -> None:
    em.check_choice(None, em.CONSENSUS, has_state=False)
    em.check_choice(None, TARGET.choice, has_state=False)


def test_the_same_choice_again_is_fine() -> None:
    em.check_choice(TARGET.choice, TARGET.choice, has_state=True)
    em.check_choice(em.CONSENSUS, em.CONSENSUS, has_state=True)


def test_a_data_directory_kept_in_etcd_refuses_to_start_without_metadata() -> None:
    with pytest.raises(ConfigError, match=r"in etcd under the key /legion/test/state.*--metadata etcd://HOST:PORT/legion/test"):
        em.check_choice(TARGET.choice, em.CONSENSUS, has_state=True)


def test_a_consensus_data_directory_refuses_etcd() -> None:
    with pytest.raises(ConfigError, match="by consensus among its nodes.*start it without --metadata"):
        em.check_choice(em.CONSENSUS, TARGET.choice, has_state=False)


def test_a_data_directory_from_before_the_choice_kept_its_state_by_consensus() -> None:
    with pytest.raises(ConfigError, match="by consensus among its nodes"):
        em.check_choice(None, TARGET.choice, has_state=True)


def test_another_prefix_is_another_choice() -> None:
    other = em.parse_metadata_url("etcd://127.0.0.1:2379/other").choice
    with pytest.raises(ConfigError, match="/legion/test/state"):
        em.check_choice(TARGET.choice, other, has_state=True)
    # etcd may move: its address is not part of the choice.
    em.check_choice(TARGET.choice, em.parse_metadata_url("etcd://10.1.2.3:2379/legion/test").choice, has_state=True)


def test_a_joiner_keeping_its_state_another_way_is_refused() -> None:
    em.check_same_choice(TARGET.choice, TARGET.choice, "n4")
    with pytest.raises(Conflict, match="node n4 by consensus among its nodes.*same --metadata"):
        em.check_same_choice(TARGET.choice, em.CONSENSUS, "n4")


# --- a model of etcd's range and txn on one key ---------------------------------------------


@dataclass
class ModelEtcd:
    """One key of etcd, answering range and txn bodies as the v3 JSON gateway does (int64 as strings,
    empty and false fields left out). Records every value put, in order."""

    revision: int = 1
    entry: dict[str, str] | None = None
    puts: list[cs.ClusterState] = field(default_factory=list)

    def range(self, body: dict[str, Any]) -> dict[str, Any]:
        assert body["key"] == base64.b64encode(TARGET.key.encode()).decode()
        reply: dict[str, Any] = {"header": {"revision": str(self.revision)}}
        if self.entry is not None and int(self.entry["mod_revision"]) >= int(body.get("min_mod_revision", "0")):
            reply["kvs"] = [dict(self.entry)]
        return reply

    def txn(self, body: dict[str, Any]) -> dict[str, Any]:
        (compare,) = body["compare"]
        held = self.entry or {"create_revision": "0", "mod_revision": "0"}
        field_name = {"CREATE": "create_revision", "MOD": "mod_revision"}[compare["target"]]
        assert compare["result"] == "EQUAL"
        if int(held[field_name]) != int(compare[field_name]):
            (failure,) = body["failure"]
            return {"header": {"revision": str(self.revision)}, "responses": [{"response_range": self.range(failure["request_range"])}]}
        (success,) = body["success"]
        put = success["request_put"]
        self.revision += 1
        created = self.entry["create_revision"] if self.entry else str(self.revision)
        self.entry = {"key": put["key"], "value": put["value"], "create_revision": created, "mod_revision": str(self.revision)}
        self.puts.append(cs.from_dict(json.loads(base64.b64decode(put["value"]))))
        return {"header": {"revision": str(self.revision)}, "succeeded": True, "responses": [{"response_put": {}}]}


def founded(node_id: str = "n1") -> cs.ClusterState:
    return cs.new_cluster("c-test", node_id, f"http://127.0.0.1:70{node_id[-1]}1", 8, 3)


def test_founding_creates_the_key_only_if_there_is_none() -> None:
    etcd = ModelEtcd()
    first = etcd.txn(em.swap_request(TARGET, None, founded("n1")))
    second = etcd.txn(em.swap_request(TARGET, None, founded("n2")))
    swapped, revision, current = em.swap_outcome(first, TARGET)
    assert swapped and revision == 2 and current is None
    swapped, revision, current = em.swap_outcome(second, TARGET)
    assert not swapped and revision is None
    assert current is not None and current.state == founded("n1") and current.mod_revision == 2


def test_a_read_newer_than_the_last_seen_revision_is_empty_until_the_key_changes() -> None:
    etcd = ModelEtcd()
    assert em.read_from_range(etcd.range(em.range_request(TARGET)), TARGET) is None
    etcd.txn(em.swap_request(TARGET, None, founded()))
    read = em.read_from_range(etcd.range(em.range_request(TARGET)), TARGET)
    assert read is not None and read.state == founded()
    assert em.read_from_range(etcd.range(em.range_request(TARGET, newer_than=read.mod_revision)), TARGET) is None


def test_a_value_that_is_not_a_cluster_state_is_a_conflict_naming_the_key() -> None:
    reply = {"kvs": [{"key": "eA==", "value": base64.b64encode(b'{"hello": 1}').decode(), "mod_revision": "5"}]}
    with pytest.raises(Conflict, match="/legion/test/state.*is not a Legion cluster state"):
        em.read_from_range(reply, TARGET)


def test_next_state_builds_on_the_read_state_and_is_none_for_no_change() -> None:
    state = founded()
    changed = cs.add_member(state, "n2", "http://127.0.0.1:7021")
    proposal = em.next_state(state, changed, "n3")
    assert proposal is not None
    assert proposal.epoch == state.epoch + 1 and proposal.term == state.term and proposal.committed_by == "n3"
    assert proposal.previous_voters == state.voters and proposal.has_member("n2")
    assert em.next_state(proposal, cs.add_member(proposal, "n2", "http://127.0.0.1:7021"), "n1") is None


def test_a_read_of_another_cluster_or_an_older_epoch_is_refused() -> None:
    state = founded()
    newer = em.next_state(state, cs.add_member(state, "n2", "http://127.0.0.1:7021"), "n1")
    assert newer is not None
    em.check_read(None, state, TARGET)
    em.check_read(state, newer, TARGET)
    with pytest.raises(Conflict, match="older than the epoch"):
        em.check_read(newer, state, TARGET)
    other = cs.new_cluster("c-other", "n1", "http://127.0.0.1:7011", 8, 3)
    with pytest.raises(Conflict, match="holds the state of cluster c-other"):
        em.check_read(state, other, TARGET)


@dataclass
class Changer:
    """A node adding one member: read, apply, swap; on a lost swap, apply to the value that won (as
    ``runtime.etcd_register`` does)."""

    joiner: str
    read: em.Read | None = None
    acknowledged: cs.ClusterState | None = None
    lost: int = 0

    def step(self, etcd: ModelEtcd) -> None:
        if self.read is None:
            self.read = em.read_from_range(etcd.range(em.range_request(TARGET)), TARGET)
            return
        change = cs.add_member(self.read.state, self.joiner, f"http://127.0.0.1:1{self.joiner[1:]}")
        proposal = em.next_state(self.read.state, change, f"via-{self.joiner}")
        assert proposal is not None, "every changer adds a new member"
        swapped, revision, current = em.swap_outcome(etcd.txn(em.swap_request(TARGET, self.read, proposal)), TARGET)
        if swapped:
            assert revision is not None
            self.acknowledged = proposal
        else:
            assert current is not None
            self.read, self.lost = current, self.lost + 1


@settings(max_examples=200, deadline=None)
@given(
    changers=st.integers(min_value=1, max_value=5),
    schedule=st.lists(st.integers(min_value=0, max_value=4), max_size=40),
)
def test_concurrent_changes_all_land_on_one_chain_of_states(changers: int, schedule: list[int]) -> None:
    etcd = ModelEtcd()
    etcd.txn(em.swap_request(TARGET, None, founded()))
    nodes = [Changer(f"x{i}") for i in range(changers)]
    for index in schedule:  # any interleaving of reads and swaps
        node = nodes[index % changers]
        if node.acknowledged is None:
            node.step(etcd)
    while any(node.acknowledged is None for node in nodes):  # then each goes on until acknowledged
        for node in nodes:
            if node.acknowledged is None:
                node.step(etcd)
    final = etcd.puts[-1]
    for node in nodes:
        assert final.has_member(node.joiner), f"the acknowledged join of {node.joiner} was lost"
    assert [s.epoch for s in etcd.puts] == list(range(1, 2 + changers)), "one epoch per swap, one chain"
    for parent, child in zip(etcd.puts, etcd.puts[1:]):
        assert child.previous_voters == parent.voters, "each state is built on the one before"
        assert {m.id for m in parent.members} <= {m.id for m in child.members}
    assert all(node.acknowledged in etcd.puts for node in nodes), "acknowledged only what etcd took"
