"""Waiting for a local cluster: until a node answers, or the cluster settles, failing fast if a node dies.

I/O (polls nodes over HTTP, checks their processes). A wait that times out
names what it waited for, the last status seen and where the node logs are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from legion.client import Client
from legion.errors import DeadlineExceeded, LegionError, Unavailable
from legion.node_figures import sample_sum
from legion.runtime.local_cluster import directory as cluster_directory, processes
from legion.runtime.local_cluster.processes import POLL_INTERVAL_S

# How often a long wait on the cluster checks that its node processes live.
LIVENESS_CHECK_INTERVAL_S = 1.0


def wait_healthy(directory: Path, node: dict[str, Any], deadline: float, timeout_s: float) -> None:
    """Wait until the node answers ``/v1/health``; ConfigError with its log if it dies first.

    Another server may answer at the node's address before the node binds it: one that took the
    port after it was chosen (a Dask process's HTTP server answers 404, another cluster's node
    401). That is not the node, which will fail to bind, and the caller then moves it; so such
    an answer is waited past like no answer, and named if the wait times out."""
    with cluster_directory.client(directory, [node]) as client:
        foreign: LegionError | None = None
        while True:
            if not processes.is_running(node):
                raise processes.exited_error(node, f"node {node['id']}")
            try:
                client.health()
                return
            except Unavailable:
                pass
            except LegionError as exc:
                foreign = exc
            if time.monotonic() >= deadline:
                instead = f"; another server answers there ({foreign.message})" if foreign is not None else ""
                raise DeadlineExceeded(
                    f"node {node['id']} did not answer at {node['url']} within {timeout_s:g}s{instead}; see {node['log']}"
                )
            time.sleep(POLL_INTERVAL_S)


def wait_settled(
    client: Client,
    watched: Sequence[dict[str, Any]],
    predicate: Callable[[dict[str, Any]], bool],
    deadline: float,
    timeout_s: float,
    what: str,
) -> dict[str, Any]:
    """``client.wait_for(predicate)`` in short slices, failing fast if a watched node dies."""
    while True:
        for node in watched:
            if not processes.is_running(node):
                raise processes.exited_error(node, f"node {node['id']}")
        remaining = max(0.0, deadline - time.monotonic())
        try:
            return client.wait_for(predicate, timeout_s=min(remaining, LIVENESS_CHECK_INTERVAL_S), interval_s=POLL_INTERVAL_S)
        except DeadlineExceeded as exc:
            if time.monotonic() >= deadline:
                logs = Path(watched[0]["log"]).parent.parent if watched else "the node directories"
                last = exc.details.get("last_status", "none")
                raise DeadlineExceeded(
                    f"timed out after {timeout_s:g}s waiting for {what}; last status: {last}; node logs are under {logs}"
                ) from None


def wait_handed_over(directory: Path, node: dict[str, Any], deadline: float, timeout_s: float) -> None:
    """Wait until ``node`` (removed, or left by partitions) handed every copy it no longer owns to the
    partitions' owners (``legion_partitions_handing_over`` is 0); DeadlineExceeded if it does not."""
    with cluster_directory.client(directory, [node]) as client:
        while True:
            if not processes.is_running(node):
                raise processes.exited_error(node, f"node {node['id']}")
            try:
                left = sample_sum(client.metrics(), "legion_partitions_handing_over")
            except Unavailable:
                left = None
            if left == 0:
                return
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"node {node['id']} still holds {left} partitions it no longer owns after {timeout_s:g}s "
                    f"(their owners must be up to take them); see {node['log']}"
                )
            time.sleep(POLL_INTERVAL_S)


def all_up(node_ids: Sequence[str]) -> Callable[[dict[str, Any]], bool]:
    """Predicate: every named node is an ``up`` member and a voter, and no rebalance is in flight.

    Members become voters one commit at a time after they are up (``legion.consensus``): until
    they all vote, losing one node may leave the cluster unable to decide anything."""

    def check(status: dict[str, Any]) -> bool:
        members = [member(status, node_id) for node_id in node_ids]
        voting = set(status.get("voters", ()))
        return (
            all(m is not None and m.get("status") == "up" for m in members)
            and voting.issuperset(node_ids)
            and not status.get("rebalancing")
        )

    return check


def member(status: dict[str, Any], node_id: str) -> dict[str, Any] | None:
    for member in status.get("members", ()):
        if member.get("id") == node_id:
            return member
    return None
