"""Schemas and documents: what an index accepts, and the 4xx messages for what it refuses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.search.schema import check_document, check_index_name, parse_date, parse_schema
from legion.errors import BadRequest

SCHEMA = {
    "id_field": "id",
    "default_fields": ["title", "body"],
    "fields": {
        "id": {"type": "keyword", "stored": True},
        "title": {"type": "text", "stored": True, "tokenizer": "default"},
        "body": {"type": "text", "stored": True, "tokenizer": "en_stem"},
        "section": {"type": "keyword", "stored": True},
        "size": {"type": "i64", "stored": True, "fast": True},
        "published": {"type": "date", "fast": True},
        "meta": {"type": "json"},
    },
}


def test_the_issue_schema_parses_and_round_trips():
    schema = parse_schema(SCHEMA)
    assert schema.id_field == "id"
    assert schema.default_fields == ("title", "body")
    assert schema.field("body").tokenizer == "en_stem"
    assert schema.field("published").stored is True and schema.field("published").fast is True
    assert parse_schema(schema.to_json()) == schema


def test_default_fields_default_to_the_text_fields():
    schema = parse_schema({"fields": {"id": {"type": "keyword"}, "a": {"type": "text"}, "b": {"type": "text"}}})
    assert schema.default_fields == ("a", "b")


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ([], "JSON object"),
        ({"fields": {}}, "non-empty"),
        ({"fields": {"id": {"type": "keyword"}}, "extra": 1}, "unknown schema keys"),
        ({"fields": {"id": {"type": "string"}}}, "type must be one of"),
        ({"fields": {"id": {"type": "keyword"}, "t": {"type": "text", "tokenizer": "klingon"}}}, "tokenizer must be one of"),
        ({"fields": {"id": {"type": "keyword"}, "n": {"type": "i64", "tokenizer": "default"}}}, "only text and json"),
        ({"fields": {"id": {"type": "keyword"}, "_x": {"type": "text"}}}, "reserved"),
        ({"fields": {"id": {"type": "keyword"}, "a.b": {"type": "text"}}}, "field name"),
        ({"fields": {"id": {"type": "keyword"}, "t": {"type": "text", "stored": "yes"}}}, "'stored' must be true or false"),
        ({"fields": {"id": {"type": "keyword"}, "t": {"type": "text", "boost": 2}}}, "unknown options"),
        ({"id_field": "uid", "fields": {"id": {"type": "keyword"}, "t": {"type": "text"}}}, "id_field 'uid'"),
        ({"fields": {"id": {"type": "i64"}, "t": {"type": "text"}}}, "keyword"),
        ({"fields": {"id": {"type": "keyword"}, "n": {"type": "i64"}}, "default_fields": ["n"]}, "text or keyword"),
        ({"fields": {"id": {"type": "keyword"}, "n": {"type": "i64"}}}, "no text field"),
    ],
)
def test_a_bad_schema_is_refused_with_what_to_fix(schema, message):
    with pytest.raises(BadRequest, match=message):
        parse_schema(schema)


def test_a_good_document_is_checked_and_nulls_dropped():
    schema = parse_schema(SCHEMA)
    doc_id, checked = check_document(
        schema, {"id": "a", "title": "T", "body": ["x", "y"], "size": 3, "published": "2024-05-01T12:00:00Z", "section": None, "meta": {"k": 1}}
    )
    assert doc_id == "a"
    assert checked == {"id": "a", "title": "T", "body": ["x", "y"], "size": 3, "published": "2024-05-01T12:00:00Z", "meta": {"k": 1}}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("text", "JSON object"),
        ({"title": "no id"}, "no id"),
        ({"id": 7}, "non-empty string"),
        ({"id": ""}, "non-empty string"),
        ({"id": "a", "colour": "red"}, "unknown field 'colour'"),
        ({"id": "a", "size": "big"}, "'size' \\(i64\\) must be a signed 64-bit integer"),
        ({"id": "a", "size": True}, "'size'"),
        ({"id": "a", "size": 1 << 70}, "'size'"),
        ({"id": "a", "published": "yesterday"}, "RFC 3339"),
        ({"id": "a", "title": 5}, "'title' \\(text\\) must be a string"),
        ({"id": "a", "meta": [1]}, "JSON object"),
        ({"id": "a", "_id": "x"}, "reserved"),
        ({"id": "x" * 2000}, "over 1024 bytes"),
        ({"id": "\u00e9" * 513}, "over 1024 bytes"),
        ({"id": "a", "body": ["fine", 7, "also fine"]}, "'body' \\(text\\) must be a string, got 7"),
        ({"id": "a", "colour": None}, "unknown field 'colour'"),
    ],
)
def test_a_bad_document_is_refused_naming_the_field(doc, message):
    with pytest.raises(BadRequest, match=message):
        check_document(parse_schema(SCHEMA), doc)


@pytest.mark.parametrize("name", ["docs", "a", "my-index_2", "0"])
def test_good_index_names(name):
    assert check_index_name(name) == name


@pytest.mark.parametrize("name", ["", "Docs", "../etc", "a/b", "a b", "-x", "x" * 65, None, 3, "é"])
def test_index_names_that_could_be_paths_or_urls_are_refused(name):
    with pytest.raises(BadRequest, match="index name"):
        check_index_name(name)


def test_dates_are_utc():
    assert parse_date("2024-05-01T12:00:00+02:00").isoformat() == "2024-05-01T10:00:00+00:00"
    assert parse_date("2024-05-01").isoformat() == "2024-05-01T00:00:00+00:00"
    assert parse_date("not a date") is None


values = st.one_of(
    st.none(), st.booleans(), st.text(max_size=3), st.integers(), st.floats(),
    st.lists(st.one_of(st.text(max_size=3), st.integers(min_value=-(2**70), max_value=2**70)), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)  # fmt: skip
KINDS_SCHEMA = parse_schema(
    {"fields": {"id": {"type": "keyword"}, "t": {"type": "text"}, "i": {"type": "i64"}, "u": {"type": "u64"}, "f": {"type": "f64"}, "j": {"type": "json"}}}
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["t", "i", "u", "f", "j", "x"]), values, max_size=4))
def test_a_document_is_accepted_exactly_when_every_field_s_checker_accepts_its_value(fields):
    doc = {"id": "a", **fields}
    expected = all(
        name in KINDS_SCHEMA.checks and (value is None or KINDS_SCHEMA.checks[name](value)) for name, value in doc.items()
    )
    try:
        check_document(KINDS_SCHEMA, doc)
    except BadRequest:
        assert not expected
    else:
        assert expected
