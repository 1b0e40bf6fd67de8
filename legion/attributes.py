"""Member attributes: small strings each node publishes about itself, spread by gossip.

Pure. A node's engines publish attributes (``mapreduce.worker`` →
``tcp://127.0.0.1:40123``) that every other node, and every client through
``GET /v1/cluster``, can read. They are *ephemeral*: not part of the committed
cluster state, not persisted, gone with the process that published them — a
restarted node publishes again.

Each node's attributes travel as one ``Attributes`` record: the values and a
version. Only the node itself writes its record, and each publish gets a
greater version, so merging two tables keeps, per node, the record with the
greater version (``merge``; ties, which one publisher never produces, are
broken by the values so that merging stays commutative). Gossip relays
records of third nodes too, so a record spreads transitively, like the
cluster state.

Versions are ``incarnation << COUNTER_BITS | counter``: the incarnation grows
at every start of the node process (``next_incarnation``: past the previous
one *and* at least the wall-clock second, so neither a fast restart nor a
wiped data directory leaves a restarted node's records older than its
previous life's), the counter at every publish.

Keys are namespaced by engine (``<engine>.<name>``): each engine replaces only
its own keys (``with_engine_values``). Limits are in ``legion.limits``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from legion.errors import BadRequest
from legion.limits import ATTRIBUTE_KEY_CHARS_MAX, ATTRIBUTE_KEYS_MAX, ATTRIBUTE_VALUE_CHARS_MAX

COUNTER_BITS = 32
COUNTER_MAX = (1 << COUNTER_BITS) - 1
KEY_PATTERN = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{ATTRIBUTE_KEY_CHARS_MAX - 1}}}$")


@dataclass(frozen=True, slots=True)
class Attributes:
    """One node's attributes at one version. ``pairs`` are sorted by key."""

    version: int
    pairs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, version: int, values: Mapping[str, str]) -> Attributes:
        return cls(version, tuple(sorted(values.items())))

    def values(self) -> dict[str, str]:
        return dict(self.pairs)


Table = Mapping[str, Attributes]


def version_of(incarnation: int, counter: int) -> int:
    """The version of a node's ``counter``-th publish in its ``incarnation``."""
    assert incarnation >= 0 and 0 <= counter <= COUNTER_MAX, (incarnation, counter)
    return incarnation << COUNTER_BITS | counter


def next_incarnation(previous: int | None, wall_s: int) -> int:
    """The incarnation of a node process starting now: past ``previous``, and at least ``wall_s``."""
    return max(wall_s, (previous or 0) + 1)


def problem(values: Mapping[str, str]) -> str | None:
    """What is wrong with one node's attribute values under the limits, or None."""
    if not isinstance(values, Mapping):
        return f"attributes must be a mapping of strings, got {type(values).__name__}"
    if len(values) > ATTRIBUTE_KEYS_MAX:
        return f"a node has at most {ATTRIBUTE_KEYS_MAX} attributes, got {len(values)}"
    for key, value in values.items():
        if not isinstance(key, str) or not KEY_PATTERN.match(key):
            return (
                f"attribute key {key!r} must be 1-{ATTRIBUTE_KEY_CHARS_MAX} letters, digits, "
                "'_', '.', ':' or '-', starting with a letter or digit"
            )
        if not isinstance(value, str):
            return f"attribute {key!r} must be a string, got {type(value).__name__}"
        if len(value) > ATTRIBUTE_VALUE_CHARS_MAX:
            return f"attribute {key!r} is {len(value)} characters long; the limit is {ATTRIBUTE_VALUE_CHARS_MAX}"
    return None


def with_engine_values(current: Mapping[str, str], engine: str, values: Mapping[str, str]) -> dict[str, str]:
    """``current`` with ``engine``'s keys replaced by ``values``; ValueError if that breaks a rule.

    A ValueError, not a ``LegionError``: publishing bad attributes is a bug in
    the engine, not a request a client could fix."""
    prefix = engine + "."
    if not isinstance(values, Mapping):
        raise ValueError(f"engine {engine!r} published {type(values).__name__}, not a mapping of strings")
    foreign = sorted(str(key) for key in values if not (isinstance(key, str) and key.startswith(prefix)))
    if foreign:
        raise ValueError(f"engine {engine!r} may only publish attributes named '{prefix}…'; got {foreign}")
    merged = {key: value for key, value in current.items() if not key.startswith(prefix)}
    merged.update(values)
    trouble = problem(merged)
    if trouble is not None:
        raise ValueError(f"engine {engine!r} published attributes over the limits: {trouble}")
    return merged


def newer(a: Attributes, b: Attributes | None) -> bool:
    """True if a merge keeps ``a`` over ``b``: the greater version (then, on a tie, the greater values)."""
    return b is None or (a.version, a.pairs) > (b.version, b.pairs)


def merge(a: Table, b: Table) -> dict[str, Attributes]:
    """Per node, the newer record of the two tables (commutative, associative, idempotent)."""
    merged = dict(a)
    for node_id, record in b.items():
        if newer(record, merged.get(node_id)):
            merged[node_id] = record
    return merged


def restrict(table: Table, node_ids: Collection[str]) -> dict[str, Attributes]:
    """Only the records of ``node_ids`` (e.g. the members that are not removed)."""
    return {node_id: record for node_id, record in table.items() if node_id in node_ids}


def digest(table: Table) -> dict[str, int]:
    """What gossip exchanges first: each node's version."""
    return {node_id: record.version for node_id, record in table.items()}


def newer_than(table: Table, seen: Mapping[str, int]) -> dict[str, Attributes]:
    """The records of ``table`` whose version is past what a peer's digest ``seen`` says it has."""
    return {node_id: record for node_id, record in table.items() if record.version > seen.get(node_id, -1)}


def to_wire(table: Table) -> dict[str, Any]:
    """A table as JSON: ``{node: {"version": int, "values": {key: value}}}``."""
    return {node_id: {"version": record.version, "values": record.values()} for node_id, record in table.items()}


def from_wire(raw: Any) -> dict[str, Attributes]:
    """Parse a table a peer sent; BadRequest on anything malformed or over the limits."""
    if not isinstance(raw, dict):
        raise BadRequest("gossiped attributes must be a JSON object")
    table: dict[str, Attributes] = {}
    for node_id, record in raw.items():
        if not isinstance(record, dict) or not _is_version(record.get("version")):
            raise BadRequest(f"gossiped attributes of {node_id!r} need an integer version and values")
        values = record.get("values")
        trouble = problem(values) if isinstance(values, dict) else "values must be a JSON object"
        if trouble is not None:
            raise BadRequest(f"gossiped attributes of {node_id!r}: {trouble}")
        table[node_id] = Attributes.of(record["version"], values)  # type: ignore[arg-type]
    return table


def digest_from_wire(raw: Any) -> dict[str, int]:
    """Parse a digest a peer sent (absent: an empty one); BadRequest if malformed."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(_is_version(v) for v in raw.values()):
        raise BadRequest("an attributes digest must map node ids to integer versions")
    return {str(node_id): version for node_id, version in raw.items()}


def _is_version(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
