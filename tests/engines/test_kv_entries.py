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
