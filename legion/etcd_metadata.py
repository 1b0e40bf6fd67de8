"""The cluster state kept in etcd: ``legion node start --metadata etcd://HOST:PORT[/PREFIX]``.

Pure: plain functions over plain data, no I/O. For users who already run
etcd, the cluster state can live under one etcd key instead of in Legion's
own replicated register (``legion.consensus``): etcd's quorum then does what
the voters do there. The etcd value *is* the committed state, as JSON
(``cluster_state.to_dict``), so ``etcdctl get PREFIX/state`` shows it.

A change is a compare-and-swap on that key (``runtime.etcd_register`` does
the I/O, through etcd's v3 JSON gateway):

1. read the value and its ``mod_revision`` (``range_request`` →
   ``read_from_range``);
2. apply the change to that committed state (``next_state``: the same
   ``consensus.propose`` as the voters use, so the epoch rises by one per
   change and the voters keep moving towards the voting members; the term
   stays, since etcd, not a leader of ours, orders the changes);
3. put the new state only if the key's ``mod_revision`` is still the one read
   (``swap_request``); if another node's change came first the swap fails and
   its answer carries the current value (``swap_outcome``): apply the change
   to that and try again. Only a successful swap is acknowledged.

Founding is the same swap against "no key yet" (``create_revision == 0``),
so of two nodes founding at once exactly one cluster exists. Every committed
state is built on the one before it and epochs rise by one per swap, so the
states in etcd form one chain and ``consensus.learn_commit`` (newest epoch
wins) is right for them as it is for the voters'.

A node's data directory records which way its state is kept (``choice_of``,
``check_choice``): a restart with a different ``--metadata`` is refused
rather than silently splitting the cluster's memory in two.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from legion import cluster_state as cs
from legion import consensus as cn
from legion.cluster_state import ClusterState
from legion.errors import ConfigError, Conflict, LegionError

SCHEME = "etcd"
DEFAULT_PREFIX = "/legion"
STATE_KEY_SUFFIX = "/state"
# What a data directory records when the voters keep the state (no --metadata).
CONSENSUS = "consensus"
FLAG = "--metadata"
EXAMPLE = "etcd://127.0.0.1:2379/legion"
PREFIX_PATTERN = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")
PREFIX_CHARS_MAX = 200


@dataclass(frozen=True, slots=True)
class EtcdTarget:
    """Which etcd holds the state (its client address) and under which key."""

    host: str
    port: int
    key: str

    @property
    def gateway(self) -> str:
        """The base URL of etcd's v3 JSON gateway."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def choice(self) -> str:
        """What a data directory records: the key, not the address (etcd may move, the key may not)."""
        return f"{SCHEME}:{self.key}"

    def describe(self) -> str:
        return f"etcd at {self.host}:{self.port} (key {self.key})"


@dataclass(frozen=True, slots=True)
class Read:
    """The state in etcd and the ``mod_revision`` it was read at (what a swap compares against)."""

    state: ClusterState
    mod_revision: int


def parse_metadata_url(text: str) -> EtcdTarget:
    """``etcd://HOST:PORT[/PREFIX]`` as a target whose key is ``PREFIX/state`` (``/legion/state``
    without a prefix); ConfigError saying what one looks like otherwise."""
    wrong = f"{FLAG} must be etcd://HOST:PORT or etcd://HOST:PORT/PREFIX, e.g. {EXAMPLE}; got {text!r}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(wrong) from None
    if parts.scheme != SCHEME or not parts.hostname or port is None or parts.query or parts.fragment:
        raise ConfigError(wrong)
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{FLAG}: etcd authentication is not supported; got {text!r}")
    if not 1 <= port <= 65535:
        raise ConfigError(wrong)
    prefix = parts.path.rstrip("/") or DEFAULT_PREFIX
    if len(prefix) > PREFIX_CHARS_MAX or not PREFIX_PATTERN.match(prefix):
        raise ConfigError(
            f"{FLAG}: the prefix must be /-separated names of letters, digits, '_', '.' or '-' "
            f"(at most {PREFIX_CHARS_MAX} characters), e.g. {EXAMPLE}; got {parts.path!r}"
        )
    return EtcdTarget(parts.hostname, port, prefix + STATE_KEY_SUFFIX)


def choice_of(target: EtcdTarget | None) -> str:
    """What a data directory records for a node with ``target`` (None: consensus among the nodes)."""
    return CONSENSUS if target is None else target.choice


def _described(choice: str) -> str:
    if choice == CONSENSUS:
        return "by consensus among its nodes (no --metadata)"
    return f"in etcd under the key {choice.removeprefix(SCHEME + ':')}"


def check_choice(recorded: str | None, wanted: str, *, has_state: bool) -> None:
    """ConfigError if a data directory that keeps its state one way (``recorded``; a directory
    from before the choice existed kept it by consensus) is started the other way (``wanted``)."""
    if recorded is None:
        if not has_state:
            return  # a new data directory: any choice
        recorded = CONSENSUS
    if recorded == wanted:
        return
    if recorded == CONSENSUS:
        how = f"start it without {FLAG}"
    else:
        prefix = recorded.removeprefix(SCHEME + ":").removesuffix(STATE_KEY_SUFFIX)
        how = f"start it with {FLAG} etcd://HOST:PORT{prefix}"
    raise ConfigError(
        f"this node's data directory keeps the cluster state {_described(recorded)}, not {_described(wanted)}: "
        f"{how} (switching would split the cluster's memory), or give it a fresh data directory"
    )


def check_same_choice(ours: str, joiner: str, joiner_id: str) -> None:
    """Conflict if a node asking to join keeps the cluster state another way than this cluster."""
    if ours != joiner:
        raise Conflict(
            f"this cluster keeps its state {_described(ours)}, and node {joiner_id} {_described(joiner)}: "
            f"start it with the same {FLAG} as the cluster's nodes"
        )


# --- the compare-and-swap, as etcd's v3 JSON gateway speaks it --------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_state(state: ClusterState) -> bytes:
    return json.dumps(cs.to_dict(state), separators=(",", ":"), sort_keys=True).encode()


def range_request(target: EtcdTarget, *, newer_than: int = 0) -> dict[str, Any]:
    """A ``/v3/kv/range`` body reading the state; with ``newer_than``, only if it changed after that revision."""
    body: dict[str, Any] = {"key": _b64(target.key.encode())}
    if newer_than > 0:
        body["min_mod_revision"] = str(newer_than + 1)
    return body


def swap_request(target: EtcdTarget, read: Read | None, state: ClusterState) -> dict[str, Any]:
    """A ``/v3/kv/txn`` body: put ``state`` if the key is still as ``read`` (None: if there is no key
    yet, to found the cluster); otherwise read the current value in the same transaction."""
    key = _b64(target.key.encode())
    if read is None:
        compare = {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
    else:
        compare = {"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": str(read.mod_revision)}
    return {
        "compare": [compare],
        "success": [{"request_put": {"key": key, "value": _b64(encode_state(state))}}],
        "failure": [{"request_range": {"key": key}}],
    }


def _read_kvs(reply: Any, target: EtcdTarget) -> Read | None:
    kvs = reply.get("kvs") or []
    if not kvs:
        return None
    try:
        entry = kvs[0]
        raw = json.loads(base64.b64decode(entry.get("value", ""), validate=True))
        return Read(cs.from_dict(raw), int(entry["mod_revision"]))
    except (LegionError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise Conflict(
            f"the value under {target.key} in {target.describe()} is not a Legion cluster state ({exc}): "
            "another program writes that key; give this cluster a prefix of its own"
        ) from None


def read_from_range(reply: Any, target: EtcdTarget) -> Read | None:
    """The state in a ``/v3/kv/range`` answer; None if there is none (or none newer than asked)."""
    if not isinstance(reply, Mapping):
        raise Conflict(f"{target.describe()} answered a read with {reply!r}")
    return _read_kvs(reply, target)


def swap_outcome(reply: Any, target: EtcdTarget) -> tuple[bool, int | None, Read | None]:
    """What a ``swap_request`` did: (swapped, the new state's ``mod_revision`` if it did,
    the current value if it did not — None if the key is gone)."""
    try:
        swapped = bool(reply.get("succeeded", False))  # JSON leaves out false
        if swapped:
            return True, int(reply["header"]["revision"]), None
        responses = reply.get("responses") or [{}]
        return False, None, _read_kvs(responses[0].get("response_range", {}), target)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        raise Conflict(f"{target.describe()} answered a compare-and-swap with {reply!r}") from None


# --- the decisions ----------------------------------------------------------------


def next_state(current: ClusterState, changed: ClusterState, by: str) -> ClusterState | None:
    """What to swap in for ``changed`` (a change applied to ``current``, the state read from etcd);
    None if it changes nothing. The epoch rises by one and the voters move one step, as with the
    voters' register (``consensus.propose``); the term stays: etcd orders the changes."""
    return cn.propose(current, changed, current.term, by)


def check_read(local: ClusterState | None, read: ClusterState, target: EtcdTarget) -> None:
    """Conflict if the state in etcd cannot be this node's cluster's: another cluster's, or older
    than what this node already holds (committed states only come from etcd, so etcd lost some)."""
    if local is None:
        return
    if read.cluster_id != local.cluster_id:
        raise Conflict(
            f"{target.describe()} holds the state of cluster {read.cluster_id}, and this node belongs to "
            f"{local.cluster_id}: give each cluster a prefix of its own (etcd://HOST:PORT/PREFIX)"
        )
    if read.epoch < local.epoch:
        raise Conflict(
            f"{target.describe()} holds epoch {read.epoch} of the cluster state, older than the epoch "
            f"{local.epoch} this node holds: was etcd restored from an old backup? Changes stay refused "
            "rather than build on a lost past"
        )
