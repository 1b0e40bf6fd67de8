"""Tests of engines.search.rust_debug: reading Rust Debug text and writing it back as tantivy prints it.

The inputs are real tantivy output: the ``repr`` of queries parsed or built
over a schema with every field type (``search_queries``). Writing a value
back must give tantivy's text byte for byte; reading a term must give back
exactly the value that went into tantivy.
"""

from __future__ import annotations

import datetime
import math

import pytest
import tantivy
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from engines.search import rust_debug as rd
from engines.search.ranking import as_f32
from tests.engines.search_queries import DEFAULT_FIELDS, keyword_chars, queries, typed_index

INDEX = typed_index()
SCHEMA = INDEX.schema


def inner(query: tantivy.Query) -> str:
    """The Debug text of a query without tantivy-py's ``Query(...)`` wrapper."""
    text = repr(query)
    assert text.startswith("Query(") and text.endswith(")")
    return text[len("Query(") : -1]


def term_of(query: tantivy.Query) -> rd.Term:
    value = rd.parse_debug(inner(query))
    assert isinstance(value, rd.Call) and value.name == "TermQuery"
    term = value.args[0]
    assert isinstance(term, rd.Term)
    return term


@settings(deadline=None)  # tantivy parses or builds a query per example: slow under load
@given(queries())
def test_parser_output_reads_and_writes_back_byte_for_byte(text: str) -> None:
    try:
        debug = repr(INDEX.parse_query(text, DEFAULT_FIELDS))
    except ValueError:
        reject()  # a few generated queries only exclude, or mix a range and a boost
    assert rd.render_debug(rd.parse_debug(debug)) == debug


@settings(deadline=None)  # tantivy parses or builds a query per example: slow under load
@given(st.text(keyword_chars, max_size=20))
def test_a_string_term_reads_back_as_the_string_tantivy_was_given(value: str) -> None:
    term = term_of(tantivy.Query.term_query(SCHEMA, "tag", value))
    assert (term.field_id, term.value_type, term.value, term.json_path) == (5, "Str", value, None)


@settings(deadline=None)  # tantivy parses or builds a query per example: slow under load
@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=20))
def test_any_string_reads_back_whatever_the_unicode_version_of_its_characters(value: str) -> None:
    assert term_of(tantivy.Query.term_query(SCHEMA, "tag", value)).value == value


@pytest.mark.parametrize(
    ("field", "value", "value_type"),
    [
        ("lines", -(2**63), "I64"),
        ("lines", 2**63 - 1, "I64"),
        ("size", 2**64 - 1, "U64"),
        ("size", 0, "U64"),
        ("flag", True, "Bool"),
        ("flag", False, "Bool"),
    ],
)
def test_integer_and_bool_terms_read_back(field: str, value: int | bool, value_type: str) -> None:
    term = term_of(tantivy.Query.term_query(SCHEMA, field, value))
    assert (term.value_type, term.value) == (value_type, value)
    assert type(term.value) is type(value)


@settings(deadline=None)  # tantivy parses or builds a query per example: slow under load
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_float_terms_read_back_and_write_back(value: float) -> None:
    query = tantivy.Query.term_query(SCHEMA, "ratio", value)
    term = term_of(query)
    assert term.value_type == "F64"
    assert isinstance(term.value, float)
    assert term.value == value or (math.isnan(value) and math.isnan(term.value))
    assert rd.render_debug(rd.parse_debug(inner(query))) == inner(query)


@settings(deadline=None)  # tantivy parses or builds a query per example: slow under load
@given(st.floats(width=32, allow_nan=False, allow_infinity=False).filter(lambda b: b != 0))
def test_boosts_are_written_as_rust_displays_an_f32(boost: float) -> None:
    query = tantivy.Query.boost_query(tantivy.Query.term_query(SCHEMA, "title", "a"), boost)
    value = rd.parse_debug(inner(query))
    assert isinstance(value, rd.Call) and value.name == "Boost"
    assert as_f32(dict(value.kwargs)["boost"]) == boost
    assert rd.render_debug(value) == inner(query)


@settings(deadline=None)  # tantivy parses or builds a query per example: slow under load
@given(
    st.datetimes(
        min_value=tantivy.MIN_DATETIME.replace(tzinfo=None) + datetime.timedelta(seconds=1),
        max_value=tantivy.MAX_DATETIME.replace(tzinfo=None) - datetime.timedelta(seconds=1),
    )
)
def test_date_terms_read_back_as_their_rfc3339_text(moment: datetime.datetime) -> None:
    moment = moment.replace(tzinfo=datetime.timezone.utc)
    query = tantivy.Query.term_query(SCHEMA, "when", moment)
    term = term_of(query)
    assert term.value_type == "Date"
    assert isinstance(term.value, str)
    assert datetime.datetime.fromisoformat(term.value) == moment
    assert rd.render_debug(rd.parse_debug(inner(query))) == inner(query)


@pytest.mark.parametrize(
    ("path", "value", "value_type"),
    [("attrs.a", "foo", "Str"), ("attrs.a.b", 5, "I64"), ("attrs.deep.er", 1.5, "F64"), ("attrs.n", True, "Bool")],
)
def test_json_terms_carry_their_path_and_inner_type(path: str, value: object, value_type: str) -> None:
    term = term_of(tantivy.Query.term_query(SCHEMA, path, value))
    expected = (11, path[len("attrs.") :], value_type, value)
    assert (term.field_id, term.json_path, term.value_type, term.value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r'"a\"b"', 'a"b'),
        (r'"back\\slash"', "back\\slash"),
        (r'"line\nbreak\ttab\rcr\0nul"', "line\nbreak\ttab\rcr\0nul"),
        (r'"\u{1f600} and \u{200b}"', "\U0001f600 and \u200b"),
        (r'"\'quoted\'"', "'quoted'"),
        ('"😀 é"', "😀 é"),
    ],
)
def test_string_escapes(text: str, expected: str) -> None:
    assert rd.parse_debug(text) == expected


def test_generic_shapes_read_into_their_values() -> None:
    value = rd.parse_debug('Outer { list: [1, -2, 3.5, 1e300, inf, -inf], map: {Field(1): (0, "x")}, unit: Unbounded, '
                           "one: (7,), empty: (), flag: false, call: Boost(query=AllQuery, boost=2) }")
    assert value == rd.Struct(
        "Outer",
        (
            ("list", [1, -2, 3.5, 1e300, math.inf, -math.inf]),
            ("map", rd.Map(((rd.Call("Field", (1,)), (0, "x")),))),
            ("unit", rd.Ident("Unbounded")),
            ("one", (7,)),
            ("empty", ()),
            ("flag", False),
            ("call", rd.Call("Boost", (), (("query", rd.Ident("AllQuery")), ("boost", 2)))),
        ),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "a value at offset 0"),
        ("Query(", "a value at offset 6"),
        ('Term(field=1, type=Str, "a)', "a closing '\"'"),
        ("Foo { a: }", "a value at offset 9"),
        ("[1, 2", "',' at offset 5"),
        ("Term(field=1, type=Nope, 1)", "a term type"),
        ("Term(field=1, type=U64, -1)", "a U64 in range"),
        ("Term(field=1, type=Json, a)", "'path='"),
        ('"\\q"', "an escape"),
        ('"\\u{110000}"', "an escape"),
        ("AllQuery trailing", "the end of the text"),
        ("(1)", "a comma in a one-element tuple"),
        ("Boost(boost=2, AllQuery)", "key=value after a key=value argument"),
        ("@", "a value at offset 0"),
        ("(" * 300, f"at most {rd.NESTING_MAX} nested levels"),
    ],
)
def test_garbage_is_a_syntax_error_that_says_what_was_expected_where(text: str, expected: str) -> None:
    with pytest.raises(rd.DebugSyntaxError, match="expected") as raised:
        rd.parse_debug(text)
    assert expected in str(raised.value)


@settings(deadline=None)  # tantivy parses or builds a query per example: slow under load
@given(st.text(alphabet=st.sampled_from('()[]{},:="\\ -1.5eAZaz_Term=fieldtype'), max_size=60))
def test_any_text_either_reads_or_raises_a_syntax_error(text: str) -> None:
    try:
        value = rd.parse_debug(text)
    except rd.DebugSyntaxError:
        return
    assert rd.parse_debug(rd.render_debug(value)) == value or _has_nan(value)


def _has_nan(value: object) -> bool:
    return "nan" in repr(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [(2.0, "2.0"), (1e300, "1e300"), (1.5e-5, "1.5e-5"), (-0.0, "-0.0"), (1e15, "1000000000000000.0"),
     (1e16, "1e16"), (0.0001, "0.0001"), (math.nan, "NaN"), (-math.inf, "-inf")],
)
def test_f64_debug_text_is_rusts(value: float, text: str) -> None:
    assert rd.f64_debug_text(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(2.0, "2"), (0.5, "0.5"), (1e-7, "0.0000001"), (1e20, "100000000000000000000"), (0.1, "0.1"), (-3.0, "-3")],
)
def test_f32_display_text_is_rusts(value: float, text: str) -> None:
    assert rd.f32_display_text(value) == text


def test_of_two_shortest_digit_strings_equally_near_rust_writes_the_one_away_from_zero() -> None:
    assert repr(562949953421312.25) == "562949953421312.2"  # Python rounds the tie to even
    assert rd.f64_debug_text(562949953421312.25) == "562949953421312.3"
    assert rd.f64_debug_text(-562949953421312.25) == "-562949953421312.3"
    query = tantivy.Query.term_query(SCHEMA, "ratio", 562949953421312.25)
    assert rd.render_debug(rd.parse_debug(inner(query))) == inner(query)
