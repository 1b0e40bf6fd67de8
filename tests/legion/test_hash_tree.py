"""legion.hash_tree: the exchange finds exactly the differing keys; incremental equals rebuilt; order does not matter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from legion.hash_tree import HashTree, diff, differing_indexes, ops_version, segment_of

keys = st.binary(min_size=1, max_size=6)
versions = st.binary(min_size=1, max_size=4)
states = st.dictionaries(keys, versions, max_size=60)
# Small trees, so that collisions of segments and buckets are common.
shapes = st.sampled_from([(1, 1), (4, 2), (16, 4), (64, 8)])


def tree_of(items: dict[bytes, bytes], shape: tuple[int, int]) -> HashTree:
    return HashTree.build(items.items(), *shape)


@given(states, states, shapes)
def test_diff_finds_exactly_the_keys_whose_versions_differ(a: dict[bytes, bytes], b: dict[bytes, bytes], shape: tuple[int, int]) -> None:
    expected = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert diff(tree_of(a, shape), tree_of(b, shape)) == expected
    assert diff(tree_of(b, shape), tree_of(a, shape)) == expected


@given(states, st.lists(st.tuples(keys, st.none() | versions), max_size=60), shapes)
def test_a_tree_updated_item_by_item_equals_one_rebuilt_from_the_result(
    start: dict[bytes, bytes], updates: list[tuple[bytes, bytes | None]], shape: tuple[int, int]
) -> None:
    tree = tree_of(start, shape)
    final = dict(start)
    for key, version in updates:
        tree.set(key, version)
        if version is None:
            final.pop(key, None)
        else:
            final[key] = version
    rebuilt = tree_of(final, shape)
    assert tree.root() == rebuilt.root()
    assert tree.bucket_hashes() == rebuilt.bucket_hashes()
    assert tree.items() == final and len(tree) == len(final)
    assert diff(tree, rebuilt) == set()


@given(states, st.randoms(use_true_random=False), shapes)
def test_the_root_does_not_depend_on_the_order_items_arrive_in(items: dict[bytes, bytes], rnd, shape: tuple[int, int]) -> None:
    pairs = list(items.items())
    shuffled = pairs[:]
    rnd.shuffle(shuffled)
    assert HashTree.build(pairs, *shape).root() == HashTree.build(shuffled, *shape).root()


@given(states, keys, versions, versions)
def test_one_changed_version_changes_the_root_and_is_found_alone(items: dict[bytes, bytes], key: bytes, v1: bytes, v2: bytes) -> None:
    if v1 == v2:
        v2 = v1 + b"!"
    a, b = dict(items), dict(items)
    a[key], b[key] = v1, v2
    ta, tb = tree_of(a, (64, 8)), tree_of(b, (64, 8))
    assert ta.root() != tb.root()
    assert diff(ta, tb) == {key}


def test_an_exchange_looks_only_at_the_differing_segments() -> None:
    base = {f"k{i}".encode(): b"v1" for i in range(5_000)}
    changed = dict(base)
    changed[b"k42"] = b"v2"
    a, b = HashTree.build(base.items()), HashTree.build(changed.items())
    buckets = differing_indexes(a.bucket_hashes(), b.bucket_hashes())
    segments = differing_indexes(a.segment_hashes(buckets), b.segment_hashes(buckets))
    assert buckets == [segment_of(b"k42") // a.fanout]
    assert segments == [segment_of(b"k42")]
    assert len(a.items_in(segments)) < 20  # ~5 keys per segment, not 5,000
    assert diff(a, b) == {b"k42"}


def test_segment_of_is_pinned() -> None:
    # Pinned values: a change of hash would make nodes of two versions disagree on every segment.
    assert [segment_of(k) for k in (b"", b"a", b"key-1")] == [246, 900, 585]
    assert segment_of(b"a", 1) == 0


def test_trees_of_different_shapes_refuse_to_compare() -> None:
    with pytest.raises(ValueError):
        diff(HashTree(16, 4), HashTree(16, 8))
    with pytest.raises(ValueError):
        HashTree(10, 4)


@settings(max_examples=50)
@given(st.lists(st.tuples(keys, st.integers(0, 10), st.text(max_size=3)), max_size=10), st.randoms(use_true_random=False))
def test_ops_version_depends_on_the_set_not_the_order(wires: list[tuple[bytes, int, str]], rnd) -> None:
    shuffled = wires[:]
    rnd.shuffle(shuffled)
    assert ops_version(wires) == ops_version(shuffled)
    if wires:
        assert ops_version(wires) != ops_version([*wires[1:], (b"other", -1, "x")])
