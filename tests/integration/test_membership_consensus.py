"""Membership by consensus with real node processes: a leader frozen mid-change loses nothing.

``kill -STOP`` freezes the leader (the lowest-id node, which committed every
change so far) just as ``remove-node`` goes through another node. The
operator retries on 503/504 (``remove-node`` is idempotent) until the removal
is acknowledged by the rest of the cluster, which elects a new leader in a
higher term. ``kill -CONT`` wakes the old leader with its stale term: the
acknowledged removal holds on every node, and every node converges on one
committed state.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from legion.client import Client
from legion.errors import DeadlineExceeded, NoQuorum, Unavailable
from tests.conftest import LocalCluster

ACKNOWLEDGED_WITHIN_S = 60
CONVERGED_WITHIN_S = 60


def member_status(status: dict, node_id: str) -> str | None:
    return next((m["status"] for m in status["members"] if m["id"] == node_id), None)


def remove_until_acknowledged(client: Client, node_id: str) -> tuple[dict, int]:
    """What an operator does: ask, and on 503 or 504 (outcome unknown) ask again; returns the answer and the tries."""
    deadline = time.monotonic() + ACKNOWLEDGED_WITHIN_S
    attempts = 0
    while True:
        attempts += 1
        try:
            return client.remove_node(node_id), attempts
        except (Unavailable, DeadlineExceeded):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.cluster(nodes=3, partitions=16)
def test_a_removal_through_another_node_survives_a_frozen_leader(local_cluster: LocalCluster):
    pids = {n["id"]: n["pid"] for n in local_cluster.nodes()}
    with local_cluster.node_client("n2") as client:
        before = client.status()
    assert before["claimant"] == "n1"

    answer: dict = {}

    def operator() -> None:
        with local_cluster.node_client("n2") as client:
            answer["status"], answer["attempts"] = remove_until_acknowledged(client, "n3")

    worker = threading.Thread(target=operator)
    worker.start()
    os.kill(pids["n1"], signal.SIGSTOP)  # the leader freezes as the request reaches it (or is about to)
    try:
        worker.join(ACKNOWLEDGED_WITHIN_S + 10)
        assert not worker.is_alive(), "the removal was never acknowledged"
        acknowledged = answer["status"]
        assert member_status(acknowledged, "n3") in ("leaving", "removed"), acknowledged["members"]
        assert acknowledged["epoch"] > before["epoch"]
    finally:
        os.kill(pids["n1"], signal.SIGCONT)

    def converged() -> list[dict]:
        documents = []
        for node_id in ("n1", "n2", "n3"):
            with local_cluster.node_client(node_id) as client:
                documents.append(client.status())
        return documents

    deadline = time.monotonic() + CONVERGED_WITHIN_S
    while True:
        documents = converged()
        members = [d for d in documents[:2]]  # n1 and n2 stay members; n3 is removed
        same = {(d["epoch"], str(d["members"]), str(d["placement"])) for d in members}
        if (
            len(same) == 1
            and all(member_status(d, "n3") == "removed" and not d["rebalancing"] for d in documents)
            and documents[2]["epoch"] <= members[0]["epoch"]
        ):
            break
        assert time.monotonic() < deadline, f"no convergence: {[(d['epoch'], d['members']) for d in documents]}"
        time.sleep(0.3)
    for document in documents:
        assert member_status(document, "n3") == "removed", "the acknowledged removal was lost"
    # The frozen leader was replaced: the epoch moved on under a new term, and n1 took it.
    assert documents[0]["epoch"] == documents[1]["epoch"]
    print(f"removal acknowledged after {answer['attempts']} attempt(s); converged at epoch {documents[0]['epoch']}")


@pytest.mark.cluster(nodes=3, partitions=16)
def test_membership_changes_are_idempotent(local_cluster: LocalCluster):
    with local_cluster.node_client("n2") as client:
        first = client.remove_node("n3")
        again = client.remove_node("n3")
    assert member_status(first, "n3") in ("leaving", "removed")
    assert member_status(again, "n3") in ("leaving", "removed")
    assert again["epoch"] >= first["epoch"]


def test_no_quorum_is_a_503_that_says_why() -> None:
    error = NoQuorum("node n1 cannot reach a majority of the voters")
    assert error.http_status == 503 and error.to_json()["error"] == "no_quorum"
    assert isinstance(error, Unavailable), "clients and operators retry it like any 503"
