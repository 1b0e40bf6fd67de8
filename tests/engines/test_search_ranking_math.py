"""Tests of engines.search.ranking: BM25 arithmetic, statistics, merging hits, metrics, explained scores.

The module is pure; these tests need no index. (``test_search_query_compile``
checks the same arithmetic against tantivy's own numbers.)
"""

from __future__ import annotations

import math
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engines.search import ranking
from engines.search.ranking import CollectionStats, Hit, LeafWeight, StatsRequest, as_f32, marker_boost, rescore_bound
from legion.errors import BadRequest

term_keys = st.tuples(
    st.sampled_from(["title", "body", "attrs.a"]), st.sampled_from(["Str", "I64"]), st.text(max_size=5)
)
counts = st.integers(min_value=0, max_value=10**9)


def next_f32(value: float) -> float:
    """The next float32 above ``value`` (a positive float32)."""
    return struct.unpack("<f", struct.pack("<I", struct.unpack("<I", struct.pack("<f", value))[0] + 1))[0]


# --- BM25 -----------------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=10**9), st.data())
def test_idf_falls_as_the_term_gets_commoner(doc_count: int, data: st.DataObject) -> None:
    low = data.draw(st.integers(min_value=0, max_value=doc_count - 1))
    assert ranking.idf(low, doc_count) >= ranking.idf(low + 1, doc_count) >= 0
    assert ranking.idf(low, doc_count) == ranking.as_f32(ranking.idf(low, doc_count))
    if doc_count < 2**22:
        assert ranking.idf(low + 1, doc_count) > 0


def test_in_float32_a_term_in_every_doc_of_a_huge_index_has_idf_zero_and_keeps_its_local_score() -> None:
    assert ranking.idf(2**23, 2**23) == 0.0  # 1 + 0.5 / (2**23 + 0.5) rounds to 1 in f32, as in tantivy
    assert ranking.boost_factor(0.5, 0.0) == 1.0
    assert ranking.boost_factor(0.0, 0.5) == 0.0


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=10**6))
def test_idf_is_the_bm25_formula_to_within_float32(doc_freq: int, extra: int) -> None:
    doc_count = doc_freq + extra
    exact = math.log(1 + (doc_count - doc_freq + 0.5) / (doc_freq + 0.5))
    # 1 + x is rounded to float32 before the log, as tantivy does: near 0 the error is absolute, not relative
    assert ranking.idf(doc_freq, doc_count) == pytest.approx(exact, rel=1e-6, abs=2e-7)


def test_idf_refuses_more_docs_with_the_term_than_docs() -> None:
    with pytest.raises(AssertionError):
        ranking.idf(5, 4)


@given(st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=6))
def test_a_phrase_idf_adds_its_terms_idfs_in_order(doc_freqs: list[int]) -> None:
    total = 0.0
    for doc_freq in doc_freqs:
        total = ranking.as_f32(total + ranking.idf(doc_freq, 1000))
    assert ranking.idf_sum(doc_freqs, 1000) == total
    assert ranking.idf_sum(doc_freqs[:1], 1000) == ranking.idf(doc_freqs[0], 1000)


@given(st.floats(min_value=0.01, max_value=20), st.floats(min_value=0.01, max_value=20))
def test_the_boost_factor_turns_the_local_idf_into_the_global_one(global_idf: float, local_idf: float) -> None:
    assert local_idf * ranking.boost_factor(global_idf, local_idf) == pytest.approx(global_idf)


def test_bm25_leaf_score_is_tantivys_formula() -> None:
    # idf 4.6699586, freq 5, dl 36, avgdl 18.3895: tantivy's explain says 7.274208 (and 9.456469535827637 with ^1.3)
    assert ranking.bm25_leaf_score(4.6699586, 5, 36, 18.3895) == ranking.as_f32(7.274208)
    assert ranking.bm25_leaf_score(4.6699586, 5, 36, 18.3895, boost=1.3) == 9.456469535827637


@given(st.integers(min_value=1, max_value=10**6), st.integers(min_value=0, max_value=10**8))
def test_average_field_length_is_float32_tokens_over_float32_docs(doc_count: int, tokens: int) -> None:
    expected = ranking.as_f32(ranking.as_f32(float(tokens)) / ranking.as_f32(float(doc_count)))
    assert ranking.average_field_length(tokens, doc_count) == expected


# --- statistics ---------------------------------------------------------------------------------


stats = st.builds(
    CollectionStats,
    counts,
    st.dictionaries(term_keys, counts, max_size=4),
    st.dictionaries(st.sampled_from(["title", "body"]), counts, max_size=2),
)


@given(st.lists(stats, max_size=5))
def test_merged_stats_add_up_every_count(parts: list[CollectionStats]) -> None:
    merged = ranking.merge_stats(parts)
    assert merged.doc_count == sum(part.doc_count for part in parts)
    for key in {key for part in parts for key in part.doc_freqs}:
        assert merged.doc_freqs[key] == sum(part.doc_freqs.get(key, 0) for part in parts)
    for name in {name for part in parts for name in part.field_tokens}:
        assert merged.field_tokens[name] == sum(part.field_tokens.get(name, 0) for part in parts)


@given(st.lists(stats, min_size=2, max_size=5), st.randoms())
def test_merging_stats_does_not_depend_on_the_order_of_the_nodes(
    parts: list[CollectionStats], rng: random.Random
) -> None:
    shuffled = parts[:]
    rng.shuffle(shuffled)
    assert ranking.merge_stats(parts) == ranking.merge_stats(shuffled)


@given(stats)
def test_stats_survive_their_wire_form(part: CollectionStats) -> None:
    assert CollectionStats.from_wire(part.to_wire()) == part


@given(st.lists(term_keys, max_size=4).map(tuple), st.lists(st.sampled_from(["title", "body"]), max_size=2).map(tuple))
def test_a_stats_request_survives_its_wire_form(keys: tuple, fields: tuple) -> None:
    request = StatsRequest(keys, fields)
    assert StatsRequest.from_wire(request.to_wire()) == request


@pytest.mark.parametrize(
    "wire",
    [
        None, [], [1, []], [-1, [], []], [True, [], []], [1, [[["t", "Str"], 1]], []],
        [1, [[["t", "Str", "a"], -2]], []],
        [1, [[["t", "Str", None], 2]], []], [1, [], [[3, 4]]], [1, "doc_freqs", []], [1, [[1, 2, 3]], []],
    ],  # fmt: skip
)
def test_malformed_stats_are_bad_requests(wire: object) -> None:
    with pytest.raises(BadRequest, match="search"):
        CollectionStats.from_wire(wire)


@pytest.mark.parametrize("wire", [None, [[]], [[["t", "Str"]], []], [[], [1]], "x"])
def test_malformed_stats_requests_are_bad_requests(wire: object) -> None:
    with pytest.raises(BadRequest, match="search"):
        StatsRequest.from_wire(wire)


# --- hits ------------------------------------------------------------------------------------------


scores = st.sampled_from([0.5, 1.0, 1.0, 2.25, 3.0, 7.5])  # few values: many ties
hit_sets = st.dictionaries(st.text("abcdef", min_size=1, max_size=3), scores, max_size=30)


@given(hit_sets, st.integers(min_value=1, max_value=4), st.integers(0, 10), st.integers(0, 10), st.randoms())
def test_merging_nodes_first_hits_gives_the_global_page(
    hits: dict[str, float], nodes: int, offset: int, limit: int, rng: random.Random
) -> None:
    everything = [Hit(doc_id, score) for doc_id, score in hits.items()]
    per_node: list[list[Hit]] = [[] for _ in range(nodes)]
    for hit in everything:
        per_node[rng.randrange(nodes)].append(hit)
    answers = [ranking.first_hits(node, offset + limit) for node in per_node]
    expected = sorted(everything, key=lambda hit: (-hit.score, hit.id))[offset : offset + limit]
    assert ranking.merge_hits(answers, offset, limit) == expected


def test_an_empty_page_is_empty() -> None:
    lists = [[Hit("a", 2.0), Hit("b", 1.0)], [Hit("c", 1.5)]]
    assert ranking.merge_hits(lists, 0, 0) == []
    assert ranking.merge_hits(lists, 2, 0) == []
    assert ranking.merge_hits(lists, 5, 3) == []
    assert ranking.merge_hits(lists, 1, 1) == [Hit("c", 1.5)]


def test_ties_are_ordered_by_id_and_a_repeated_id_counts_once() -> None:
    lists = [[Hit("b", 1.0), Hit("c", 1.0)], [Hit("a", 1.0), Hit("b", 1.0)], [Hit("z", 2.0)]]
    merged = ranking.merge_hits(lists, 0, 10)
    assert merged == [Hit("z", 2.0), Hit("a", 1.0), Hit("b", 1.0), Hit("c", 1.0)]


def test_scores_tie_when_equal_as_float32() -> None:
    one = 1.0
    assert ranking.scores_tie(one, one + 1e-12)  # both round to the same float32
    assert not ranking.scores_tie(one, next_f32(one))  # one float32 apart is another score
    assert ranking.scores_tie(7.2742085456848145, ranking.as_f32(7.2742085))


@pytest.mark.parametrize(
    ("scores", "count", "unfinished"),
    [
        ([3.0, 2.0, 1.0], 2, False),
        ([3.0, 2.0, 2.0], 2, True),  # the hit past the cut ties the last kept
        ([3.0, 2.0, 2.0, 2.0, 1.0], 2, False),  # the tied run ended within what was fetched
        ([3.0, 2.0, 2.0, 2.0, 2.0], 2, True),
        ([2.0, 2.0], 2, False),  # nothing fetched past the cut: nothing more exists
        ([2.0, 2.0], 0, False),
    ],
)
def test_a_tie_run_is_unfinished_while_the_last_hit_fetched_ties_the_cut(
    scores: list[float], count: int, unfinished: bool
) -> None:
    assert ranking.tie_run_unfinished(scores, count) is unfinished


# --- metrics -------------------------------------------------------------------------------------


def test_overlap_at_k() -> None:
    assert ranking.overlap_at_k(["a", "b", "c"], ["c", "b", "a"], 3) == 1.0
    assert ranking.overlap_at_k(["a", "x", "y", "z"], ["a", "b"], 2) == 0.5
    assert ranking.overlap_at_k(["a", "b", "z"], ["a", "b", "c"], 2) == 1.0  # only the first k count
    assert ranking.overlap_at_k([], [], 10) == 1.0
    assert ranking.overlap_at_k(["a"], [], 10) == 0.0


def test_overlap_at_k_with_reference_scores_counts_a_hit_that_ties_the_one_it_replaced() -> None:
    scores = {"a": 3.0, "b": 2.0, "c": 2.0, "d": 2.0, "e": 1.0, "f": 2.0 + 1e-12}
    reference = ["a", "b", "c"]
    assert ranking.overlap_at_k(["a", "d", "c"], reference, 3) == 2 / 3  # by ids alone
    assert ranking.overlap_at_k(["a", "d", "c"], reference, 3, scores) == 1.0  # d ties the b it replaced
    assert ranking.overlap_at_k(["a", "f", "c"], reference, 3, scores) == 1.0  # equal as float32
    assert ranking.overlap_at_k(["a", "e", "c"], reference, 3, scores) == 2 / 3  # e scores less than b
    assert ranking.overlap_at_k(["a", "d", "f"], reference, 3, scores) == 1.0  # two replaced, two ties
    assert ranking.overlap_at_k(["d", "b", "c"], reference, 3, scores) == 2 / 3  # d does not tie a
    assert ranking.overlap_at_k(["a", "d", "x"], reference, 3, scores) == 2 / 3  # x: no score in the reference
    assert ranking.overlap_at_k(["a", "d", "f", "b"], ["a", "b", "c", "e"], 4, scores) == 3 / 4  # one e, no tie for it


def test_top1_agrees_with_the_reference_first_or_a_doc_that_ties_it() -> None:
    reference = [Hit("a", 2.0), Hit("b", 2.0), Hit("c", 1.0)]
    scores = {hit.id: hit.score for hit in reference}
    assert ranking.top1_agrees(["a", "c"], reference, scores)
    assert ranking.top1_agrees(["b", "a"], reference, scores)  # b ties a in the reference: a tie ordered otherwise
    assert not ranking.top1_agrees(["c", "a"], reference, scores)
    assert not ranking.top1_agrees(["unknown"], reference, scores)
    assert not ranking.top1_agrees([], reference, scores)
    assert ranking.top1_agrees([], [], {})


# --- explained scores ---------------------------------------------------------------------------------


def bm25_node(freq: float, dl: float, local_value: float = 99.0) -> dict:
    """A ``TermQuery, product of...`` explanation as tantivy writes it (its values are the node's, unused)."""
    return {
        "value": local_value,
        "description": "TermQuery, product of...",
        "details": [
            {"value": 2.2, "description": "(K1+1)"},
            {"value": 1.5, "description": "idf, computed as log(1 + (N - n + 0.5) / (n + 0.5))"},
            {
                "value": 0.5,
                "description": "freq / (freq + k1 * (1 - b + b * dl / avgdl))",
                "details": [
                    {"value": freq, "description": "freq, occurrences of term within document"},
                    {"value": 1.2, "description": "k1, term saturation parameter"},
                    {"value": 0.75, "description": "b, length normalization parameter"},
                    {"value": dl, "description": "dl, length of field"},
                    {"value": 3.0, "description": "avgdl, average length of field"},
                ],
            },
        ],
    }


def boost(factor: float, child: dict) -> dict:
    return {"value": 0.0, "description": f"Boost x{factor} of ...", "details": [child]}


def total(*children: dict) -> dict:
    return {"value": 0.0, "description": "BooleanClause. sum of ...", "details": list(children)}


MARK0, MARK1 = (ranking.as_f32(ranking.marker_boost(i)) for i in range(2))
LEAVES = [LeafWeight(idf=4.0, avg_field_length=10.0), LeafWeight(idf=2.0, avg_field_length=5.0)]


def test_explained_score_recomputes_each_leaf_with_the_global_weights() -> None:
    explanation = total(boost(MARK0, bm25_node(2, 8)), boost(MARK1, bm25_node(1, 3)))
    expected = ranking.as_f32(ranking.bm25_leaf_score(4.0, 2, 8, 10.0) + ranking.bm25_leaf_score(2.0, 1, 3, 5.0))
    assert ranking.explained_score(explanation, LEAVES) == expected


def test_boosts_above_a_leaf_fold_into_its_weight_outermost_first() -> None:
    explanation = boost(1.7, boost(1.3, boost(MARK0, bm25_node(2, 8))))
    folded = ranking.as_f32(ranking.as_f32(1.0 * ranking.as_f32(1.7)) * ranking.as_f32(1.3))
    assert ranking.explained_score(explanation, LEAVES) == ranking.bm25_leaf_score(4.0, 2, 8, 10.0, boost=folded)


def test_phrases_are_recomputed_from_their_inner_bm25_node() -> None:
    phrase = {"value": 5.0, "description": "Phrase Scorer", "details": [bm25_node(3, 9)]}
    assert ranking.explained_score(boost(MARK1, phrase), LEAVES) == ranking.bm25_leaf_score(2.0, 3, 9, 5.0)


def test_constant_scores_score_the_boost_they_are_handed_except_a_one_term_phrase_prefix() -> None:
    const = {"value": 1.0, "description": "Const"}
    prefix = {"value": 1.0, "description": "Phrase Prefix Scorer", "details": [bm25_node(1, 1)]}
    assert ranking.explained_score(boost(3.0, total(const, boost(2.0, const))), LEAVES) == 3.0 + 6.0
    assert ranking.explained_score(boost(3.0, prefix), LEAVES) == 1.0


def test_an_unknown_node_above_a_leaf_cannot_be_recomputed() -> None:
    mystery = {"value": 1.0, "description": "DisjunctionMax", "details": [boost(MARK0, bm25_node(1, 1))]}
    with pytest.raises(ranking.ExplanationError, match="DisjunctionMax"):
        ranking.explained_score(mystery, LEAVES)
    with pytest.raises(ranking.ExplanationError, match="freq"):
        ranking.explained_score(boost(MARK0, {"value": 1.0, "description": "TermQuery, product of..."}), LEAVES)
    with pytest.raises(ranking.ExplanationError, match="without a factor"):
        ranking.explained_score({"value": 1.0, "description": "Boost xlots of ..."}, LEAVES)


def test_markers_are_negative_and_distinct_as_float32() -> None:
    markers = [ranking.as_f32(ranking.marker_boost(i)) for i in range(1000)]
    assert len(set(markers)) == 1000 and all(marker < 0 for marker in markers)


def test_the_rescore_bound_is_the_greatest_ratio_of_global_to_local_average_length_and_none_when_unknown():
    leaves = [LeafWeight(4.0, 12.0, "body"), LeafWeight(2.0, 3.0, "title")]

    def leaf(index: int, avgdl: float) -> dict:
        frequency = {"description": "freq / (freq + k1 * (1 - b + b * dl / avgdl))", "details": [
            {"value": 1.0, "description": "freq, occurrences of term within document"},
            {"value": 4.0, "description": "dl, length of field"},
            {"value": avgdl, "description": "avgdl, average length of field"},
        ]}  # fmt: skip
        product = {"description": "TermQuery, product of...", "details": [frequency]}
        return {"description": f"Boost x{as_f32(marker_boost(index))} of ...", "details": [product]}

    both = {"description": "BooleanClause. sum of ...", "details": [leaf(0, 10.0), leaf(1, 4.0)]}
    seen: dict[str, float] = {}
    assert rescore_bound({"description": "BooleanClause. sum of ...", "details": [leaf(0, 10.0)]}, leaves, seen) is None
    assert rescore_bound(both, leaves, seen) == pytest.approx(1.2)  # body: 12 / 10; title: 3 / 4 < 1
    negative = {"description": "Boost x-2 of ...", "details": [both]}
    assert rescore_bound(negative, leaves, {}) is None
    odd = {"description": "BooleanClause. sum of ...", "details": [{"description": f"Boost x{as_f32(marker_boost(0))} of ...", "details": [{"description": "something else"}]}]}
    assert rescore_bound(odd, leaves, {}) is None
