"""Local clusters: real node processes on loopback, for development, the demo and tests.

Does I/O: spawns and signals processes, probes ports, reads and writes the
cluster directory. Nothing here is needed to run a production node; it is
what ``legion cluster up`` and the test fixtures use to get a cluster of real
``legion node start`` processes on one machine. One module per concern:

- ``commands``: up, down, add-node, remove-node, start-node, stop-node (re-exported here);
- ``directory``: the cluster directory below, and a client for it;
- ``ports``: free ports on loopback;
- ``processes``: spawning detached processes, recognising and stopping them;
- ``services``: the processes engines ask for beside the nodes (a Dask scheduler);
- ``readiness``: waiting until nodes answer and the cluster settles.

A cluster directory ``DIR`` holds::

    DIR/cluster.json        {"partitions", "replicas", "durability", "options", "services", "metrics_open", "tls",
                            "metadata", "nodes": [node, ...]}
    DIR/token               the cluster token (mode 0600)
    DIR/tls/ca.pem, ca.key  the private CA of a ``--tls`` cluster (the key mode 0600)
    DIR/nodes/<id>/tls/     that node's certificate and key, signed by the CA
    DIR/nodes/<id>/         one node's data directory
    DIR/nodes/<id>/node.log that node's stdout and stderr
    DIR/services/<engine>/  the local services an engine asked for (``services``)

where each node is ``{"id", "url", "data_dir", "pid", "log", "join", "removed"}``:
``pid`` is null while the node is stopped, ``join`` the seed URL it was first
started with, ``removed`` true once it has left the cluster for good (its
entry stays so that its id is never reused). ``options`` are what every node
is started with (``--option KEY=VALUE``: the user's, plus what the local
services yield), kept so that restarted and added nodes get the same; so is
``durability``, every node's ``--durability`` (``legion.durability``), and
``metadata``, every node's ``--metadata`` (null: consensus among the nodes).
``legion.client.Client.connect`` reads the same file.

Node processes run in their own session, so they outlive the command that
started them and a Ctrl-C in its terminal does not reach them. Two commands
must not change one cluster directory at the same time.
"""

from legion.runtime.local_cluster.commands import (
    Progress,
    add_node,
    dashboard_url,
    down,
    remove_node,
    start_node,
    stop_node,
    up,
)
from legion.runtime.local_cluster.directory import load

__all__ = ["Progress", "add_node", "dashboard_url", "down", "load", "remove_node", "start_node", "stop_node", "up"]
