"""The narrow views a node offers the runtime components it is made of, as typing protocols.

Typing only. A component (coordinator, gossiper, handoff receiver,
anti-entropy, state publisher, snapshot fetcher, the peer and operator HTTP
APIs) is handed the node, but typed as the *host* protocol it declares in its
own module, built from the views here: a view of the cluster state and the
peers (``StateView``), liveness (``Liveness``) and the local replica
(``LocalReplica``), plus whatever else that component alone needs. So a
component's host protocol lists exactly what it may touch, and no component
imports ``legion.runtime.node``: the node depends on its parts, never the
other way round. ``tests/legion/runtime/test_node_view.py`` checks both, and
that the node provides every member of every host protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from legion.cluster_state import ClusterState
    from legion.engine import Engine
    from legion.errors import LegionError
    from legion.replication import Operation
    from legion.runtime.log_writer import LogWriter
    from legion.runtime.member_attributes import MemberAttributes
    from legion.runtime.node_metrics import NodeMetrics
    from legion.runtime.transport import PeerClient


class ForwardToClaimant(Exception):
    """Raised by a host's ``change_state`` on a node that may not decide: the HTTP layer forwards to ``url``."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class StateRegister(Protocol):
    """Where this node's changes to the cluster state are decided: the voters' register
    (``state_publisher``) or etcd (``etcd_register``), chosen once when the node is made."""

    async def change(self, change: Callable[[ClusterState], ClusterState]) -> ClusterState:
        """Commit ``change`` applied to the last committed state; the committed state once it is held."""
        ...

    async def stop(self) -> None: ...

    def on_start_join(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def on_publish(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def on_commit(self, body: dict[str, Any]) -> dict[str, Any]: ...


class StateView(Protocol):
    """The cluster state as this node believes it, who this node is, and the means to reach its peers."""

    node_id: str
    state: ClusterState
    peers: PeerClient
    metrics: NodeMetrics
    attributes: MemberAttributes


class Liveness(Protocol):
    """Which members this node counts live right now (its failure detector and recent failures)."""

    def live(self) -> set[str]: ...


class LocalReplica(Protocol):
    """This node's replicas: its engines, its log writer, and reads and writes served from them."""

    engines: dict[str, Engine]
    writer: LogWriter

    def check_holds(self, engine: str, partition: int) -> Engine: ...

    async def accept_ops(self, ops: list[Operation], *, flush: bool = False) -> dict[int, LegionError]: ...

    async def local_read(self, engine: str, partition: int, query: Any, *, version_of: bytes | None = None) -> Any: ...

    async def local_coverage(self, engine: str, partitions: Sequence[int], query: Any) -> Any: ...
