"""The tantivy side of a sharded query: parse it, count its terms, rank it with global statistics.

A search is a two-round coverage request (see ``engines.search.ranking``
for the arithmetic). This module does the parts that need tantivy: it
parses the user's query with tantivy's own parser (so tantivy's query
language and semantics hold), reads the parsed tree back from its ``Debug``
text (``query_tree``), counts what round 1 needs on a node, and rebuilds the
tree for round 2 with a boost on every BM25 leaf that turns the idf tantivy
will compute from the node's index into the idf of the whole plan.

Integration, in call order::

    fields = IndexFields(schema, names=(...every field, in the order added...),
                         length_fields={"title": "_len_title", ...}, counted_fields={"kind"}, ...)

    # coordinator, before round 1 (BadRequest if the query is bad)
    parsed = parse_query(index, fields, text, default_fields)
    send parsed.stats_request.to_wire() with the plan

    # round 1, on each node, for the partitions it answers for
    local_stats(searcher, fields, StatsRequest.from_wire(w), partitions).to_wire()

    # coordinator
    stats = ranking.merge_stats(CollectionStats.from_wire(w) for w in replies)

    # round 2, on each node (parsing the same text again gives the same tree)
    parsed = parse_query(index, fields, text, default_fields)
    answer = node_hits.node_search(parsed, fields, searcher, stats, partitions, offset + limit)

    # coordinator
    page = ranking.merge_hits([answer.hits, ...], offset, limit)

Use one searcher per round on a node (``index.searcher()`` once): its
counts, idfs and explanations must describe the same segments.

How exact (``ParsedQuery.ranking``):

- ``exact``: every BM25 leaf is boosted by global idf / local idf
  (``ranked_query``), so a node's candidates come out nearly in the global
  order; then ``node_hits`` rescores the best of them from tantivy's
  ``explain`` of ``rescoring_query`` with the global idf and the global
  average field lengths, so scores are what one index over the plan's docs
  would give — bit for bit, but for the order in which tantivy adds up three
  or more matching clauses. Needs a length field for every field a BM25
  leaf reads.
- ``global_idf``: the boosts only; BM25's average field length stays each
  node's own. When a scored field has no length field, or is a JSON field.
- ``local``: tantivy's query as parsed, each node's own statistics. When
  the tree holds a node that cannot be rebuilt faithfully (a regex, a range
  on a JSON path, a term on a JSON field's root, ...): the rebuilt tree,
  without boosts, must print exactly what tantivy's parser printed, or it
  is not used. ``ParsedQuery.reason`` says why.

What the index must hold (the storage module's side of the contract): the
fields named by ``IndexFields`` — the id field (raw text, indexed and
stored), ``_partition`` (u64, indexed), ``_deleted`` (u64, indexed: 1 for a
tombstone) — on *every* doc, tombstones included: the node's ``max_doc``,
the N tantivy's own idf uses, is read as ``doc_freq(_deleted, 0) +
doc_freq(_deleted, 1)``. For ``exact`` ranking, round 1 must be able to
total the tokens tantivy indexed for each scored field ``f`` over any set of
documents (``IndexFields.tokens_known``): from a u64 fast field (e.g.
``_len_f``) holding each doc's count (``field_length`` computes it at ingest;
0 or absent on tombstones); from ``f``'s own fast column, when ``f`` makes
one token per value (``counted_fields``); or as the document count, for the
id field, which has one token in every document.

Imports tantivy; turns its ``ValueError`` s on user input into
``legion.errors.BadRequest``. Reads the index and searcher it is handed,
nothing else.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import tantivy

from engines.search import query_tree as qt
from engines.search.ranking import (
    CollectionStats,
    LeafWeight,
    StatsRequest,
    TermKey,
    average_field_length,
    boost_factor,
    idf_sum,
    marker_boost,
)
from engines.search.rust_debug import DebugSyntaxError, Term
from legion.errors import BadRequest

if TYPE_CHECKING:
    from engines.search.scope import SearcherView

QUERY_CHARS_MAX = 10_000
DEFAULT_TOKEN_CHARS_MAX = 40  # tantivy's "default" tokenizer drops longer tokens

RANKING_EXACT = "exact"
RANKING_GLOBAL_IDF = "global_idf"
RANKING_LOCAL = "local"
RANKINGS = (RANKING_LOCAL, RANKING_GLOBAL_IDF, RANKING_EXACT)  # from the least exact to the most

_OCCUR = {"Must": tantivy.Occur.Must, "Should": tantivy.Occur.Should, "MustNot": tantivy.Occur.MustNot}
_RANGE_FIELD_TYPES = {
    "I64": tantivy.FieldType.Integer,
    "U64": tantivy.FieldType.Unsigned,
    "F64": tantivy.FieldType.Float,
    "Date": tantivy.FieldType.Date,
    "Bool": tantivy.FieldType.Boolean,
}
_KEY_TYPES = frozenset({"Str", "U64", "I64", "F64", "Bool", "Date"})


@dataclass(frozen=True)
class IndexFields:
    """What this module must know of an index's schema: its fields by id, and the internal ones."""

    schema: tantivy.Schema
    names: tuple[str, ...]  # every field, in the order the schema builder added them (id = position)
    length_fields: Mapping[str, str] = field(default_factory=dict)  # field → u64 fast field of its token counts
    id_field: str = "_id"  # the stored raw-text field holding the id, one token per document (a shard: its schema's id field)
    partition_field: str = "_partition"
    deleted_field: str = "_deleted"
    counted_fields: frozenset[str] = frozenset()  # fields whose tokens are the values in their own fast column

    def tokens_known(self, name: str) -> bool:
        """Whether round 1 can total the tokens of field ``name`` over any set of documents."""
        return name in self.length_fields or name in self.counted_fields or name == self.id_field

    def name(self, field_id: int) -> str:
        """The name of the field with id ``field_id``."""
        if not 0 <= field_id < len(self.names):
            raise _NotRebuildable(f"field id {field_id} is not in the field list")
        return self.names[field_id]


@dataclass(frozen=True)
class ParsedQuery:
    """A user query as tantivy parsed it, and what ranking it with global statistics needs."""

    text: str
    original: tantivy.Query
    tree: qt.Query | None  # None when tantivy's Debug text could not be read
    ranking: str  # RANKING_EXACT, RANKING_GLOBAL_IDF or RANKING_LOCAL
    reason: str | None  # why ranking is not exact
    stats_request: StatsRequest  # what round 1 counts (nothing for RANKING_LOCAL)


class _NotRebuildable(Exception):
    """A node of the parsed tree that the ``Query`` constructors cannot reproduce."""


# --- parsing --------------------------------------------------------------------------------


def parse_query(
    index: tantivy.Index,
    fields: IndexFields,
    text: str,
    default_fields: Sequence[str],
    *,
    conjunction_by_default: bool = False,
) -> ParsedQuery:
    """Parse ``text`` with tantivy's parser; a bad query is a ``BadRequest`` that names the problem."""
    if len(text) > QUERY_CHARS_MAX:
        raise BadRequest(f"the query is {len(text)} characters long; at most {QUERY_CHARS_MAX} are allowed")
    try:
        original = index.parse_query(text, list(default_fields), conjunction_by_default=conjunction_by_default)
    except ValueError as error:
        raise query_error(str(error)) from error
    try:
        tree = qt.parse_query_debug(repr(original))
    except DebugSyntaxError as error:
        reason = f"tantivy's query tree could not be read: {error}"
        return ParsedQuery(text, original, None, RANKING_LOCAL, reason, StatsRequest())
    reason = _not_rebuildable_reason(tree, original, fields, text)
    if reason is not None:
        return ParsedQuery(text, original, tree, RANKING_LOCAL, reason, StatsRequest())
    keys = tuple(dict.fromkeys(term_key(fields, term) for term in qt.scoring_terms(tree)))
    scored = tuple(dict.fromkeys(_leaf_field(fields, leaf) for leaf in qt.scoring_leaves(tree)))
    missing = [name for name in scored if not fields.tokens_known(name)]
    if missing:
        reason = f"no length field for {', '.join(missing)}: average field lengths stay each node's own"
        return ParsedQuery(text, original, tree, RANKING_GLOBAL_IDF, reason, StatsRequest(keys))
    return ParsedQuery(text, original, tree, RANKING_EXACT, None, StatsRequest(keys, scored))


def with_ranking(parsed: ParsedQuery, ranking: str) -> ParsedQuery:
    """The same query ranked no more exactly than ``ranking`` (to skip rescoring, or to compare modes)."""
    if ranking not in RANKINGS:
        raise BadRequest(f"ranking must be one of {', '.join(RANKINGS)}, not {ranking!r}")
    if RANKINGS.index(ranking) >= RANKINGS.index(parsed.ranking):
        return parsed
    request = StatsRequest(parsed.stats_request.term_keys) if ranking == RANKING_GLOBAL_IDF else StatsRequest()
    return replace(parsed, ranking=ranking, reason=f"{ranking} ranking asked for", stats_request=request)


def query_error(message: str) -> BadRequest:
    """The ``BadRequest`` for one of tantivy's query errors, saying which kind it is."""
    kinds = (
        ("Syntax Error", "bad query syntax"),
        ("Field does not exist", "unknown field"),
        ("is not defined in the schema", "unknown field"),
        ("Expected a valid", "wrong value type"),
        ("Expected a bool", "wrong value type"),
        ("invalid format", "wrong value type"),
        ("is not a fast field", "the field is not a fast field"),
        ("Only excluding terms", "the query only excludes (add a term that matches)"),
        ("No default field", "no field to search (name one, e.g. title:word)"),
    )
    for marker, kind in kinds:
        if marker in message:
            return BadRequest(f"{kind}: {message}", kind=kind)
    return BadRequest(f"invalid query: {message}", kind="invalid query")


def _not_rebuildable_reason(tree: qt.Query, original: tantivy.Query, fields: IndexFields, text: str) -> str | None:
    if qt.contains_other(tree):
        return "the query holds a node that cannot be rebuilt (e.g. a regex)"
    if "\\." in text and any("." in (term.json_path or "") for term in qt.scoring_terms(tree)):
        return "a JSON key holding a dot cannot be told from a nested path in tantivy's query tree"
    try:
        rebuilt = _build(tree, fields, None)
    except _NotRebuildable as error:
        return str(error)
    if repr(rebuilt) != repr(original):
        return "the rebuilt query differs from the parsed one"
    return None


def term_key(fields: IndexFields, term: Term) -> TermKey:
    """The msgpack-able key of a term: (field name or JSON path, value type, value)."""
    if term.value is None or isinstance(term.value, bytes) or term.value_type not in _KEY_TYPES:
        raise _NotRebuildable(f"a {term.value_type} term cannot be rebuilt")
    return (_field_path(fields, term), term.value_type, term.value)


def _field_path(fields: IndexFields, term: Term) -> str:
    name = fields.name(term.field_id)
    if term.json_path is None:
        return name
    if not term.json_path:
        raise _NotRebuildable("a term on a JSON field's root cannot be rebuilt")
    return f"{name}.{term.json_path}"


def _leaf_field(fields: IndexFields, leaf: qt.ScoringLeaf) -> str:
    """The field whose average length a leaf's BM25 uses (a JSON path's field has no length field)."""
    term = qt.leaf_terms(leaf)[0]
    name = fields.name(term.field_id)
    return name if term.json_path is None else f"{name}.{term.json_path}"


def _python_value(value_type: str, value: Any) -> Any:
    if value_type != "Date":
        return value
    try:
        return datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError) as error:
        raise _NotRebuildable(f"date {value!r} cannot be read back") from error


# --- round 1 -------------------------------------------------------------------------------


def live_filter(fields: IndexFields, partitions: Collection[int]) -> tantivy.Query:
    """Live (non-tombstone) docs of the given partitions."""
    schema = fields.schema
    return tantivy.Query.boolean_query(
        [
            (tantivy.Occur.Must, tantivy.Query.term_set_query(schema, fields.partition_field, sorted(partitions))),
            (tantivy.Occur.Must, tantivy.Query.term_query(schema, fields.deleted_field, 0)),
        ]
    )


def local_stats(
    searcher: tantivy.Searcher,
    fields: IndexFields,
    request: StatsRequest,
    partitions: Collection[int],
    view: SearcherView | None = None,
) -> CollectionStats:
    """Round 1 on one node: N, each term's doc frequency and each field's tokens, over the live docs of ``partitions``.

    One count query for N and one per term (each intersected with the
    partition filter), and one aggregation for all the fields' token totals.
    With the searcher's ``view`` (``scope.SearcherView``), the filter is the
    cheapest that means the same, and N and the token totals are the view's,
    counted once per commit.
    """
    stats = CollectionStats(0, {key: 0 for key in request.term_keys}, {name: 0 for name in request.fields})
    if not partitions:
        return stats
    if view is not None:
        scope = view.scope(partitions)
        live, stats.doc_count = scope.filter, scope.doc_count
    else:
        live = live_filter(fields, partitions)
        stats.doc_count = _count(searcher, live)
    for key in request.term_keys:
        term = _key_query(fields, key)
        both = term if live is None else tantivy.Query.boolean_query([(tantivy.Occur.Must, term), (tantivy.Occur.Must, live)])
        stats.doc_freqs[key] = _count(searcher, both)
    if request.fields and stats.doc_count:
        if view is not None:
            stats.field_tokens = view.token_totals(partitions, request.fields)
        else:
            stats.field_tokens = token_totals(searcher, fields, request.fields, live, stats.doc_count)
    return stats


def _count(searcher: tantivy.Searcher, query: tantivy.Query) -> int:
    return searcher.search(query, limit=1, count=True).count  # limit=0 panics in tantivy


def token_totals(
    searcher: tantivy.Searcher, fields: IndexFields, names: Sequence[str], live: tantivy.Query, doc_count: int
) -> dict[str, int]:
    """The tokens of each field of ``names`` in the ``doc_count`` documents ``live`` matches.

    A length field's counts are summed; a counted field's values are counted in
    its fast column; the id field has one token per document: ``doc_count``."""
    unknown = [name for name in names if not fields.tokens_known(name)]
    if unknown:
        raise BadRequest(f"no length field for {', '.join(unknown)} in this index")
    aggregation: dict[str, Any] = {}
    for i, name in enumerate(names):
        if name in fields.length_fields:
            aggregation[f"f{i}"] = {"sum": {"field": fields.length_fields[name]}}
        elif name in fields.counted_fields:
            aggregation[f"f{i}"] = {"value_count": {"field": name}}
    result = searcher.aggregate(live, aggregation) if aggregation else {}
    return {
        name: doc_count if f"f{i}" not in aggregation else int(result[f"f{i}"]["value"] or 0) for i, name in enumerate(names)
    }


def _key_query(fields: IndexFields, key: TermKey) -> tantivy.Query:
    name, value_type, value = key
    try:
        return tantivy.Query.term_query(fields.schema, name, _python_value(value_type, value))
    except (ValueError, _NotRebuildable) as error:
        raise BadRequest(f"search term {list(key)!r} does not fit the index: {error}") from error


def max_doc(searcher: tantivy.Searcher, fields: IndexFields) -> int:
    """The N tantivy's own idf uses on this searcher: every doc, deleted ones and tombstones too."""
    return searcher.doc_freq(fields.deleted_field, 0) + searcher.doc_freq(fields.deleted_field, 1)


# --- round 2 -------------------------------------------------------------------------------


def ranked_query(
    parsed: ParsedQuery,
    fields: IndexFields,
    searcher: tantivy.Searcher,
    stats: CollectionStats,
    local_count: int | None = None,
) -> tantivy.Query:
    """The query with every BM25 leaf boosted by global idf / local idf (as parsed when ranking is local).

    ``local_count`` is the searcher's ``max_doc``, if the caller has it already."""
    if parsed.ranking == RANKING_LOCAL or parsed.tree is None:
        return parsed.original
    if local_count is None:
        local_count = max_doc(searcher, fields)
    if local_count == 0:
        return parsed.original  # an empty index matches nothing

    def factor(leaf: qt.ScoringLeaf) -> float:
        keys = [term_key(fields, term) for term in qt.leaf_terms(leaf)]
        local_idf = idf_sum((_local_doc_freq(searcher, key) for key in keys), local_count)
        return boost_factor(_global_idf(stats, keys), local_idf)

    return _build(parsed.tree, fields, factor)


def rescoring_query(
    parsed: ParsedQuery, fields: IndexFields, stats: CollectionStats
) -> tuple[tantivy.Query, list[LeafWeight]]:
    """The query to ``explain`` candidates with, and each BM25 leaf's global weight (``ranking.explained_score``).

    Leaf ``i`` is wrapped in ``Boost(leaf, marker_boost(i))`` so that its
    part of an explanation can be found; ``weights[i]`` holds its global idf
    and its field's global average length.
    """
    assert parsed.ranking == RANKING_EXACT and parsed.tree is not None
    leaves = list(dict.fromkeys(qt.scoring_leaves(parsed.tree)))
    weights = []
    for leaf in leaves:
        keys = [term_key(fields, term) for term in qt.leaf_terms(leaf)]
        tokens = stats.field_tokens.get(_leaf_field(fields, leaf))
        if tokens is None or stats.doc_count == 0:
            raise BadRequest(f"the search statistics lack the length of {_leaf_field(fields, leaf)}")
        weights.append(LeafWeight(_global_idf(stats, keys), average_field_length(tokens, stats.doc_count), _leaf_field(fields, leaf)))
    index_of = {leaf: index for index, leaf in enumerate(leaves)}
    return _build(parsed.tree, fields, lambda leaf: marker_boost(index_of[leaf])), weights


def _global_idf(stats: CollectionStats, keys: Sequence[TermKey]) -> float:
    for key in keys:
        if key not in stats.doc_freqs:
            raise BadRequest(f"the search statistics lack term {list(key)!r}")
    # a doc frequency above N would come from counts taken on different searchers: clamp, do not fail
    return idf_sum((min(stats.doc_freqs[key], stats.doc_count) for key in keys), stats.doc_count)


def _local_doc_freq(searcher: tantivy.Searcher, key: TermKey) -> int:
    name, value_type, value = key
    return searcher.doc_freq(name, _python_value(value_type, value))


# --- rebuilding the tree -----------------------------------------------------------------------

LeafFactor = Callable[[qt.ScoringLeaf], float]


def _build(node: qt.Query, fields: IndexFields, factor: LeafFactor | None) -> tantivy.Query:
    """``node`` as a tantivy query; with ``factor``, every scoring leaf boosted by it."""
    try:
        return _construct(node, fields, factor)
    except ValueError as error:
        raise _NotRebuildable(f"tantivy refused the rebuilt {type(node).__name__}: {error}") from error


def _construct(node: qt.Query, fields: IndexFields, factor: LeafFactor | None) -> tantivy.Query:
    Q, schema = tantivy.Query, fields.schema
    if isinstance(node, qt.TermQuery):
        name, value_type, value = term_key(fields, node.term)
        return _boosted(Q.term_query(schema, name, _python_value(value_type, value)), node, factor)
    if isinstance(node, qt.PhraseQuery):
        words = [(offset, _word(term)) for offset, term in node.terms]
        return _boosted(Q.phrase_query(schema, _phrase_field(fields, node), words, node.slop), node, factor)
    if isinstance(node, qt.PhrasePrefixQuery):
        words = [(offset, _word(term)) for offset, term in (*node.terms, node.prefix)]
        query = Q.phrase_prefix_query(schema, _phrase_field(fields, node), words)
        return _boosted(query, node, factor) if len(node.terms) >= 2 else query
    if isinstance(node, qt.BooleanQuery):
        clauses = [
            (_OCCUR[occur], _build(clause, fields, None if occur == "MustNot" else factor))
            for occur, clause in node.clauses
        ]
        return Q.boolean_query(clauses, minimum_number_should_match=node.minimum_should_match)
    if isinstance(node, qt.BoostQuery):
        return Q.boost_query(_build(node.query, fields, factor), node.boost)
    if isinstance(node, qt.RangeQuery):
        return _range(node, fields)
    if isinstance(node, qt.TermSetQuery):
        if len(node.terms) != 1:
            raise _NotRebuildable("a term set over several fields cannot be rebuilt")
        field_id, terms = node.terms[0]
        keys = [term_key(fields, term) for term in terms]
        return Q.term_set_query(schema, fields.name(field_id), [_python_value(t, v) for _, t, v in keys])
    if isinstance(node, qt.ExistsQuery):
        return Q.exists_query(node.field_name, node.json_subpaths)
    if isinstance(node, qt.FuzzyTermQuery):
        name, word = _field_path(fields, node.term), _word(node.term)
        return Q.fuzzy_term_query(schema, name, word, node.distance, node.transposition_cost_one, node.prefix)
    if isinstance(node, qt.AllQuery):
        return Q.all_query()
    if isinstance(node, qt.EmptyQuery):
        return Q.empty_query()
    raise _NotRebuildable(f"a {type(node).__name__} cannot be rebuilt")


def _boosted(query: tantivy.Query, leaf: qt.ScoringLeaf, factor: LeafFactor | None) -> tantivy.Query:
    if factor is None:
        return query
    boost = factor(leaf)
    return query if boost == 1.0 else tantivy.Query.boost_query(query, boost)


def _word(term: Term) -> str:
    if term.value_type != "Str" or not isinstance(term.value, str):
        raise _NotRebuildable(f"a phrase of {term.value_type} terms cannot be rebuilt")
    return term.value


def _phrase_field(fields: IndexFields, node: qt.PhraseQuery | qt.PhrasePrefixQuery) -> str:
    paths = {_field_path(fields, term) for _, term in node.terms}
    if isinstance(node, qt.PhrasePrefixQuery):
        paths.add(_field_path(fields, node.prefix[1]))
    if len(paths) != 1:
        raise _NotRebuildable("a phrase over several fields or JSON paths cannot be rebuilt")
    return paths.pop()


def _range(node: qt.RangeQuery, fields: IndexFields) -> tantivy.Query:
    terms = [bound.term for bound in (node.lower, node.upper) if bound.term is not None]
    if not terms or len({(t.field_id, t.value_type, t.json_path) for t in terms}) != 1:
        raise _NotRebuildable("a range without bounds, or over two fields, cannot be rebuilt")
    first = terms[0]
    if first.json_path is not None or first.value_type not in _RANGE_FIELD_TYPES:
        raise _NotRebuildable(f"a range over a {first.value_type} term of a JSON path or text cannot be rebuilt")

    def end(bound: qt.Bound) -> Any:
        return None if bound.term is None else _python_value(bound.term.value_type, bound.term.value)

    return tantivy.Query.range_query(
        fields.schema,
        fields.name(first.field_id),
        _RANGE_FIELD_TYPES[first.value_type],
        end(node.lower),
        end(node.upper),
        include_lower=node.lower.kind != "Excluded",
        include_upper=node.upper.kind != "Excluded",
    )


# --- ingest -----------------------------------------------------------------------------------------


def default_text_analyzer() -> tantivy.TextAnalyzer:
    """An analyzer that tokenizes as tantivy's ``default`` tokenizer: simple split, long tokens dropped, lowercase."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(DEFAULT_TOKEN_CHARS_MAX))
        .filter(tantivy.Filter.lowercase())
        .build()
    )


def field_length(values: Sequence[Any], analyzer: tantivy.TextAnalyzer | None) -> int:
    """The tokens tantivy indexes for one field of one doc: what its length field must hold.

    With an analyzer (a tokenized text field: the field's own tokenizer, e.g.
    ``default_text_analyzer()``), the tokens of every value; without one
    (raw text, numbers, dates, bools), one per value.
    """
    if analyzer is None:
        return len(values)
    return sum(len(analyzer.analyze(value)) for value in values)
