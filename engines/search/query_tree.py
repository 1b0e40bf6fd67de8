"""Tantivy query trees, typed, from the text tantivy prints for them.

tantivy-py hides a parsed query's structure; all it shows is the Rust
``Debug`` text (``repr(index.parse_query(...))``), e.g.::

    Query(BooleanQuery { subqueries: [(Should, TermQuery(Term(field=1,
    type=Str, "hello"))), (Must, Boost(query=PhraseQuery { field: Field(2),
    phrase_terms: [(0, Term(field=2, type=Str, "run")), (1, Term(field=2,
    type=Str, "dog"))], slop: 0 }, boost=2))], minimum_number_should_match: 0 })

Reading that text back lets the search engine keep tantivy's own query
semantics (its parser decides what a query means) and still rebuild the tree
with extra boosts on the leaves that score with term statistics.

``parse_query_debug`` reads the text (with ``rust_debug``) and types it:
``TermQuery``, ``PhraseQuery``, ``PhrasePrefixQuery``, ``BooleanQuery``,
``BoostQuery``, ``RangeQuery``, ``TermSetQuery``, ``ExistsQuery``,
``FuzzyTermQuery``, ``AllQuery``, ``EmptyQuery``; any other node, or a known
node of an unexpected shape, becomes an ``OtherQuery`` that keeps the value
as read. ``scoring_leaves`` lists the nodes whose score uses term statistics
(BM25: term, phrase and (two-term or longer) phrase-prefix queries outside
``MustNot`` clauses); ``leaf_terms`` and ``scoring_terms`` the terms they
read. Terms are ``rust_debug.Term`` values (field id, value type, value,
JSON path).

Pure: no tantivy import, no I/O. Text that is no Rust ``Debug`` value raises
``rust_debug.DebugSyntaxError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Union

from engines.search.rust_debug import Call, Ident, Map, Struct, Term, Value, parse_debug

OCCURS = frozenset({"Should", "Must", "MustNot"})
BOUND_KINDS = frozenset({"Included", "Excluded", "Unbounded"})


# --- typed query nodes -----------------------------------------------------------


@dataclass(frozen=True)
class TermQuery:
    """Docs containing one term; scores with BM25."""

    term: Term


@dataclass(frozen=True)
class PhraseQuery:
    """Docs containing the terms at the given offsets (within ``slop``); BM25 with the summed idf."""

    field_id: int
    terms: tuple[tuple[int, Term], ...]
    slop: int


@dataclass(frozen=True)
class PhrasePrefixQuery:
    """A phrase whose last term is a prefix.

    With two or more ``terms`` before the prefix it scores with BM25 over
    them (idf summed, the prefix unscored); with one, tantivy scores every
    match 1.0; with none, it runs a constant-score prefix range.
    """

    field_id: int
    terms: tuple[tuple[int, Term], ...]
    prefix: tuple[int, Term]
    max_expansions: int


@dataclass(frozen=True)
class BooleanQuery:
    """Clauses with an occur (``Should``, ``Must``, ``MustNot``); scores add up."""

    clauses: tuple[tuple[str, Query], ...]
    minimum_should_match: int


@dataclass(frozen=True)
class BoostQuery:
    """Multiplies the inner query's score by ``boost``."""

    query: Query
    boost: float


@dataclass(frozen=True)
class Bound:
    """One end of a range: ``Included``/``Excluded`` with a term, or ``Unbounded`` (``term`` is None)."""

    kind: str
    term: Term | None


@dataclass(frozen=True)
class RangeQuery:
    """Docs whose value lies within the bounds; constant score."""

    lower: Bound
    upper: Bound


@dataclass(frozen=True)
class TermSetQuery:
    """Docs containing any of the terms (grouped by field id); constant score."""

    terms: tuple[tuple[int, tuple[Term, ...]], ...]


@dataclass(frozen=True)
class ExistsQuery:
    """Docs that have a value in the (fast) field; constant score."""

    field_name: str
    json_subpaths: bool


@dataclass(frozen=True)
class FuzzyTermQuery:
    """Docs containing a term within an edit distance; constant score."""

    term: Term
    distance: int
    transposition_cost_one: bool
    prefix: bool


@dataclass(frozen=True)
class AllQuery:
    """Every doc; constant score."""


@dataclass(frozen=True)
class EmptyQuery:
    """No doc."""


@dataclass(frozen=True)
class OtherQuery:
    """A node this module does not model (or a known one of an unexpected shape), kept as read."""

    value: Value


Query = Union[
    TermQuery,
    PhraseQuery,
    PhrasePrefixQuery,
    BooleanQuery,
    BoostQuery,
    RangeQuery,
    TermSetQuery,
    ExistsQuery,
    FuzzyTermQuery,
    AllQuery,
    EmptyQuery,
    OtherQuery,
]
ScoringLeaf = Union[TermQuery, PhraseQuery, PhrasePrefixQuery]


# --- typed nodes ------------------------------------------------------------------------------------


def parse_query_debug(text: str) -> Query:
    """The typed tree of a query's ``Debug`` text (tantivy-py's ``repr``, with or without ``Query(...)``)."""
    value = parse_debug(text)
    if isinstance(value, Call) and value.name == "Query" and len(value.args) == 1 and not value.kwargs:
        value = value.args[0]
    return query_from_value(value)


def query_from_value(value: Value) -> Query:
    """The typed node of one generic value; shapes it does not know become ``OtherQuery``."""
    try:
        return _typed(value)
    except (KeyError, TypeError, ValueError):
        return OtherQuery(value)


def _typed(value: Value) -> Query:
    if isinstance(value, Ident):
        if value.name == "AllQuery":
            return AllQuery()
        if value.name == "EmptyQuery":
            return EmptyQuery()
        return OtherQuery(value)
    if isinstance(value, Call):
        return _typed_call(value)
    if isinstance(value, Struct):
        return _typed_struct(value)
    return OtherQuery(value)


def _typed_call(value: Call) -> Query:
    if value.name == "TermQuery" and not value.kwargs and len(value.args) == 1:
        return TermQuery(_term(value.args[0]))
    if value.name == "Boost" and not value.args and [k for k, _ in value.kwargs] == ["query", "boost"]:
        kwargs = dict(value.kwargs)
        return BoostQuery(query_from_value(kwargs["query"]), _float(kwargs["boost"]))
    return OtherQuery(value)


def _typed_struct(value: Struct) -> Query:
    keys = [key for key, _ in value.fields]
    if value.name == "BooleanQuery" and keys == ["subqueries", "minimum_number_should_match"]:
        return BooleanQuery(_clauses(value.get("subqueries")), _int(value.get("minimum_number_should_match")))
    if value.name == "PhraseQuery" and keys == ["field", "phrase_terms", "slop"]:
        terms = _offset_terms(value.get("phrase_terms"))
        return PhraseQuery(_field(value.get("field")), terms, _int(value.get("slop")))
    if value.name == "PhrasePrefixQuery" and keys == ["field", "phrase_terms", "prefix", "max_expansions"]:
        return PhrasePrefixQuery(
            _field(value.get("field")),
            _offset_terms(value.get("phrase_terms")),
            _offset_term(value.get("prefix")),
            _int(value.get("max_expansions")),
        )
    if value.name == "RangeQuery" and keys == ["bounds"]:
        bounds = value.get("bounds")
        if isinstance(bounds, Struct) and bounds.name == "BoundsRange":
            return RangeQuery(_bound(bounds.get("lower_bound")), _bound(bounds.get("upper_bound")))
    if value.name == "TermSetQuery" and keys == ["terms_map"]:
        return TermSetQuery(_terms_map(value.get("terms_map")))
    if value.name == "ExistsQuery" and keys == ["field_name", "json_subpaths"]:
        return ExistsQuery(_str(value.get("field_name")), _bool(value.get("json_subpaths")))
    if value.name == "FuzzyTermQuery" and keys == ["term", "distance", "transposition_cost_one", "prefix"]:
        return FuzzyTermQuery(
            _term(value.get("term")),
            _int(value.get("distance")),
            _bool(value.get("transposition_cost_one")),
            _bool(value.get("prefix")),
        )
    return OtherQuery(value)


def _clauses(value: Value) -> tuple[tuple[str, Query], ...]:
    if not isinstance(value, list):
        raise TypeError("subqueries")
    clauses = []
    for item in value:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Ident)):
            raise TypeError("clause")
        if item[0].name not in OCCURS:
            raise ValueError(f"occur {item[0].name}")
        clauses.append((item[0].name, query_from_value(item[1])))
    return tuple(clauses)


def _bound(value: Value) -> Bound:
    if isinstance(value, Ident) and value.name == "Unbounded":
        return Bound("Unbounded", None)
    if isinstance(value, Call) and value.name in BOUND_KINDS and len(value.args) == 1 and not value.kwargs:
        return Bound(value.name, _term(value.args[0]))
    raise TypeError("bound")


def _terms_map(value: Value) -> tuple[tuple[int, tuple[Term, ...]], ...]:
    if not isinstance(value, Map):
        raise TypeError("terms_map")
    groups = []
    for key, terms in value.entries:
        if not isinstance(terms, list):
            raise TypeError("terms")
        groups.append((_field(key), tuple(_term(term) for term in terms)))
    return tuple(groups)


def _offset_terms(value: Value) -> tuple[tuple[int, Term], ...]:
    if not isinstance(value, list):
        raise TypeError("phrase_terms")
    return tuple(_offset_term(item) for item in value)


def _offset_term(value: Value) -> tuple[int, Term]:
    if not (isinstance(value, tuple) and len(value) == 2):
        raise TypeError("(offset, term)")
    return _int(value[0]), _term(value[1])


def _field(value: Value) -> int:
    if isinstance(value, Call) and value.name == "Field" and len(value.args) == 1 and not value.kwargs:
        return _int(value.args[0])
    raise TypeError("Field(id)")


def _term(value: Value) -> Term:
    if not isinstance(value, Term):
        raise TypeError("Term")
    return value


def _int(value: Value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("int")
    return value


def _float(value: Value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("number")
    return float(value)


def _bool(value: Value) -> bool:
    if not isinstance(value, bool):
        raise TypeError("bool")
    return value


def _str(value: Value) -> str:
    if not isinstance(value, str):
        raise TypeError("str")
    return value


# --- scoring leaves ------------------------------------------------------------------------------------


def scoring_leaves(query: Query) -> list[ScoringLeaf]:
    """The nodes whose score uses term statistics, in tree order; ``MustNot`` clauses never score."""
    return list(_leaves(query))


def _leaves(query: Query) -> Iterator[ScoringLeaf]:
    if isinstance(query, TermQuery | PhraseQuery):
        yield query
    elif isinstance(query, PhrasePrefixQuery):
        if len(query.terms) >= 2:  # else a constant score (see PhrasePrefixQuery)
            yield query
    elif isinstance(query, BoostQuery):
        yield from _leaves(query.query)
    elif isinstance(query, BooleanQuery):
        for occur, clause in query.clauses:
            if occur != "MustNot":
                yield from _leaves(clause)


def leaf_terms(leaf: ScoringLeaf) -> tuple[Term, ...]:
    """The terms whose idf a leaf's BM25 weight sums (a phrase's terms in order, repeats kept)."""
    if isinstance(leaf, TermQuery):
        return (leaf.term,)
    return tuple(term for _, term in leaf.terms)


def scoring_terms(query: Query) -> list[Term]:
    """Every term some scoring leaf reads, once each, in first-seen order."""
    seen: dict[Term, None] = {}
    for leaf in _leaves(query):
        for term in leaf_terms(leaf):
            seen.setdefault(term, None)
    return list(seen)


def contains_other(query: Query) -> bool:
    """Whether any node of the tree is an ``OtherQuery`` (a node that cannot be rebuilt)."""
    if isinstance(query, OtherQuery):
        return True
    if isinstance(query, BoostQuery):
        return contains_other(query.query)
    if isinstance(query, BooleanQuery):
        return any(contains_other(clause) for _, clause in query.clauses)
    return False
