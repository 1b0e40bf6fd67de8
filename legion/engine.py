"""The engine contract: what an application plugs into the Legion core.

Pure declarations, no I/O. An *engine* says how one partition's state changes
(``apply``) and how to answer a request against it (``read``, ``coverage``);
the core decides everything else — which nodes hold which partitions, where a
request goes, retries, durability of the operation log, and moving
partitions between nodes. It is Riak Core's vnode behaviour in Python.

Lifecycle, per node process (the *runtime* is the caller of every method):

1. ``__init__(root)`` once, with a directory that belongs to this engine on
   this node. Then the core sets ``durability`` (``legion.durability``: the
   node's mode, ``"fsync"`` or ``"async"``) before any other call.
2. ``open(partition, directory)`` for every partition this node holds or is
   about to receive, before any other call names that partition. After a
   restart the core opens the partition again and replays, through ``apply``,
   the logged operations above the engine's checkpoint (see 4) — so ``apply``
   must tolerate seeing an operation twice.
3. ``validate(op)`` on the event loop for every operation a replica
   receives, before it is logged; it must be cheap and raise ``BadRequest``
   for anything ``apply`` could not apply.
   ``apply(partition, ops)`` from the node's single writer thread: never two
   calls at once, ops in arbitrary order (possibly old ones, possibly already
   applied). Must be idempotent and commutative: the state reached must equal
   the state reached by any other order of the same set of operations. An
   engine that keeps every write (a counter, a set) keeps one entry per
   ``op.id``: the attempts of a write retried under an idempotency key share
   that id (``legion.idempotency``). ``legion.testing.convergence`` checks it.
   ``apply_batch`` is what the writer thread actually calls, once per group
   commit with every partition's share: by default it is ``apply`` per partition.
4. Durability — the translog model. With ``durable_on_apply = True`` (the
   default) the state must be durable when ``apply`` returns, and the core
   moves the partition's checkpoint past those operations at once. An engine
   that sets it to ``False`` may keep applied operations in memory (visible or
   not) and make them durable in ``flush(partitions)``; the core calls
   ``flush`` from the writer thread on an interval and every so many
   operations (``legion.limits.FLUSH_INTERVAL_MS`` / ``FLUSH_OPS_MAX``), when a
   write asks to be visible before it is acknowledged (``refresh``), after a
   replay, after a handoff copied the partition in (before it is served from
   here), and before ``drop`` and ``close``. Only after ``flush`` returns does
   the checkpoint move; the operation log below every engine's checkpoint is
   compacted, and a restart replays the log above it. The checkpoint is a
   contiguous prefix: when ``apply_batch`` raises, its operations stay in the
   log, the checkpoint stops below them, and the core re-applies the log from
   there until it succeeds.
   *Durable* means what the node's ``durability`` says: in ``fsync`` mode
   (the default) on stable storage — fsynced, surviving power loss (SQLite
   with ``synchronous=FULL``, ``os.fsync`` of files and their directory); in
   ``async`` mode handed to the OS — surviving ``kill -9`` of the process
   only. An engine with its own store must honour it: the log rows below its
   checkpoint are deleted, so a state that is less durable than the log
   would lose acknowledged writes on power loss.
5. ``read(partition, query)`` from worker threads (on the event loop if the
   engine sets ``inline_reads``), possibly while ``apply`` runs on the same
   partition. ``coverage_many(partitions, query)`` answers one node's share
   of a whole-keyspace request — the partitions a coverage plan assigned to
   this node — in one call; by default it calls ``coverage(partition, query)``
   for each partition (the runtime then runs those calls in parallel threads)
   and returns their replies as a list in the order of ``partitions``. An
   engine that keeps all its partitions in one structure (one search index
   per node) overrides ``coverage_many`` and returns one value for the lot.
   Replies are msgpack-able; the engine's HTTP handler merges them.
6. ``fold(partition)`` when another node takes a copy of the partition
   (handoff): yields operations which, applied to an empty partition, rebuild
   this partition's state exactly — tombstones included.
   Optionally, an engine whose partition lives in immutable files moves it as
   a **snapshot** instead: ``snapshot(partition, into)`` (writer thread, right
   after a flush) hard-links those files under ``into`` and returns a
   ``PartitionSnapshot`` naming them, plus any operations not in files; the
   gaining node fetches the files (resumable per file) and calls
   ``install(partition, directory, snapshot)`` (writer thread), which merges
   them into what the partition holds, as applying the fold would (the
   core then lists the partition's ``versions`` again). The default
   ``snapshot`` returns None: the fold is used.
   Active anti-entropy (``legion.runtime.anti_entropy``) compares replicas
   key by key through three more methods, from worker threads (like
   ``read``), possibly while ``apply`` runs. ``versions(partition)`` lists
   ``(key, version)`` — both bytes — for every key the partition holds state
   for, tombstones included; ``versions(partition, keys)`` only for those of
   ``keys`` it holds. A version is opaque: two replicas must list the same
   version for a key exactly when they hold the same state for it (KV:
   ``b"<hlc>@<origin>"`` of the winning entry). ``fold_keys(partition,
   keys)`` yields the operations of ``fold`` that rebuild those keys' state
   (unknown keys are skipped). ``digest_keys(op)`` names the keys of
   ``op.partition`` whose version applying ``op`` may change — or None when
   it may change any key of any partition (a catalog change shared by every
   partition: the core then lists them all again); the core calls it from
   the writer thread after each ``apply``, so it must be cheap. The defaults derive all
   three from ``fold``, with keys being the keys of the folded operations
   and a key's version the digest of its folded operations
   (``legion.hash_tree.ops_version``): correct for any engine whose ``fold``
   keys its operations like the ones it is sent, but each call folds the
   whole partition, so an engine with more than a few thousand keys per
   partition implements them over its store. An engine may choose other
   keys (a map/reduce batch id), as long as the three methods agree.
7. ``drop(partition)`` then ``close(partition)`` when the partition moved
   away for good (the core then deletes its directory); ``close`` alone at
   shutdown.

8. Services beside the node (optional; the defaults do nothing).
   ``start(node)`` once per node process, from a worker thread, after the
   node serves HTTP, has its cluster state and has opened every partition it
   holds (``reconcile``), and before its first gossip round. ``node`` is a
   ``NodeInfo``: id, URL, data directory, this engine's root, the node
   options (``legion node start --option KEY=VALUE``) and ``publish``. It
   must return within ``legion.limits.ENGINE_START_TIMEOUT_MS``: start
   sidecar processes (``legion.runtime.sidecar.Sidecar``: they die with the
   node, even on ``kill -9``) and publish attributes, but do not wait for a
   sidecar to be ready. If it raises, the node does not start.
   ``publish(values)`` replaces this engine's *member attributes* of this
   node — small strings, keys named ``<engine name>.<anything>``, at most
   ``ATTRIBUTE_KEYS_MAX`` per node (all engines together), values of at most
   ``ATTRIBUTE_VALUE_CHARS_MAX`` characters; a ``ValueError`` otherwise (a
   bug, not a bad request). Callable from any thread until ``stop`` returns.
   Gossip spreads them to every node (``Cluster.placement().attributes``,
   ``GET /v1/cluster``); they are ephemeral, so ``start`` publishes them
   again after every restart.
   ``stop()`` once at shutdown, from a worker thread, once the HTTP server
   has closed (no handler runs any more) and before any partition is
   closed; also when another engine's ``start`` failed, and after a
   ``start`` that raised (so it must tolerate a partial start). It must stop
   whatever ``start`` started within ``ENGINE_STOP_TIMEOUT_MS``.
   The classmethod ``local_services(directory, options)`` is not called on
   a node: ``legion cluster up`` asks it, before starting any node, for
   processes to run beside a *local* cluster (a Dask scheduler); see
   ``LocalService``. Return nothing when ``options`` already name an
   existing service (``--option mr.scheduler=tcp://…``).

Tracing: ``current_request_id()`` is the id of the client request being
served — in handlers, and in the ``read``/``coverage``/``coverage_many``
calls made for it, on whichever node runs them (peer calls carry the id);
"" elsewhere, e.g. in ``apply``, whose batches mix many requests.

HTTP: ``routes()`` declares the engine's endpoints under ``/v1/<name>/``. A
handler gets an ``HttpRequest`` and the node's ``Cluster`` (the coordinator:
``write``/``write_many``/``read``/``coverage`` across replicas, and
``placement()``, a ``PlacementView`` of who holds what, who is live and
their attributes) and returns an ``HttpResponse``. Raising a
``LegionError`` gives the matching 4xx/5xx.

Operating (optional; the defaults contribute nothing): ``metrics()`` returns
plain figures about this engine's state on this node (``{"keys": 1200.0}``),
from any thread, at every scrape of ``GET /metrics`` (exported as
``legion_<engine>_<figure>``) and every refresh of the dashboard; it must be
cheap (a count, not a scan of values). ``dashboard_panel()`` returns a
``legion.dashboard.DashboardPanel`` declaring this engine's panel on the
dashboard (``/ui/``): which figures to show and which lookup forms to offer.

CLI: the classmethod ``cli()`` may return a typer app mounted as ``legion <name> …``; its
commands must talk to the cluster through ``legion.Client`` only.

Engines are found through the ``legion.engines`` entry-point group, so a
third-party package adds one with no change to ``legion/`` (``legion engine
new NAME`` writes such a package). A node that lacks an engine another node
names answers ``EngineMissing`` for it, and 404 for its routes.
"""

from __future__ import annotations

import contextvars
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from legion.dashboard import DashboardPanel
from legion.durability import DEFAULT as DEFAULT_DURABILITY, Durability
from legion import json_codec
from legion.errors import BadRequest, ConfigError, LegionError
from legion.hash_tree import ops_version
from legion.replication import Operation

ENTRY_POINT_GROUP = "legion.engines"
SERVICE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

# Set by the runtime for each request it serves (see ``current_request_id``). A
# context variable: tasks and worker threads started for the request inherit it.
REQUEST_ID_CONTEXT: contextvars.ContextVar[str] = contextvars.ContextVar("legion_request_id", default="")


def current_request_id() -> str:
    """The id of the request being served ("" outside one), for an engine's logs and traces."""
    return REQUEST_ID_CONTEXT.get()


def parse_flag(name: str, raw: str | None) -> bool:
    """A boolean query parameter: ``1``/``true`` or ``0``/``false`` (absent or empty: false)."""
    if raw is None or raw in ("", "0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise BadRequest(f"query parameter {name!r} must be 1, true, 0 or false; got {raw!r}")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An engine handler's view of one HTTP request (already authenticated).

    ``headers`` looks names up case-insensitively, as HTTP requires. For a
    route declared with ``stream_body=True``, ``body`` is empty and ``stream``
    yields the body in chunks as it arrives (at most
    ``legion.limits.STREAM_BODY_BYTES_MAX`` bytes; more raises PayloadTooLarge)."""

    method: str
    path_params: Mapping[str, str]
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    request_id: str = ""
    stream: AsyncIterator[bytes] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.headers, (CIMultiDict, CIMultiDictProxy)):
            object.__setattr__(self, "headers", CIMultiDictProxy(CIMultiDict(self.headers)))

    def json(self) -> Any:
        """The body parsed as JSON; BadRequest if it is not."""
        try:
            return json_codec.loads(self.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
            raise BadRequest(f"request body is not valid JSON: {exc}") from None

    def int_param(self, name: str, default: int | None = None) -> int | None:
        """An optional integer query parameter; BadRequest if it is not an integer."""
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise BadRequest(f"query parameter {name!r} must be an integer, got {raw!r}") from None

    def flag_param(self, name: str) -> bool:
        """An optional boolean query parameter (``1``/``true``, ``0``/``false``); BadRequest otherwise."""
        return parse_flag(name, self.query.get(name))


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What an engine handler answers: status, body bytes, content type, headers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> HttpResponse:
        return cls(status=status, body=json_codec.dumps(value), content_type="application/json")


@dataclass(frozen=True, slots=True)
class PartitionSnapshot:
    """A partition as an engine's immutable files, for handoff: what ``Engine.snapshot`` returns.

    ``files`` are paths relative to the snapshot directory (``/``-separated, no
    ``..``); ``operations`` carry what is not in files (a catalog, say), applied
    through the log on the gaining node like a fold's."""

    files: Sequence[str]
    operations: Sequence[Operation] = ()


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What ``Cluster.write`` reports once the write met its quorum (and one item of ``write_many``)."""

    partition: int
    hlc: int
    acks: int
    replicas: int


@dataclass(frozen=True, slots=True)
class WriteItem:
    """One operation of a ``Cluster.write_many`` batch: its key, kind and body.

    ``idempotency_key`` names the write so that a retry of it is the same
    operation (``legion.idempotency``); without one, the request's
    ``Idempotency-Key`` header (if any) names it."""

    key: bytes
    kind: str
    body: bytes = b""
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class NodeReply:
    """One node's answer to a coverage round: the partitions it answered for and its reply.

    ``value`` is what the engine's ``coverage_many`` returned — by default a
    list with one ``coverage`` reply per partition, in the order of ``partitions``."""

    node: str
    partitions: tuple[int, ...]
    value: Any


@dataclass(frozen=True, slots=True)
class CoverageResult:
    """The outcome of one coverage round.

    ``served_by`` says which replica answered for each partition; pass it as
    ``prefer`` to run a second round on the same plan. ``missing`` lists the
    partitions no live replica answered for (empty unless ``allow_partial``)."""

    replies: tuple[NodeReply, ...]
    served_by: Mapping[int, str]
    missing: tuple[int, ...]

    def by_partition(self) -> dict[int, Any]:
        """One reply per partition, for engines that keep the default ``coverage_many``."""
        out: dict[int, Any] = {}
        for reply in self.replies:
            if not isinstance(reply.value, list) or len(reply.value) != len(reply.partitions):
                raise BadRequest("coverage replies are not one per partition (the engine overrides coverage_many)")
            out.update(zip(reply.partitions, reply.value))
        return out


@dataclass(frozen=True, slots=True)
class PlacementView:
    """A read-only picture of the cluster for planning work (``Cluster.placement()``).

    ``preference[p]`` is partition ``p``'s current preference list, primary
    first; ``live`` the members this node believes live; ``attributes`` and
    ``urls`` are per member (not removed ones). A snapshot: it does not follow
    later changes, so take a new one per request."""

    partitions: int
    preference: tuple[tuple[str, ...], ...]
    live: frozenset[str]
    attributes: Mapping[str, Mapping[str, str]]
    urls: Mapping[str, str]
    epoch: int

    def live_replicas(self, partition: int) -> tuple[str, ...]:
        """The live nodes of ``partition``'s preference list, in preference order."""
        return tuple(node for node in self.preference[partition] if node in self.live)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What ``Engine.start`` learns about its node (see the module docstring, item 8).

    ``data_dir`` is the node's data directory, ``root`` this engine's own
    directory in it; ``options`` are the node options (``--option KEY=VALUE``);
    ``publish`` replaces this engine's member attributes."""

    node_id: str
    url: str
    data_dir: Path
    root: Path
    options: Mapping[str, str]
    publish: Callable[[Mapping[str, str]], None]


@dataclass(frozen=True, slots=True)
class LocalService:
    """A process ``legion cluster up`` runs beside a local cluster's nodes, for one engine.

    ``argv`` is run with ``env`` added to the environment, its output in
    ``<cluster dir>/services/<engine>/<name>.log``. It is ready once
    ``ready_file`` exists and is not empty, or once ``ready_address``
    (``HOST:PORT``) accepts a TCP connection — exactly one of the two. Then
    ``options_to_nodes`` join the options of every node of the cluster (an
    option the user passed wins). ``legion cluster down`` stops it; a node
    restarted with ``start-node`` restarts it first if it is not running."""

    name: str
    argv: Sequence[str]
    ready_file: Path | None = None
    ready_address: str | None = None
    options_to_nodes: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not SERVICE_NAME_PATTERN.match(self.name):
            raise ConfigError(f"local service name {self.name!r} must be letters, digits, '_' or '-'")
        if not self.argv or not all(isinstance(arg, str) for arg in self.argv):
            raise ConfigError(f"local service {self.name!r} needs an argv of strings")
        if (self.ready_file is None) == (self.ready_address is None):
            raise ConfigError(f"local service {self.name!r} needs exactly one of ready_file and ready_address")
        object.__setattr__(self, "argv", tuple(self.argv))


class Cluster(Protocol):
    """The coordinator an engine's HTTP handlers use; implemented by the runtime."""

    node_id: str
    partitions: int

    def partition_of(self, key: bytes) -> int: ...

    async def write(
        self, engine: str, key: bytes, kind: str, body: bytes, *, w: int | None = None, refresh: bool = False
    ) -> WriteResult:
        """Stamp one operation, send it to every live replica, wait for ``w`` durable appends.

        With ``refresh``, every replica flushes the partition before it acknowledges
        and the call waits for every live replica (still requiring ``w``)."""
        ...

    async def write_many(
        self, engine: str, items: Sequence[WriteItem], *, w: int | None = None, refresh: bool = False
    ) -> list[WriteResult | LegionError]:
        """Stamp one operation per item and send them grouped by replica node, in bounded chunks.

        Returns one entry per item, in order: its ``WriteResult`` once ``w``
        replicas logged it, or the ``LegionError`` that item met (an oversized
        body, too few live replicas, a refusal). One bad item fails alone."""
        ...

    async def read(self, engine: str, key: bytes, query: Any, *, r: int | None = None) -> list[Any]:
        """``engine.read`` on ``r`` live replicas of ``key``'s partition; their replies."""
        ...

    async def coverage(
        self,
        engine: str,
        query: Any,
        *,
        partitions: Sequence[int] | None = None,
        prefer: Mapping[int, str] | None = None,
        deadline_ms: int | None = None,
        allow_partial: bool = False,
    ) -> CoverageResult:
        """``engine.coverage_many`` on one live replica of every partition (or of ``partitions``).

        Partitions are grouped into one call per node, nodes asked in parallel; a
        node that fails has its partitions re-planned onto other replicas.
        ``prefer`` (partition → node, e.g. a previous round's ``served_by``) keeps
        a second round on the same replicas where they are still live. Raises
        ``Unavailable`` naming the missing partitions unless ``allow_partial``."""
        ...

    def placement(self) -> PlacementView:
        """Who holds which partition now, who is live, and every member's attributes and URL."""
        ...


Handler = Callable[[HttpRequest, Cluster], Awaitable[HttpResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    """One HTTP endpoint an engine serves, e.g. ``Route("GET", "/v1/kv/{key}", get)``.

    ``stream_body``: the handler reads the body from ``HttpRequest.stream`` as it
    arrives (bulk uploads) instead of receiving it whole, under a larger size cap."""

    method: str
    path: str
    handler: Handler
    stream_body: bool = False


class Engine(ABC):
    """Base class of every engine. See the module docstring for when each method is called."""

    name: ClassVar[str]
    # True when ``read`` is a bounded point lookup (tens of microseconds): the runtime
    # then calls it on the event loop, skipping a thread hop that would cost more than the read.
    inline_reads: ClassVar[bool] = False
    # False when ``apply`` defers durability to ``flush`` (the translog model; see the module docstring).
    durable_on_apply: ClassVar[bool] = True
    # The node's durability mode, set by the core after ``__init__`` and before the first ``open``:
    # what ``apply`` (or ``flush``) must make durable means (module docstring, item 4).
    durability: Durability = DEFAULT_DURABILITY

    def __init__(self, root: Path) -> None:
        self.root = root

    @abstractmethod
    def open(self, partition: int, directory: Path) -> None:
        """Open (creating if needed) one partition's state stored under ``directory``."""

    @abstractmethod
    def close(self, partition: int) -> None:
        """Release one partition's resources; its files stay on disk."""

    def validate(self, op: Operation) -> None:
        """Raise BadRequest if ``op`` is not one this engine can apply.

        Called on every replica before the operation is logged, so a malformed
        operation is refused alone instead of failing the batch it would join."""

    @abstractmethod
    def apply(self, partition: int, ops: Sequence[Operation]) -> None:
        """Apply a batch of operations idempotently and commutatively (durably, unless ``durable_on_apply`` is False)."""

    def apply_batch(self, batch: Mapping[int, Sequence[Operation]]) -> None:
        """Apply several partitions' operations at once (what the writer thread calls).

        The default applies partition by partition; an engine that keeps several
        partitions in one store overrides it to commit them together."""
        for partition, ops in batch.items():
            self.apply(partition, ops)

    def flush(self, partitions: Collection[int]) -> None:
        """Make every operation applied so far to ``partitions`` durable (and, for a search index, visible).

        Called from the writer thread; only for engines with ``durable_on_apply = False``.
        After it returns the core moves these partitions' checkpoints and may compact their log."""

    def drop(self, partition: int) -> None:
        """The partition moved to other nodes for good: delete its state.

        Called while the partition is still open, just before ``close``; the
        core deletes the partition's directory afterwards, so an engine that
        keeps everything in that directory need not override this."""

    @abstractmethod
    def read(self, partition: int, query: Any) -> Any:
        """Answer a single-partition read; return a msgpack-able value."""

    def coverage(self, partition: int, query: Any) -> Any:
        """Answer one partition's share of a whole-keyspace request."""
        raise BadRequest(f"engine {self.name!r} has no coverage requests")

    def coverage_many(self, partitions: Sequence[int], query: Any) -> Any:
        """Answer several partitions' share of a whole-keyspace request in one call.

        The default returns ``[coverage(p, query) for p in partitions]``; when an
        engine keeps it, the runtime calls ``coverage`` per partition in parallel
        threads instead of this method."""
        return [self.coverage(p, query) for p in partitions]

    @abstractmethod
    def fold(self, partition: int) -> Iterator[Operation]:
        """Yield operations that rebuild this partition's state on an empty replica."""

    def versions(self, partition: int, keys: Collection[bytes] | None = None) -> Iterator[tuple[bytes, bytes]]:
        """``(key, version)`` for every key held (or every one of ``keys`` held); see the module docstring, item 6.

        The default groups ``fold`` by operation key; a key's version is the digest of its operations."""
        wanted = None if keys is None else set(keys)
        grouped: dict[bytes, list[list[object]]] = {}
        for op in self.fold(partition):
            if wanted is None or op.key in wanted:
                grouped.setdefault(op.key, []).append(op.to_wire())
        for key, wires in grouped.items():
            yield key, ops_version(wires)

    def fold_keys(self, partition: int, keys: Collection[bytes]) -> Iterator[Operation]:
        """The operations of ``fold`` that rebuild the state of ``keys`` (as ``versions`` names them).

        The default filters ``fold``."""
        wanted = set(keys)
        return (op for op in self.fold(partition) if op.key in wanted)

    def digest_keys(self, op: Operation) -> Collection[bytes] | None:
        """The keys of ``op.partition`` (as ``versions`` names them) whose version applying ``op`` may change.

        None: any key of any partition may change. Cheap: called on the writer thread.
        The default is the operation's key: override it when ``fold`` keys the state
        otherwise than the operations written (a batch holding many documents)."""
        return (op.key,)

    def snapshot(self, partition: int, into: Path) -> PartitionSnapshot | None:
        """Hard-link the immutable files holding ``partition`` under ``into`` (which exists, empty) and name them.

        Called from the writer thread right after ``flush(partition)``, so what
        the files hold is complete and durable. The default returns None: the
        partition moves by ``fold``."""
        return None

    def install(self, partition: int, directory: Path, snapshot: PartitionSnapshot) -> None:
        """Merge a received snapshot's files (under ``directory``) into ``partition``, as applying its fold would.

        Called from the writer thread of the gaining node, on top of what the
        partition may already hold; may move the files (they are this node's
        own copies). The core calls ``flush`` next. Only called on engines whose
        ``snapshot`` returns one."""
        raise NotImplementedError(f"engine {self.name!r} returns snapshots but does not install them")

    def routes(self) -> Sequence[Route]:
        """The HTTP endpoints this engine serves."""
        return ()

    def start(self, node: NodeInfo) -> None:
        """Start this engine's services beside the node (sidecars) and publish its attributes.

        Once per node process, from a worker thread; see the module docstring, item 8."""

    def stop(self) -> None:
        """Stop what ``start`` started, within ``ENGINE_STOP_TIMEOUT_MS``. Once, at shutdown."""

    @classmethod
    def local_services(cls, directory: Path, options: Mapping[str, str]) -> Sequence[LocalService]:
        """Processes ``legion cluster up`` should start beside a local cluster (none by default).

        ``directory`` is this engine's directory for them (it exists); ``options``
        the ones the user passed. Return nothing for a service an option replaces."""
        return ()

    def metrics(self) -> Mapping[str, float]:
        """Figures about this engine's state on this node, by name; see the module docstring ("Operating")."""
        return {}

    def dashboard_panel(self) -> DashboardPanel | None:
        """This engine's panel on the dashboard, or None for none."""
        return None

    @classmethod
    def cli(cls) -> Any | None:
        """A typer app mounted as ``legion <name>``, or None. A classmethod: the CLI needs no node."""
        return None


def engine_names() -> set[str]:
    """The names of the engines installed under the ``legion.engines`` entry-point group, none imported."""
    return {entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)}


def load_engines(names: Collection[str] | None = None) -> dict[str, type[Engine]]:
    """Every engine installed under the ``legion.engines`` entry-point group (or those of ``names``), by name."""
    found: dict[str, type[Engine]] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if names is not None and entry.name not in names:
            continue
        cls = entry.load()
        if not (isinstance(cls, type) and issubclass(cls, Engine)):
            raise ConfigError(f"entry point {entry.name!r} does not name an Engine subclass")
        if cls.name != entry.name:
            raise ConfigError(f"engine class {cls.__name__} is named {cls.name!r} but registered as {entry.name!r}")
        found[cls.name] = cls
    return found
