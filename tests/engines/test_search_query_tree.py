"""Tests of engines.search.query_tree: typed trees of tantivy's parsed queries and their scoring leaves."""

from __future__ import annotations

import pytest
from hypothesis import given, reject, settings

from engines.search import query_tree as qt
from engines.search.rust_debug import DebugSyntaxError, Ident, Term
from tests.engines.search_queries import DEFAULT_FIELDS, queries, typed_index

INDEX = typed_index()
TITLE, BODY, TAG, LINES = 3, 4, 5, 6


def tree(text: str) -> qt.Query:
    return qt.parse_query_debug(repr(INDEX.parse_query(text, DEFAULT_FIELDS)))


def word(field_id: int, value: str) -> Term:
    return Term(field_id, "Str", value)


@settings(deadline=None)  # tantivy parses or builds a query per example: slow under load
@given(queries())
def test_every_node_the_parser_makes_has_a_type(text: str) -> None:
    try:
        debug = repr(INDEX.parse_query(text, DEFAULT_FIELDS))
    except ValueError:
        reject()
    assert not qt.contains_other(qt.parse_query_debug(debug))


def test_a_boolean_of_words_phrases_boosts_and_ranges() -> None:
    assert tree('"run dog"~2 title:hello^2 -tag:x lines:[1 TO 5}') == qt.BooleanQuery(
        (
            ("Should", qt.PhraseQuery(TITLE, ((0, word(TITLE, "run")), (1, word(TITLE, "dog"))), 2)),
            ("Should", qt.PhraseQuery(BODY, ((0, word(BODY, "run")), (1, word(BODY, "dog"))), 2)),
            ("Should", qt.BoostQuery(qt.TermQuery(word(TITLE, "hello")), 2.0)),
            ("MustNot", qt.TermQuery(word(TAG, "x"))),
            (
                "Should",
                qt.RangeQuery(
                    qt.Bound("Included", Term(LINES, "I64", 1)), qt.Bound("Excluded", Term(LINES, "I64", 5))
                ),
            ),
        ),
        0,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*", qt.AllQuery()),
        ("lines:*", qt.ExistsQuery("lines", True)),
        ("title:IN [a b]", qt.TermSetQuery(((TITLE, (word(TITLE, "a"), word(TITLE, "b"))),))),
        ("lines:>3", qt.RangeQuery(qt.Bound("Excluded", Term(LINES, "I64", 3)), qt.Bound("Unbounded", None))),
        (
            'title:"run do"*',
            qt.PhrasePrefixQuery(TITLE, ((0, word(TITLE, "run")),), (1, word(TITLE, "do")), 50),
        ),
        ("attrs.a.b:foo", qt.TermQuery(Term(11, "Str", "foo", "a.b"))),
    ],
)
def test_leaf_nodes(text: str, expected: qt.Query) -> None:
    assert tree(text) == expected


def test_an_unknown_node_is_kept_as_read() -> None:
    query = qt.parse_query_debug("Query(DisjunctionMaxQuery { disjuncts: [AllQuery], tie_breaker: 0.0 })")
    assert isinstance(query, qt.OtherQuery) and qt.contains_other(query)
    nested = qt.parse_query_debug("BooleanQuery { subqueries: [(Should, Mystery)], minimum_number_should_match: 1 }")
    assert nested == qt.BooleanQuery((("Should", qt.OtherQuery(Ident("Mystery"))),), 1)
    assert qt.contains_other(nested)


def test_a_known_node_of_an_unexpected_shape_is_other() -> None:
    odd = qt.parse_query_debug("BooleanQuery { subqueries: [(Sometimes, AllQuery)], minimum_number_should_match: 1 }")
    assert isinstance(odd, qt.OtherQuery)


def test_garbage_is_a_syntax_error() -> None:
    with pytest.raises(DebugSyntaxError, match="expected"):
        qt.parse_query_debug("Query(BooleanQuery { subqueries: [")


def test_scoring_leaves_skip_excluded_and_constant_score_clauses() -> None:
    query = tree('title:a^2 -body:b "c d" lines:[1 TO 2] tag:IN [x] lines:* title:"e f"* body:"g h i"*')
    leaves = qt.scoring_leaves(query)
    assert leaves == [
        qt.TermQuery(word(TITLE, "a")),
        qt.PhraseQuery(TITLE, ((0, word(TITLE, "c")), (1, word(TITLE, "d"))), 0),
        qt.PhraseQuery(BODY, ((0, word(BODY, "c")), (1, word(BODY, "d"))), 0),
        qt.PhrasePrefixQuery(BODY, ((0, word(BODY, "g")), (1, word(BODY, "h"))), (2, word(BODY, "i")), 50),
    ]  # -body:b excluded; the one-term phrase prefix "e f"* scores a constant 1.0


def test_leaf_terms_keep_a_phrases_repeats_and_scoring_terms_list_each_once() -> None:
    query = tree('title:"the the cat" title:the')
    phrase = qt.scoring_leaves(query)[0]
    assert qt.leaf_terms(phrase) == (word(TITLE, "the"), word(TITLE, "the"), word(TITLE, "cat"))
    assert qt.scoring_terms(query) == [word(TITLE, "the"), word(TITLE, "cat")]
    prefix = tree('body:"g h i"*')
    assert qt.leaf_terms(qt.scoring_leaves(prefix)[0]) == (word(BODY, "g"), word(BODY, "h"))  # not the prefix


def test_terms_under_must_not_are_not_scoring_terms() -> None:
    assert qt.scoring_terms(tree("title:a -title:b")) == [word(TITLE, "a")]
    assert qt.scoring_terms(tree("title:a AND NOT (title:b OR title:c)")) == [word(TITLE, "a")]
