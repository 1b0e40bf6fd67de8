"""Tests of engines.kv.entries: operation bodies, validation, and the last-writer-wins merge.

The module is pure, so these tests need no files and no event loop.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engines.kv import entries
from engines.kv.entries import Entry
from legion.errors import BadRequest, LegionError, PayloadTooLarge
from legion.limits import KEY_BYTES_MAX, VALUE_BYTES_MAX
from legion.replication import Operation

content_types = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40)
versions = st.tuples(st.integers(min_value=0, max_value=2**62), st.sampled_from(["n1", "n2", "n10", "é"]))


@st.composite
def stored_entries(draw: st.DrawFn) -> Entry:
    hlc, origin = draw(versions)
    if draw(st.booleans()):
        return Entry(hlc, origin, True, None, None)
    return Entry(hlc, origin, False, draw(content_types), draw(st.binary(max_size=64)))


# --- operation bodies ------------------------------------------------------


@given(content_types, st.binary(max_size=256))
def test_put_body_round_trips(content_type: str, value: bytes) -> None:
    assert entries.decode_put(entries.encode_put(content_type, value)) == (content_type, value)


def test_put_body_defaults_the_content_type() -> None:
    for absent in (None, ""):
        assert entries.decode_put(entries.encode_put(absent, b"x")) == ("application/octet-stream", b"x")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        msgpack.packb(["text/plain"], use_bin_type=True),
        msgpack.packb(["text/plain", "a str, not bytes"], use_bin_type=True),
        msgpack.packb([7, b"v"], use_bin_type=True),
        msgpack.packb({"content_type": "text/plain", "value": b"v"}, use_bin_type=True),
        msgpack.packb(["text/plain", b"v"], use_bin_type=True) + b"\x00",  # trailing bytes
        msgpack.packb(["bad\ncontent type", b"v"], use_bin_type=True),
    ],
)
def test_malformed_put_bodies_are_bad_requests(body: bytes) -> None:
    with pytest.raises(BadRequest):
        entries.decode_put(body)


# --- validation --------------------------------------------------------------


def test_value_at_the_limit_is_accepted_and_one_byte_more_is_too_large() -> None:
    assert len(entries.check_value(bytes(VALUE_BYTES_MAX))) == VALUE_BYTES_MAX
    with pytest.raises(PayloadTooLarge, match=str(VALUE_BYTES_MAX)):
        entries.check_value(bytes(VALUE_BYTES_MAX + 1))
    with pytest.raises(PayloadTooLarge):
        entries.encode_put("text/plain", bytes(VALUE_BYTES_MAX + 1))


@pytest.mark.parametrize(
    "content_type",
    ["text/plain\r\nX-Injected: 1", "tëxt/plain", "text/\x00plain", "\t", "a" * (entries.CONTENT_TYPE_CHARS_MAX + 1)],
)
def test_bad_content_types_are_bad_requests(content_type: str) -> None:
    with pytest.raises(BadRequest, match="content type"):
        entries.check_content_type(content_type)


def test_content_types_with_parameters_are_kept_verbatim() -> None:
    assert entries.check_content_type("text/plain; charset=utf-8") == "text/plain; charset=utf-8"
    longest = "a" * entries.CONTENT_TYPE_CHARS_MAX
    assert entries.check_content_type(longest) == longest


@pytest.mark.parametrize("key", ["", "k" * (KEY_BYTES_MAX + 1), "é" * (KEY_BYTES_MAX // 2 + 1), "\udcff"])
def test_bad_keys_are_bad_requests(key: str) -> None:
    with pytest.raises(BadRequest):
        entries.parse_key(key)


def test_keys_are_their_utf8_bytes() -> None:
    assert entries.parse_key("a/b é") == "a/b é".encode()
    assert len(entries.parse_key("k" * KEY_BYTES_MAX)) == KEY_BYTES_MAX


# --- operations <-> entries -------------------------------------------------


@given(stored_entries(), st.binary(min_size=1, max_size=8), st.integers(min_value=0, max_value=63))
def test_operation_of_and_entry_of_are_inverses(entry: Entry, key: bytes, partition: int) -> None:
    op = entries.operation_of(partition, key, entry)
    assert (op.engine, op.partition, op.key, op.hlc, op.origin) == ("kv", partition, key, entry.hlc, entry.origin)
    assert op.kind == ("delete" if entry.deleted else "put")
    assert entries.entry_of(op) == entry
    assert entries.entry_of(Operation.from_wire(msgpack.unpackb(msgpack.packb(op.to_wire())))) == entry


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (Operation("kv", 0, b"k", 1, "n1", "delete", b"\x90"), "delete body must be empty"),
        (Operation("kv", 0, b"k", 1, "n1", "increment", b""), "no operation kind 'increment'"),
        (Operation("search", 0, b"k", 1, "n1", "delete", b""), "engine 'search'"),
        (Operation("kv", 0, b"k", 2**63, "n1", "delete", b""), "out of range"),
        (Operation("kv", 0, b"k", -1, "n1", "delete", b""), "out of range"),
        (Operation("kv", 0, b"k", 1, "n1", "put", b"not msgpack \xc1"), "not valid msgpack"),
    ],
)
def test_operations_the_engine_never_produces_are_bad_requests(op: Operation, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        entries.entry_of(op)


# --- newest -------------------------------------------------------------------


def test_newest_prefers_the_higher_timestamp_then_the_higher_origin() -> None:
    old = Entry(5, "n9", False, "text/plain", b"old")
    new = Entry(6, "n1", False, "text/plain", b"new")
    tie_low, tie_high = Entry(7, "n1", False, "a/b", b"low"), Entry(7, "n2", False, "a/b", b"high")
    assert entries.newest([old.to_wire(), new.to_wire()]) == new
    assert entries.newest([new.to_wire(), old.to_wire()]) == new
    assert entries.newest([tie_high.to_wire(), tie_low.to_wire(), None]) == tie_high
    assert entries.newest([tie_low.to_wire(), None, tie_high.to_wire()]) == tie_high


def test_a_newer_tombstone_beats_a_value_and_an_older_one_does_not() -> None:
    value = Entry(10, "n1", False, "text/plain", b"v")
    assert entries.newest([value.to_wire(), Entry(11, "n1", True, None, None).to_wire()]).deleted
    assert not entries.newest([value.to_wire(), Entry(9, "n3", True, None, None).to_wire()]).deleted


def test_newest_of_nothing_is_none() -> None:
    assert entries.newest([]) is None
    assert entries.newest([None, None]) is None


@given(st.lists(st.one_of(st.none(), stored_entries()), max_size=6), st.randoms(use_true_random=False))
def test_newest_is_the_maximum_version_in_any_order(replies: list[Entry | None], rng) -> None:
    present = [reply for reply in replies if reply is not None]
    expected_version = max((entry.version for entry in present), default=None)
    # Replies arrive as wire lists, through msgpack when they come from a peer.
    wire = [None if reply is None else msgpack.unpackb(msgpack.packb(reply.to_wire())) for reply in replies]
    rng.shuffle(wire)
    winner = entries.newest(wire)
    assert (winner.version if winner else None) == expected_version
    assert winner is None or winner in present


@pytest.mark.parametrize(
    "reply",
    [
        [1, "n1", False, "text/plain"],
        [1, "n1", True, "text/plain", b"tombstones have no value"],
        [1, "n1", False, None, None],
        ["1", "n1", False, "text/plain", b"v"],
        {"hlc": 1},
    ],
)
def test_a_malformed_replica_reply_is_an_internal_error_not_a_bad_request(reply: object) -> None:
    with pytest.raises(LegionError, match="malformed") as raised:
        entries.newest([reply])
    assert not isinstance(raised.value, BadRequest)


# --- bulk puts ----------------------------------------------------------------


def test_ndjson_items_are_parsed_with_their_line_numbers_and_blank_lines_skipped() -> None:
    body = b'{"key": "a", "value": "x"}\n\n{"key": "b", "value": "y", "content_type": "text/csv"}\n'
    first, second = entries.parse_bulk(body, "application/x-ndjson")
    assert (first.line, first.key, first.error) == (1, b"a", None)
    assert entries.decode_put(first.body) == (entries.TEXT_CONTENT_TYPE, b"x")
    assert (second.line, second.key) == (3, b"b")
    assert entries.decode_put(second.body) == ("text/csv", b"y")


@pytest.mark.parametrize(
    ("line", "error", "words"),
    [
        (b"{not json", BadRequest, "not valid JSON"),
        (b"[1, 2]", BadRequest, "must be an object"),
        (b'{"key": "", "value": "x"}', BadRequest, "empty"),
        (b'{"key": 7, "value": "x"}', BadRequest, "'key'"),
        (b'{"key": "k", "value": 7}', BadRequest, "'value' must be a string"),
        (b'{"key": "k"}', BadRequest, "'value'"),
        (b'{"key": "k", "value": "x", "colour": "red"}', BadRequest, "colour"),
        (b'{"key": "k", "value": "x", "content_type": "a\\u0000b"}', BadRequest, "printable"),
        (b'{"key": "k", "value": "\\ud800"}', BadRequest, "Unicode"),
        (b'{"key": "' + b"k" * (KEY_BYTES_MAX + 1) + b'", "value": "x"}', BadRequest, "1024"),
        (b'{"key": "k", "value": "' + b"v" * (VALUE_BYTES_MAX + 1) + b'"}', PayloadTooLarge, "limit"),
        (b"\xff\xfe", BadRequest, "not valid JSON"),
    ],
)
def test_a_bad_line_fails_alone_naming_its_line(line: bytes, error: type, words: str) -> None:
    body = b'{"key": "good", "value": "x"}\n' + line + b'\n{"key": "also good", "value": "y"}'
    good, bad, also_good = entries.parse_bulk(body, None)
    assert good.error is None and also_good.error is None and also_good.line == 3
    assert isinstance(bad.error, error) and bad.line == 2
    assert bad.error.message.startswith("line 2: ") and words in bad.error.message


def test_msgpack_items_may_carry_bytes_and_a_bad_element_fails_alone() -> None:
    body = msgpack.packb(
        [{"key": "bin", "value": b"\x00\x01"}, {"key": "text", "value": "hé"}, "nonsense"], use_bin_type=True
    )
    binary, text, bad = entries.parse_bulk(body, "application/msgpack; charset=binary")
    assert entries.decode_put(binary.body) == (entries.CONTENT_TYPE_DEFAULT, b"\x00\x01")
    assert entries.decode_put(text.body) == (entries.TEXT_CONTENT_TYPE, "hé".encode())
    assert bad.line == 3 and isinstance(bad.error, BadRequest)


@pytest.mark.parametrize("body", [b"\xc1", msgpack.packb({"key": "k"})])
def test_a_msgpack_body_that_is_not_a_list_is_refused_whole(body: bytes) -> None:
    with pytest.raises(BadRequest):
        entries.parse_bulk(body, "application/msgpack")


def test_bulk_results_pair_lines_with_outcomes_in_order() -> None:
    from legion.engine import WriteResult
    from legion.errors import Unavailable

    lines = entries.parse_bulk(b'{"key": "a", "value": "1"}\nbad\n{"key": "c", "value": "3"}', None)
    outcomes = [WriteResult(1, 10, 2, 3), Unavailable("only 1 of 2 required replicas acknowledged")]
    assert entries.bulk_results(lines, outcomes) == [
        {"line": 1, "partition": 1, "hlc": 10, "acks": 2},
        {"line": 2, "error": "bad_request", "message": lines[1].error.message},
        {"line": 3, "error": "unavailable", "message": "line 3: only 1 of 2 required replicas acknowledged"},
    ]


# --- key listings ------------------------------------------------------------------


@given(st.binary(max_size=6), st.lists(st.binary(max_size=8), max_size=30))
def test_key_range_selects_exactly_the_keys_with_the_prefix(prefix: bytes, keys: list[bytes]) -> None:
    low, high = entries.key_range(prefix)
    for key in keys + [prefix, prefix + b"\x00", prefix + b"\xff\xff"]:
        inside = low <= key and (high is None or key < high)
        assert inside == key.startswith(prefix)


def test_key_range_of_all_ff_bytes_has_no_upper_bound() -> None:
    assert entries.key_range(b"\xff\xff") == (b"\xff\xff", None)
    assert entries.key_range(b"a\xff") == (b"a\xff", b"b")


@given(st.lists(st.lists(st.binary(min_size=1, max_size=4), max_size=20), max_size=5), st.integers(1, 30))
def test_merged_listings_are_the_first_keys_of_the_union(lists: list[list[bytes]], limit: int) -> None:
    everything = sorted({key for keys in lists for key in keys})
    keys, truncated = entries.merge_key_lists([sorted(set(keys)) for keys in lists], limit)
    assert keys == everything[:limit]
    assert truncated == (len(everything) > limit)


def test_a_malformed_listing_from_a_replica_is_its_bug() -> None:
    with pytest.raises(LegionError):
        entries.merge_key_lists([["not bytes"]], 10)


@pytest.mark.parametrize(
    "query",
    [None, {"prefix": "text", "limit": 5}, {"prefix": b"", "limit": 0}, {"prefix": b"", "limit": True},
     {"prefix": b"", "after": 3, "limit": 5}, {"prefix": b"k" * (KEY_BYTES_MAX + 1), "limit": 5}],
)  # fmt: skip
def test_malformed_listing_queries_are_bad_requests(query: object) -> None:
    with pytest.raises(BadRequest):
        entries.check_list_query(query)


def test_listing_limits_and_prefixes_are_checked() -> None:
    assert entries.check_list_limit(None) == entries.LIST_LIMIT_DEFAULT
    for bad in (0, entries.LIST_LIMIT_MAX + 1):
        with pytest.raises(BadRequest):
            entries.check_list_limit(bad)
    with pytest.raises(BadRequest):
        entries.parse_prefix("k" * (KEY_BYTES_MAX + 1))
    assert entries.parse_prefix("é") == "é".encode()
