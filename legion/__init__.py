"""Legion: horizontally scalable, stateful applications.

Legion owns the four hard problems every stateful distributed system meets —
**partitioning, replication, request routing and rebalancing** — so that an
application (an *engine*) only says how one partition's state changes and how
to answer a request against it.

Quickstart (a local 3-node cluster and the bundled key/value engine)::

    $ legion cluster up --nodes 3
    $ legion kv put greeting hello
    $ legion kv get greeting

    >>> from legion import Client
    >>> from engines.kv import KVClient
    >>> kv = KVClient(Client.connect())        # ./.legion, or LEGION_URL + LEGION_TOKEN
    >>> kv.put("greeting", b"hello")
    >>> kv.get("greeting").value
    b'hello'

Architecture — a pure core and an I/O shell:

- ``keyspace``      key → partition (stable BLAKE2b hash, P a power of two)
- ``placement``     partitions → ordered preference lists of N nodes:
                    balanced, minimal movement, no co-located replicas
- ``cluster_state`` the versioned document every node agrees on: members,
                    placement, pending rebalance, epoch, term and voters
- ``consensus``     agreeing on that document: terms, join votes, publications
                    committed by a majority of both voter sets (a replicated
                    register, as Elasticsearch's cluster coordination)
- ``etcd_metadata`` the same document kept in etcd instead (``--metadata
                    etcd://``): the URL, the compare-and-swap on one key, and
                    the choice a data directory records
- ``membership``    failure detector verdicts and the claimant (who campaigns)
- ``clock``         hybrid logical clocks
- ``replication``   operations, last-writer-wins order, quorum arithmetic
- ``checkpoints``   how much of each partition's log its engine holds durably
                    (the translog model): what to re-apply, flush, compact
- ``routing``       which replicas a write, read or coverage request goes to
- ``hints``         hinted handoff: which node keeps a write for an owner that
                    is down (sloppy quorum), what to replay and drop, when a
                    restarted owner has caught up
- ``write_batch``   batch writes: per-item checks, chunks bounded by count and
                    bytes, when each item of a ``write_many`` is decided
- ``engine``        the engine contract (open/apply/read/coverage/fold, services
                    beside the node: start/stop, local_services) and the
                    entry-point registry (group ``legion.engines``)
- ``attributes``    member attributes: small strings a node publishes about
                    itself, merged by gossip (newest version wins)
- ``options``       node options (``--option KEY=VALUE``) handed to engines
- ``durability``    what an acknowledged write survives: ``fsync`` (default)
                    or ``async``, and the SQLite setting each means
- ``json_codec``    JSON read and written with orjson where it gives what the
                    standard ``json`` gives (bulk lines, answers, the client)
- ``errors``        one typed error tree, each with its HTTP status
- ``limits``        every bound, with units
- ``client``        the Python client the CLI is built on

Everything above is plain functions and data: no sockets, no event loop, no
wall clock. ``legion.runtime`` carries their decisions out: ``node`` (one
process), ``http_api`` and ``transport`` (aiohttp server, auth, error mapping,
peer client), ``coordinator`` (fan-out, quorum, retries), ``log_writer`` and
``storage`` (SQLite WAL operation log with group commit), ``gossiper``
(heartbeats, state dissemination, claimant duties), ``state_publisher`` and
``consensus_store`` (campaigning, publishing and voting; the fsynced consensus
record), ``etcd_register`` (in its place with ``--metadata etcd://``: changes
by compare-and-swap in etcd, polling it for newer states), ``handoff_receiver`` (pulling partitions on rebalance and re-sync),
``hinted_handoff`` (keeping, replaying and catching up on hints, stored by
``hint_store``) — all built on ``rounds`` —
``replica_sender`` (batched replication of single writes),
``batch_writer`` (``write_many``: chunks per replica node),
``member_attributes`` (the attributes a node knows), ``sidecar`` (child
processes engines run beside a node), ``local_cluster`` (a package: starting real node
processes locally, the processes engines ask for beside them, the cluster
directory, ports, and waiting for the cluster to settle), ``snapshot_shelf``
and ``snapshot_fetcher`` (partitions moved as engines' files), and
``anti_entropy`` (hash-tree exchanges between replicas). Each component is
handed the node typed as the narrow *host* protocol it declares, built from
``node_view`` (a view of the state, liveness, the local replica): it uses
that and nothing else, and none imports the node module.

Read ``docs/writing-an-engine.md`` to build an engine of your own.
"""

from legion.client import Client
from legion.errors import LegionError

__all__ = ["Client", "LegionError"]
