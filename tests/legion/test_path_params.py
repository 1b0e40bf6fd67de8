"""Path parameters decode exactly: one URL names one value, one value has one URL, the rest is a 400."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from legion.errors import BadRequest
from legion.path_params import compile_route, decode_segment

# Text a name may hold: any Unicode scalar value but NUL (surrogates are not scalar values).
NAMES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1)


@given(NAMES)
def test_the_canonical_url_of_a_name_decodes_back_to_it(name):
    assert decode_segment(quote(name, safe="")) == name


@given(NAMES, NAMES)
def test_two_different_names_never_share_a_url(a, b):
    if a != b:
        assert quote(a, safe="") != quote(b, safe="")
        assert decode_segment(quote(a, safe="")) != decode_segment(quote(b, safe=""))


def test_an_escaped_percent_is_a_percent_and_a_raw_invalid_escape_is_refused():
    assert decode_segment("%25ff%25fe") == "%ff%fe"
    with pytest.raises(BadRequest, match="UTF-8"):
        decode_segment("%ff%fe")


@pytest.mark.parametrize("raw", ["%zz", "a%2", "%", "50%", "%g0"])
def test_a_percent_without_two_hex_digits_is_refused(raw):
    with pytest.raises(BadRequest, match="invalid escape"):
        decode_segment(raw)


@pytest.mark.parametrize("raw", ["%ed%a0%80", "%c0%af", "%80"])
def test_bytes_that_are_not_utf8_are_refused_surrogates_included(raw):
    with pytest.raises(BadRequest, match="UTF-8"):
        decode_segment(raw)


def test_nul_is_refused():
    with pytest.raises(BadRequest, match="NUL"):
        decode_segment("a%00b")


def test_unescaped_characters_stand_for_themselves():
    assert decode_segment("a+b~é") == "a+b~é"
    assert decode_segment("%7e%41%2F") == "~A/"


def test_a_route_matches_whole_segments_and_decodes_each_parameter():
    route = compile_route("/v1/search/{index}/docs/{id}")
    assert route.match("/v1/search/books/docs/a%2Fb") == {"index": "books", "id": "a/b"}
    assert route.match("/v1/search/books/docs") is None
    assert route.match("/v1/search/books/docs/a/b") is None
    with pytest.raises(BadRequest, match="id"):
        route.match("/v1/search/books/docs/%ff")


def test_a_parameter_inside_a_segment_is_a_programming_error():
    with pytest.raises(ValueError, match="whole path segment"):
        compile_route("/v1/x/pre{key}")
    with pytest.raises(ValueError, match="twice"):
        compile_route("/v1/x/{a}/{a}")
