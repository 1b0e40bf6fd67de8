"""engines.mapreduce.rows: dataset types, the stable hash, cutting tables, payloads (pure)."""

from __future__ import annotations

import datetime
import decimal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.mapreduce import rows
from legion.errors import BadRequest


def test_string_view_and_dictionaries_become_plain_types_and_decimals_dates_stay():
    table = pa.table(
        {
            "s": pa.array(["a", None, "ccc"], pa.string_view()),
            "b": pa.array([b"x", b"", None], pa.binary_view()),
            "d": pa.array(["u", "v", "u"]).dictionary_encode(),
            "price": pa.array([decimal.Decimal("1.10"), None, decimal.Decimal("-3.05")], pa.decimal128(15, 2)),
            "day": pa.array([datetime.date(1998, 9, 2)] * 3, pa.date32()),
            "at": pa.array([1, 2, 3], pa.timestamp("us", tz="UTC")),
        }
    )
    out = rows.normalize(table)
    assert out.schema.types == [pa.string(), pa.binary(), pa.string(), pa.decimal128(15, 2), pa.date32(), pa.timestamp("us", tz="UTC")]
    assert out.column("s").to_pylist() == ["a", None, "ccc"]
    assert out.column("price").to_pylist()[2] == decimal.Decimal("-3.05")
    assert all(field.nullable for field in out.schema)


def test_rows_that_do_not_fit_a_schema_are_refused_naming_the_columns():
    schema = rows.normalize_schema(pa.schema([("a", pa.int64())]))
    with pytest.raises(BadRequest, match="columns"):
        rows.normalize(pa.table({"b": [1]}), schema)
    with pytest.raises(BadRequest, match="schema"):
        rows.normalize(pa.table({"a": ["not a number"]}), schema)
    with pytest.raises(BadRequest, match="unique"):
        rows.normalize_schema(pa.schema([("a", pa.int64()), ("a", pa.int64())]))


def test_key_columns_must_be_hashable_non_float_columns():
    schema = pa.schema([("id", pa.string()), ("x", pa.float64()), ("l", pa.list_(pa.int64()))])
    rows.check_key_column(schema, "id")
    for bad in ("x", "l", "nope"):
        with pytest.raises(BadRequest):
            rows.check_key_column(schema, bad)


def test_the_hash_is_pinned_so_rows_never_change_partition_across_versions():
    # If these change, every stored dataset's placement changes: never edit them casually.
    got = rows.stable_hash([pa.array(["a", "", None, "hello"])]).tolist()
    again = rows.stable_hash([pa.array([1, 2], pa.int64())]).tolist()
    assert got == rows.stable_hash([pa.array(["a", "", None, "hello"], pa.large_string())]).tolist()
    assert again == rows.stable_hash([pa.array([1, 2], pa.int32())]).tolist()
    assert got == [9266097309480679803, 17665956581633026203, 7640891576956012809, 3653398781487292943]
    assert again == [6238072747940578789, 15839785061582574730]


def test_the_hash_is_the_same_in_another_process():
    code = "from engines.mapreduce import rows; import pyarrow as pa; print(rows.stable_hash([pa.array(['k1', 'k2'])]).tolist())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == str(rows.stable_hash([pa.array(["k1", "k2"])]).tolist())


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.text(max_size=12)), min_size=1, max_size=40), cut=st.integers(0, 40))
def test_equal_strings_hash_equal_whatever_the_chunking_and_offset(values, cut):
    cut = min(cut, len(values))
    whole = rows.stable_hash([pa.array(values, pa.string())])
    chunked = rows.stable_hash([pa.chunked_array([pa.array(values[:cut], pa.string()), pa.array(values[cut:], pa.string())])])
    sliced = rows.stable_hash([pa.array(["pad"] + values, pa.string()).slice(1)])
    assert whole.tolist() == chunked.tolist() == sliced.tolist()
    by_value = {}
    for value, hashed in zip(values, whole.tolist()):
        assert by_value.setdefault(value, hashed) == hashed


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.decimals(min_value=-10**9, max_value=10**9, places=2, allow_nan=False), min_size=1, max_size=30))
def test_decimals_hash_by_value(values):
    array = pa.array(values, pa.decimal128(15, 2))
    hashed = rows.stable_hash([array]).tolist()
    again = rows.stable_hash([pa.array(["pad"] * 0 + values, pa.decimal128(15, 2))]).tolist()
    assert hashed == again
    assert len({h for h in hashed}) == len(set(values))


@settings(max_examples=60, deadline=None)
@given(assignment=st.lists(st.integers(0, 7), max_size=60))
def test_split_by_puts_every_row_in_its_target_once_in_order(assignment):
    table = pa.table({"i": list(range(len(assignment)))})
    pieces = rows.split_by(table, np.array(assignment, dtype=np.int64), 8)
    assert len(pieces) == 8
    for target, piece in enumerate(pieces):
        expected = [i for i, a in enumerate(assignment) if a == target]
        assert (piece.column("i").to_pylist() if piece is not None else []) == expected


def test_slices_cover_the_table_without_overlap():
    table = pa.table({"i": list(range(10))})
    assert [s.column("i").to_pylist() for s in rows.slices(table, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_payloads_round_trip_exactly_and_garbage_is_refused():
    table = rows.normalize(pa.table({"p": pa.array([decimal.Decimal("12345678901234.99")], pa.decimal128(16, 2)), "s": ["x"]}))
    assert rows.decode_payload(rows.encode_payload(table)).equals(table)
    with pytest.raises(BadRequest):
        rows.decode_payload(b"not arrow")
    assert rows.schema_of(rows.schema_bytes(table.schema)).equals(table.schema)
