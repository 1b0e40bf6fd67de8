"""Aggregations over fast fields: the request's shape, and merging the nodes' answers.

Pure. A search may ask for Elasticsearch-style aggregations next to its hits::

    {"by_section": {"terms": {"field": "section", "size": 10}},
     "sizes":      {"range": {"field": "size", "ranges": [{"to": 100}, {"from": 100, "to": 1000}, {"from": 1000}]}},
     "size_stats": {"stats": {"field": "size"}}}

Each node computes them over its share of the partitions (tantivy's
aggregation engine, on fast fields) and the coordinator merges: terms
buckets add their counts (every node returns more buckets than asked —
``shard_size`` — so the merged top is exact unless a term sits just below
every node's cut, the same trade-off Elasticsearch makes), range buckets
add, stats combine count, sum, min and max.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engines.search.schema import IndexSchema
from legion.errors import BadRequest

KINDS = ("terms", "range", "stats")
AGGREGATIONS_MAX = 16
TERMS_SIZE_MAX = 1_000
RANGES_MAX = 64
NAME_CHARS_MAX = 64


def check(schema: IndexSchema, raw: object) -> dict[str, dict[str, Any]]:
    """The aggregations a request asks for, validated against the schema; BadRequest names the problem."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise BadRequest('aggs must be an object: {"name": {"terms": {"field": …}}}')
    if len(raw) > AGGREGATIONS_MAX:
        raise BadRequest(f"at most {AGGREGATIONS_MAX} aggregations per search")
    out: dict[str, dict[str, Any]] = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not name or len(name) > NAME_CHARS_MAX:
            raise BadRequest(f"aggregation names are 1-{NAME_CHARS_MAX} characters")
        if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise BadRequest(f"aggregation {name!r} must be one of {', '.join(KINDS)}: {{\"terms\": {{\"field\": …}}}}")
        kind, body = next(iter(spec.items()))
        out[name] = {kind: _check_one(schema, name, kind, body)}
    return out


def _check_one(schema: IndexSchema, name: str, kind: str, body: object) -> dict[str, Any]:
    if not isinstance(body, Mapping) or not isinstance(body.get("field"), str):
        raise BadRequest(f"aggregation {name!r} names a field")
    spec = schema.field(body["field"])
    if not spec.fast:
        raise BadRequest(f"aggregation {name!r}: field {spec.name!r} is not a fast field; declare it with \"fast\": true")
    numeric = spec.type in ("i64", "u64", "f64", "date")
    if kind == "terms":
        size = body.get("size", 10)
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= TERMS_SIZE_MAX:
            raise BadRequest(f"aggregation {name!r}: size must be an integer in 1..{TERMS_SIZE_MAX}")
        return {"field": spec.name, "size": size}
    if not numeric:
        raise BadRequest(f"aggregation {name!r}: {kind} needs a numeric or date field; {spec.name!r} is {spec.type}")
    if kind == "stats":
        return {"field": spec.name}
    ranges = body.get("ranges")
    if not isinstance(ranges, list) or not 1 <= len(ranges) <= RANGES_MAX:
        raise BadRequest(f"aggregation {name!r}: ranges must be a list of 1..{RANGES_MAX} {{\"from\", \"to\"}} objects")
    checked = []
    for r in ranges:
        if not isinstance(r, Mapping) or set(r) - {"from", "to"} or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in r.values()
        ):
            raise BadRequest(f"aggregation {name!r}: each range is {{\"from\": number, \"to\": number}} (either may be left out)")
        checked.append(dict(r))
    return {"field": spec.name, "ranges": checked}


def shard_request(aggs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What each node computes: terms aggregations over more buckets than asked, for a closer merge."""
    out: dict[str, Any] = {}
    for name, spec in aggs.items():
        kind, body = next(iter(spec.items()))
        if kind == "terms":
            body = {**body, "size": shard_size(body["size"])}
        out[name] = {kind: body}
    return out


def shard_size(size: int) -> int:
    return min(TERMS_SIZE_MAX * 2, size * 3 // 2 + 10)


def merge(aggs: Mapping[str, Mapping[str, Any]], replies: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge the nodes' aggregation results into the answer for the whole index."""
    out: dict[str, Any] = {}
    for name, spec in aggs.items():
        kind, body = next(iter(spec.items()))
        parts = [r[name] for r in replies if name in r]
        if kind == "terms":
            out[name] = _merge_terms(parts, body["size"])
        elif kind == "range":
            out[name] = _merge_ranges(parts)
        else:
            out[name] = _merge_stats(parts)
    return out


def _merge_terms(parts: Sequence[Mapping[str, Any]], size: int) -> dict[str, Any]:
    counts: dict[Any, int] = {}
    other = 0
    for part in parts:
        for bucket in part.get("buckets", ()):
            counts[bucket["key"]] = counts.get(bucket["key"], 0) + int(bucket["doc_count"])
        other += int(part.get("sum_other_doc_count", 0))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    other += sum(count for _key, count in ranked[size:])
    return {"buckets": [{"key": k, "doc_count": c} for k, c in ranked[:size]], "sum_other_doc_count": other}


def _merge_ranges(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        for bucket in part.get("buckets", ()):
            key = str(bucket.get("key"))
            into = merged.setdefault(key, {k: v for k, v in bucket.items() if k in ("key", "from", "to")} | {"doc_count": 0})
            into["doc_count"] += int(bucket["doc_count"])
    return {"buckets": list(merged.values())}


def _merge_stats(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    count = sum(int(p.get("count", 0)) for p in parts)
    with_values = [p for p in parts if p.get("count")]
    if not count:
        return {"count": 0, "sum": 0.0, "min": None, "max": None, "avg": None}
    total = sum(float(p["sum"]) for p in with_values)
    return {
        "count": count,
        "sum": total,
        "min": min(float(p["min"]) for p in with_values),
        "max": max(float(p["max"]) for p in with_values),
        "avg": total / count,
    }
