"""Idempotency keys: one origin per keyed write, the same on every attempt; bad keys are refused."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legion.engine import WriteItem, WriteResult
from legion.errors import BadRequest
from legion.idempotency import IDEMPOTENCY_CONTEXT, RequestKey, check_key, origin_for, origin_of
from legion.replication import Operation
from legion.runtime.batch_writer import BatchWriter
from tests.legion.runtime.test_batch_writer import FakeHost

keys = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)


@given(keys, st.binary(max_size=8), st.integers(0, 3))
def test_an_origin_is_a_function_of_key_engine_operation_key_and_occurrence(idempotency_key, key, occurrence):
    origin = origin_of(idempotency_key, "kv", key, occurrence)
    assert origin == origin_of(idempotency_key, "kv", key, occurrence)
    assert origin.startswith("key:") and len(origin) == 4 + 32
    assert origin != origin_of(idempotency_key + "x", "kv", key, occurrence)
    assert origin != origin_of(idempotency_key, "search", key, occurrence)
    assert origin != origin_of(idempotency_key, "kv", key + b"x", occurrence)
    assert origin != origin_of(idempotency_key, "kv", key, occurrence + 1)
    assert Operation("kv", 0, key, 1, origin, "put").id == Operation("kv", 0, key, 999, origin, "put").id


@pytest.mark.parametrize("bad", ["", "has space", "é", "x" * 256, "tab\there", 7])
def test_a_malformed_key_is_refused_saying_what_a_key_is(bad):
    with pytest.raises(BadRequest, match="printable ASCII"):
        check_key(bad)


def test_a_request_key_numbers_repeated_writes_to_one_key_and_nothing_is_keyed_outside_a_request():
    assert origin_for("kv", b"k") is None
    request = RequestKey("retry-me")
    token = IDEMPOTENCY_CONTEXT.set(request)
    try:
        first, second, other = origin_for("kv", b"k"), origin_for("kv", b"k"), origin_for("kv", b"j")
        assert origin_for("kv", b"k", "explicit") == origin_of("explicit", "kv", b"k")
    finally:
        IDEMPOTENCY_CONTEXT.reset(token)
    assert (first, second, other) == (origin_of("retry-me", "kv", b"k", 0), origin_of("retry-me", "kv", b"k", 1), origin_of("retry-me", "kv", b"j", 0))


def test_write_many_gives_keyed_items_their_origin_and_refuses_a_bad_key_alone():
    host = FakeHost()
    items = [WriteItem(b"a", "put", b"1", idempotency_key="one"), WriteItem(b"b", "put", b"2"), WriteItem(b"c", "put", b"3", idempotency_key="bad key")]
    results = asyncio.run(BatchWriter(host).write_many("kv", items))
    assert isinstance(results[0], WriteResult) and isinstance(results[1], WriteResult)
    assert isinstance(results[2], BadRequest)
    origins = {op.key: op.origin for op in host.received["n2"]}
    assert origins == {b"a": origin_of("one", "kv", b"a"), b"b": "n1"}
