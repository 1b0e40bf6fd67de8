"""Ranking a sharded search as one index would: statistics, BM25 arithmetic, merging, metrics.

A search over several nodes' tantivy indexes ranks like one big index when
every node scores with the *global* statistics of the query's terms. This
module owns the arithmetic of that, with no tantivy in sight:

- **Statistics.** ``StatsRequest`` says what round 1 counts (terms and
  fields); ``CollectionStats`` holds, for the docs a query covers,
  ``doc_count`` (N: live docs), ``doc_freqs`` (per term: live docs holding
  it) and ``field_tokens`` (per field: tokens in the live docs, for BM25's
  average field length). Each node reports its own for the partitions it
  answers for; ``merge_stats`` adds them up (the partitions of a coverage
  plan are disjoint, so sums are exact).
- **BM25 as tantivy computes it** (``Score`` is float32 there, every step
  rounded to f32): ``idf``, ``idf_sum`` (a phrase's idf is its terms' sum),
  ``bm25_leaf_score``, ``boost_factor`` (global idf over the local idf
  tantivy will use: a boost that turns one into the other).
- **Exact scores.** tantivy-py cannot be handed statistics, and BM25's
  average field length cannot be fixed with a boost, so a node rescores
  its best candidates: ``explained_score`` recomputes a doc's score from
  tantivy's ``explain`` of it (which clauses matched, each leaf's term
  frequency and field length) with the global idf and average field
  lengths (``LeafWeight``), step for step as tantivy's scorer would;
  ``rescore_bound`` says how far an exact score can exceed the boosted one,
  so that a node stops rescoring at the first candidate that cannot reach
  the page.
- **Merging hits.** Every node returns its best hits in the global order —
  score descending, ties by id ascending (``hit_order_key``) — and
  ``merge_hits`` takes the global page ``[offset, offset + limit)`` of their
  union. A node must return its first ``offset + limit`` hits *in that
  order*: when tantivy's top-k cut falls inside a run of tied scores, the
  node fetches past the run (``tie_run_unfinished`` says when) so the ids that
  win the tie are the smallest, not the ones tantivy happened to keep.
- **Metrics** for tests and benchmarks that compare a sharded search with a
  single reference index: ``overlap_at_k`` and ``top1_agrees``.

Two scores *tie* when they are equal as float32 (``scores_tie``): tantivy
computes scores in f32 and hands them to Python as the same value in a
double, so "equal as float32" is plain equality of what tantivy returned,
and no tolerance is added — a score that differs in its last f32 bit is a
different score.

Pure: no I/O, no tantivy.
"""

from __future__ import annotations

import functools
import heapq
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar, Union

from legion.errors import BadRequest

BM25_K1 = 1.2  # tantivy's term saturation parameter
BM25_B = 0.75  # tantivy's length normalisation parameter

TermValueWire = Union[str, int, float, bool]
# (field name — "attrs.a.b" for a JSON field's path —, tantivy value type, value); a Date value is RFC 3339 text.
TermKey = tuple[str, str, TermValueWire]


_F32 = struct.Struct("<f")  # compiled once: the format is not parsed again for each of the many calls


def as_f32(value: float) -> float:
    """``value`` rounded to the nearest float32 (tantivy's ``Score``), as a Python float; past f32's range, ±inf."""
    try:
        return _F32.unpack(_F32.pack(value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)  # what Rust's `as f32` gives


def scores_tie(a: float, b: float) -> bool:
    """Whether two scores are the same score: equal once both are float32."""
    return as_f32(a) == as_f32(b)


# --- BM25 ----------------------------------------------------------------------------


# The arithmetic below is pure and its arguments repeat (a term's idf, a frequency and field length
# many docs share): remembered, a rescored candidate costs lookups instead of a dozen f32 roundings.
_REMEMBERED = 1 << 16


@functools.lru_cache(maxsize=_REMEMBERED)
def idf(doc_freq: int, doc_count: int) -> float:
    """tantivy's idf, ``ln(1 + (N - n + 0.5) / (n + 0.5))``, rounded to f32 at each step as tantivy does."""
    assert 0 <= doc_freq <= doc_count, (doc_freq, doc_count)
    numerator = as_f32(as_f32(float(doc_count - doc_freq)) + 0.5)
    denominator = as_f32(as_f32(float(doc_freq)) + 0.5)
    return as_f32(math.log(as_f32(1.0 + as_f32(numerator / denominator))))


def idf_sum(doc_freqs: Iterable[int], doc_count: int) -> float:
    """The idf of a multi-term leaf (a phrase): its terms' idfs added up in order, in f32."""
    total = 0.0
    for doc_freq in doc_freqs:
        total = as_f32(total + idf(doc_freq, doc_count))
    return total


def boost_factor(global_idf: float, local_idf: float) -> float:
    """The boost that turns a leaf scored with ``local_idf`` into one scored with ``global_idf``.

    In f32 an idf can be exactly 0 (a term in every doc of an index of 2**23
    docs or more: ``1 + x`` rounds to 1). A local 0 cannot be boosted into
    anything; the leaf then keeps its local score (1.0), which is at most a
    few ulps of the score away from the global one.
    """
    assert local_idf >= 0 and global_idf >= 0, (global_idf, local_idf)
    return global_idf / local_idf if local_idf > 0 else 1.0


def average_field_length(field_tokens: int, doc_count: int) -> float:
    """BM25's avgdl for a field as tantivy computes it: ``total tokens / N`` in f32."""
    assert doc_count > 0
    return as_f32(as_f32(float(field_tokens)) / as_f32(float(doc_count)))


@functools.lru_cache(maxsize=_REMEMBERED)
def bm25_leaf_score(
    leaf_idf: float, term_freq: float, field_length: float, avg_field_length: float, boost: float = 1.0
) -> float:
    """One BM25 leaf's score, step for step as tantivy's scorer computes it (f32 throughout).

    ``field_length`` is the doc's field norm as tantivy decoded it (what
    ``explain`` prints as ``dl``), ``term_freq`` the term's (or the
    phrase's) frequency in the doc, and ``boost`` the product of the boosts
    above the leaf: tantivy folds it into the leaf's weight before the
    frequency part (``Bm25Weight::boost_by``), which rounds differently from
    ``explain``, which multiplies the finished score.
    """
    k1, b = as_f32(BM25_K1), as_f32(BM25_B)
    weight = as_f32(as_f32(as_f32(leaf_idf) * as_f32(1.0 + k1)) * as_f32(boost))
    # K1 * (1.0 - B + B * dl / avgdl), evaluated left to right as Rust does
    length_part = as_f32(as_f32(b * as_f32(field_length)) / as_f32(avg_field_length))
    norm = as_f32(k1 * as_f32(as_f32(1.0 - b) + length_part))
    tf = as_f32(term_freq)
    return as_f32(weight * as_f32(tf / as_f32(tf + norm)))


# --- exact scores from tantivy's explanation ---------------------------------------------------

EXPLAIN_BOOST = "Boost x"
EXPLAIN_SUM = "BooleanClause. sum of"
EXPLAIN_BM25 = "TermQuery, product of"
EXPLAIN_PHRASE_PREFIX = "Phrase Prefix Scorer"
MARKER_STEP = 2.0**-23  # one f32 ulp just above 1.0: markers stay distinct up to 2**23 leaves


class ExplanationError(ValueError):
    """An explanation this module cannot recompute (a node it does not know holds a BM25 leaf)."""


@dataclass(frozen=True)
class LeafWeight:
    """What a BM25 leaf's global score needs beside the doc's own numbers: its idf and its field's avgdl."""

    idf: float
    avg_field_length: float
    field: str = ""  # the field whose length normalises it (its avgdl is the field's, on any one searcher)


def marker_boost(leaf_index: int) -> float:
    """The boost that labels BM25 leaf ``leaf_index`` in an explanation.

    Negative, so that no boost tantivy's query parser makes (``^2``) can be
    mistaken for a marker; distinct as f32 for every index below 2**23.
    """
    assert 0 <= leaf_index < 2**23 - 1
    return -(1.0 + (leaf_index + 1) * MARKER_STEP)


def explained_score(explanation: Mapping[str, Any], leaves: Sequence[LeafWeight]) -> float:
    """A doc's score with global statistics, recomputed from tantivy's ``explain`` of it.

    ``explanation`` is the parsed ``Explanation.to_json()`` of a query whose
    ``i``-th BM25 leaf is wrapped in ``Boost(leaf, marker_boost(i))``;
    ``leaves[i]`` holds that leaf's global idf and average field length. The
    explanation supplies the doc's own numbers (which clauses matched, each
    leaf's term frequency and field length) and the tree's shape; the score
    is computed the way tantivy's scorer computes it — boosts folded into
    the leaf weights, clause scores added in clause order, constant-score
    nodes scoring the boost they are handed — so that it equals, bit for
    bit, what one index holding exactly the plan's docs would score; but
    where tantivy adds three or more matching clauses in another order
    (its block-WAND cursor order), the last bit may differ.
    """
    return _explained(explanation, _markers(tuple(leaves)), 1.0)


@functools.lru_cache(maxsize=256)
def _markers(leaves: tuple[LeafWeight, ...]) -> dict[float, LeafWeight]:
    """Each leaf under the f32 marker boost that labels it (``marker_boost``); read-only."""
    return {as_f32(marker_boost(index)): leaf for index, leaf in enumerate(leaves)}


def _explained(node: Mapping[str, Any], markers: Mapping[float, LeafWeight], boost: float) -> float:
    description = str(node.get("description", ""))
    details: Sequence[Mapping[str, Any]] = node.get("details") or []
    if description.startswith(EXPLAIN_BOOST):
        factor = _boost_of(description)
        if len(details) != 1:
            raise ExplanationError(f"a boost explained by {len(details)} details")
        if factor in markers:
            return _leaf_score(details[0], markers[factor], boost)
        return _explained(details[0], markers, as_f32(boost * factor))
    if description.startswith(EXPLAIN_SUM):
        total = 0.0
        for detail in details:
            total = as_f32(total + _explained(detail, markers, boost))
        return total
    if _holds_marker(node, markers):
        raise ExplanationError(f"cannot recompute {description!r} above a BM25 leaf")
    if description == EXPLAIN_PHRASE_PREFIX:
        return 1.0  # a one-term phrase prefix scores 1.0 whatever its boost (explain says otherwise)
    return as_f32(as_f32(float(node["value"])) * boost)  # constant score: the boost it is handed


def rescore_bound(explanation: Mapping[str, Any], leaves: Sequence[LeafWeight], seen: dict[str, float]) -> float | None:
    """How much greater than its boosted score a doc's exact score can be, once that is known.

    A node ranks candidates with every BM25 leaf boosted to the global idf, but
    with its own average field lengths, and rescores them exactly. A leaf's
    length part ``tf / (tf + k1 * (1 - b + b * dl / avgdl))`` grows with
    avgdl, at most by the ratio of the two avgdls; the rest of a score does
    not depend on them. So ``exact <= bound * boosted`` with ``bound`` the
    greatest ``max(1, global avgdl / local avgdl)`` over the leaves' fields,
    for a score that is a sum of non-negative parts. ``seen`` (field → local
    avgdl) gathers what the explanations printed; the bound is None while a
    field's local avgdl is unknown, when a boost is negative (a greater part
    would lower the score), or when an explanation does not show it."""
    markers = _markers(tuple(leaves))
    try:
        if not _gather_field_lengths(explanation, markers, seen):
            return None
    except ExplanationError:
        return None  # a leaf explained in a shape this does not read: rescore every candidate
    bound = 1.0
    for leaf in leaves:
        local = seen.get(leaf.field)
        if not leaf.field or local is None or local <= 0:
            return None
        bound = max(bound, leaf.avg_field_length / local)
    return bound


def _gather_field_lengths(node: Mapping[str, Any], markers: Mapping[float, LeafWeight], seen: dict[str, float]) -> bool:
    """Record the local avgdl of every marked leaf under ``node``; False if a boost is negative."""
    description = str(node.get("description", ""))
    details: Sequence[Mapping[str, Any]] = node.get("details") or []
    if description.startswith(EXPLAIN_BOOST):
        factor = _boost_of(description)
        if factor in markers and len(details) == 1:
            leaf = markers[factor]
            product = details[0] if str(details[0].get("description", "")).startswith(EXPLAIN_BM25) else _detail(details[0], EXPLAIN_BM25)
            seen[leaf.field] = float(_detail(_detail(product, "freq / (freq"), "avgdl,")["value"])
            return True
        if factor < 0:
            return False
    return all(_gather_field_lengths(detail, markers, seen) for detail in details)


def _leaf_score(node: Mapping[str, Any], leaf: LeafWeight, boost: float) -> float:
    product = node if str(node.get("description", "")).startswith(EXPLAIN_BM25) else _detail(node, EXPLAIN_BM25)
    frequency = _detail(product, "freq / (freq")
    term_freq = float(_detail(frequency, "freq,")["value"])
    field_length = float(_detail(frequency, "dl,")["value"])
    return bm25_leaf_score(leaf.idf, term_freq, field_length, leaf.avg_field_length, boost)


def _detail(node: Mapping[str, Any], prefix: str) -> Mapping[str, Any]:
    for detail in node.get("details") or []:
        if str(detail.get("description", "")).startswith(prefix):
            return detail
    raise ExplanationError(f"no {prefix!r} under {node.get('description')!r}")


@functools.lru_cache(maxsize=_REMEMBERED)
def _boost_of(description: str) -> float:
    """The factor of a ``Boost x<factor> of ...`` explanation."""
    text = description[len(EXPLAIN_BOOST) :].partition(" ")[0]
    try:
        return as_f32(float(text))
    except ValueError as error:
        raise ExplanationError(f"a boost without a factor: {description!r}") from error


def _holds_marker(node: Mapping[str, Any], markers: Mapping[float, LeafWeight]) -> bool:
    description = str(node.get("description", ""))
    if description.startswith(EXPLAIN_BOOST) and _boost_of(description) in markers:
        return True
    return any(_holds_marker(detail, markers) for detail in node.get("details") or [])


# --- statistics ----------------------------------------------------------------------------


@dataclass
class CollectionStats:
    """Term statistics over the live docs of some partitions (one node's, or the whole plan's)."""

    doc_count: int = 0
    doc_freqs: dict[TermKey, int] = field(default_factory=dict)
    field_tokens: dict[str, int] = field(default_factory=dict)

    def to_wire(self) -> list[Any]:
        """A msgpack-able form: ``[N, [[key, df], ...], [[field, tokens], ...]]``."""
        return [
            self.doc_count,
            [[list(key), count] for key, count in self.doc_freqs.items()],
            [[name, count] for name, count in self.field_tokens.items()],
        ]

    @classmethod
    def from_wire(cls, wire: object) -> CollectionStats:
        """Read ``to_wire``'s form (after msgpack); anything malformed is a ``BadRequest``."""
        if not (isinstance(wire, list | tuple) and len(wire) == 3 and _is_count(wire[0])):
            raise BadRequest("search statistics must be [doc_count, doc_freqs, field_tokens]")
        doc_freqs: dict[TermKey, int] = {}
        for item in _pairs(wire[1], "doc_freqs"):
            doc_freqs[term_key_from_wire(item[0])] = _count(item[1], "a doc frequency")
        field_tokens = {}
        for item in _pairs(wire[2], "field_tokens"):
            if not isinstance(item[0], str):
                raise BadRequest("search statistics: a field name must be a string")
            field_tokens[item[0]] = _count(item[1], "a token count")
        return cls(wire[0], doc_freqs, field_tokens)


@dataclass(frozen=True)
class StatsRequest:
    """What round 1 counts on each node: the query's scoring terms, and the fields whose token totals it needs."""

    term_keys: tuple[TermKey, ...] = ()
    fields: tuple[str, ...] = ()

    def to_wire(self) -> list[Any]:
        """A msgpack-able form: ``[[key, ...], [field, ...]]``."""
        return [[list(key) for key in self.term_keys], list(self.fields)]

    @classmethod
    def from_wire(cls, wire: object) -> StatsRequest:
        """Read ``to_wire``'s form (after msgpack); anything malformed is a ``BadRequest``."""
        if not (isinstance(wire, list | tuple) and len(wire) == 2 and all(isinstance(w, list | tuple) for w in wire)):
            raise BadRequest("a search statistics request must be [term_keys, fields]")
        if not all(isinstance(name, str) for name in wire[1]):
            raise BadRequest("a search statistics request's fields must be strings")
        return cls(tuple(term_key_from_wire(key) for key in wire[0]), tuple(wire[1]))


def term_key_from_wire(wire: object) -> TermKey:
    """A ``TermKey`` from its msgpack form (a 3-list), checked."""
    if not (isinstance(wire, list | tuple) and len(wire) == 3 and all(isinstance(part, str) for part in wire[:2])):
        raise BadRequest("a search term must be [field, type, value]")
    if not isinstance(wire[2], str | int | float | bool):
        raise BadRequest(f"a search term's value must be a string, number or bool, not {type(wire[2]).__name__}")
    return (wire[0], wire[1], wire[2])


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _count(value: object, what: str) -> int:
    if not _is_count(value):
        raise BadRequest(f"search statistics: {what} must be a non-negative integer")
    assert isinstance(value, int)
    return value


def _pairs(wire: object, name: str) -> list[list[Any] | tuple[Any, ...]]:
    if not isinstance(wire, list | tuple) or not all(isinstance(p, list | tuple) and len(p) == 2 for p in wire):
        raise BadRequest(f"search statistics: {name} must be a list of pairs")
    return list(wire)


def merge_stats(parts: Iterable[CollectionStats]) -> CollectionStats:
    """The statistics of the union of disjoint partition sets: every count added up."""
    total = CollectionStats()
    for part in parts:
        total.doc_count += part.doc_count
        for key, count in part.doc_freqs.items():
            total.doc_freqs[key] = total.doc_freqs.get(key, 0) + count
        for name, count in part.field_tokens.items():
            total.field_tokens[name] = total.field_tokens.get(name, 0) + count
    return total


# --- hits ------------------------------------------------------------------------------------


class RankedHit(Protocol):
    """Anything with an id and a score can be merged."""

    @property
    def id(self) -> str: ...

    @property
    def score(self) -> float: ...


class Hit(NamedTuple):
    """The plainest ``RankedHit``."""

    id: str
    score: float


H = TypeVar("H", bound=RankedHit)


def hit_order_key(hit: RankedHit) -> tuple[float, str]:
    """The global order of hits: score descending, then id ascending."""
    return (-as_f32(hit.score), hit.id)


def tie_run_unfinished(scores_descending: Sequence[float], count: int) -> bool:
    """Whether a node that fetched more than ``count`` hits must fetch more before cutting at ``count``.

    True when the last hit fetched ties the last hit kept: the run of tied
    scores at the cut may go on past what was fetched, and tantivy chose
    which tied hits to return by its own order, not by id.
    """
    return 0 < count < len(scores_descending) and scores_tie(scores_descending[count - 1], scores_descending[-1])


def first_hits(hits: Iterable[H], count: int) -> list[H]:
    """The first ``count`` hits in the global order (a node's answer, after a tie-complete fetch)."""
    return heapq.nsmallest(count, hits, key=hit_order_key)


def merge_hits(hit_lists: Iterable[Iterable[H]], offset: int, limit: int) -> list[H]:
    """The page ``[offset, offset + limit)`` of the union of the nodes' hits, in the global order.

    Each list must hold its node's first ``offset + limit`` hits in the global
    order (fewer if the node has fewer). An id seen twice (a partition
    answered twice) counts once, with its first score in the global order.
    """
    assert offset >= 0 and limit >= 0
    seen: set[str] = set()
    page: list[H] = []
    for hit in heapq.merge(*(sorted(hits, key=hit_order_key) for hits in hit_lists), key=hit_order_key):
        if len(page) == offset + limit:
            break
        if hit.id not in seen:
            seen.add(hit.id)
            page.append(hit)
    return page[offset:]


# --- metrics ---------------------------------------------------------------------------------


def overlap_at_k(
    result_ids: Sequence[str], reference_ids: Sequence[str], k: int, reference_scores: Mapping[str, float] | None = None
) -> float:
    """The share of the reference's first ``k`` ids that the result's first ``k`` also holds (1.0 if none).

    With ``reference_scores`` (ids to their score in the reference index), a result hit the
    reference's first ``k`` lack also agrees when its score there ties that of a reference hit
    the result lacks: it replaced an equal (each replaced hit counts once). A run of tied scores
    longer than a page is cut in each side's own order, and which of its equals show is no ranking."""
    assert k > 0
    reference = list(dict.fromkeys(reference_ids[:k]))
    if not reference:
        return 1.0 if not result_ids else 0.0
    result = list(dict.fromkeys(result_ids[:k]))
    agreeing = set(reference) & set(result)
    count = len(agreeing)
    if reference_scores is not None:
        replaced = [reference_scores[i] for i in reference if i not in agreeing and i in reference_scores]
        for extra in (i for i in result if i not in agreeing and i in reference_scores):
            tied = next((n for n, score in enumerate(replaced) if scores_tie(score, reference_scores[extra])), None)
            if tied is not None:
                del replaced[tied]
                count += 1
    return count / len(reference)


def top1_agrees(
    result_ids: Sequence[str], reference: Sequence[RankedHit], reference_scores: Mapping[str, float]
) -> bool:
    """Whether the result's first hit is the reference's, or ties it in the reference.

    ``reference`` is the reference index's hit list in the global order;
    ``reference_scores`` maps ids to their score in the reference index (it
    must hold the result's first id if that id matched there at all). When
    the result's first hit is another doc whose reference score ties the
    reference's first score, the result only ordered a tie differently (it
    replaced an equal), which counts as agreeing.
    """
    if not reference or not result_ids:
        return not reference and not result_ids
    if result_ids[0] == reference[0].id:
        return True
    score = reference_scores.get(result_ids[0])
    return score is not None and scores_tie(score, reference[0].score)
