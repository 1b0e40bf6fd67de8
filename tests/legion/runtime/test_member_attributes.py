"""One node's table of member attributes: publishing, merging gossip, forgetting removed members."""

from __future__ import annotations

import threading

import pytest

from legion import attributes
from legion.attributes import Attributes
from legion.runtime.member_attributes import MemberAttributes


def test_publishing_replaces_the_engines_keys_and_bumps_the_version():
    board = MemberAttributes("n1", incarnation=10)
    before = board.digest()["n1"]
    board.publish("mr", {"mr.worker": "tcp://a", "mr.threads": "2"})
    board.publish("kv", {"kv.mode": "fast"})
    board.publish("mr", {"mr.worker": "tcp://b"})
    assert board.own() == {"kv.mode": "fast", "mr.worker": "tcp://b"}
    assert board.digest()["n1"] == before + 3


def test_a_refused_publish_changes_nothing():
    board = MemberAttributes("n1", incarnation=10)
    board.publish("mr", {"mr.worker": "tcp://a"})
    version = board.digest()["n1"]
    with pytest.raises(ValueError):
        board.publish("mr", {"kv.stolen": "x"})
    assert board.own() == {"mr.worker": "tcp://a"} and board.digest()["n1"] == version


def test_gossip_never_replaces_the_nodes_own_record():
    board = MemberAttributes("n1", incarnation=10)
    board.publish("mr", {"mr.worker": "tcp://mine"})
    stale = {"n1": Attributes.of(attributes.version_of(99, 0), {"mr.worker": "tcp://relayed"})}
    board.merge(stale, members={"n1", "n2"})
    assert board.own() == {"mr.worker": "tcp://mine"}


def test_records_of_members_that_left_are_forgotten_and_unknown_ones_ignored():
    board = MemberAttributes("n1", incarnation=10)
    board.merge({"n2": Attributes.of(5, {"mr.w": "2"}), "n3": Attributes.of(5, {"mr.w": "3"})}, members={"n1", "n2", "n3"})
    assert board.values(["n2", "n3"]) == {"n2": {"mr.w": "2"}, "n3": {"mr.w": "3"}}
    board.merge({"n9": Attributes.of(5, {"mr.w": "9"})}, members={"n1", "n2"})  # n3 removed; n9 not a member
    assert set(board.digest()) == {"n1", "n2"}
    assert board.values(["n2", "n4"]) == {"n2": {"mr.w": "2"}, "n4": {}}


def test_publishes_from_many_threads_each_get_their_own_version():
    board = MemberAttributes("n1", incarnation=10)
    start = board.digest()["n1"]

    def publish_many(engine: str) -> None:
        for i in range(200):
            board.publish(engine, {f"{engine}.i": str(i)})

    threads = [threading.Thread(target=publish_many, args=(f"e{t}",)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert board.digest()["n1"] == start + 800
    assert board.own() == {f"e{t}.i": "199" for t in range(4)}
