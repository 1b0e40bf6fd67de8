"""The member attributes one node knows: its own, and every other member's learnt by gossip.

In-memory state behind a lock, no I/O: engines publish from any thread (a
sidecar's supervisor, a worker thread), gossip merges on the event loop. The
rules — versions, limits, merging — are the pure ``legion.attributes``; this
holder only keeps the current table and numbers this node's publishes.

A node is the only authority on its own record: gossip never replaces it, so
a stale copy relayed by a peer cannot undo a publish. At start the node's
record is empty at a version of the new incarnation, which replaces whatever
its previous life published once it has spread.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping

from legion import attributes
from legion.attributes import Attributes


class MemberAttributes:
    """Every member's attributes as this node knows them; see the module docstring."""

    def __init__(self, node_id: str, incarnation: int) -> None:
        self.node_id = node_id
        self._incarnation = incarnation
        self._counter = 0
        self._lock = threading.Lock()
        self._table: dict[str, Attributes] = {node_id: Attributes(attributes.version_of(incarnation, 0))}

    def publish(self, engine: str, values: Mapping[str, str]) -> None:
        """Replace ``engine``'s attributes of this node; ValueError if they break the rules."""
        with self._lock:
            merged = attributes.with_engine_values(self._table[self.node_id].values(), engine, values)
            self._counter += 1
            version = attributes.version_of(self._incarnation, self._counter)
            self._table[self.node_id] = Attributes.of(version, merged)

    def own(self) -> dict[str, str]:
        with self._lock:
            return self._table[self.node_id].values()

    def digest(self) -> dict[str, int]:
        with self._lock:
            return attributes.digest(self._table)

    def newer_than(self, seen: Mapping[str, int]) -> dict[str, Attributes]:
        """The records a peer whose digest is ``seen`` lacks."""
        with self._lock:
            return attributes.newer_than(self._table, seen)

    def merge(self, received: Mapping[str, Attributes], members: Collection[str]) -> None:
        """Take the newer of each received record of a member (not this node's own: it alone writes that)."""
        others = {node_id: record for node_id, record in received.items() if node_id != self.node_id}
        with self._lock:
            merged = attributes.merge(self._table, attributes.restrict(others, members))
            # Forget members that left: the table stays as small as the membership.
            self._table = attributes.restrict(merged, {*members, self.node_id})

    def values(self, members: Collection[str]) -> dict[str, dict[str, str]]:
        """Each of ``members``' attribute values (empty for one not heard of yet)."""
        with self._lock:
            return {node_id: self._table[node_id].values() if node_id in self._table else {} for node_id in members}
