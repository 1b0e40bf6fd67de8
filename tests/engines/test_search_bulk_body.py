"""A bulk line's index operation: the line's own text is the source when that is safe, else it is encoded again."""

from __future__ import annotations

import json

import pytest

from engines.search import corpus
from engines.search import operations as ops
from engines.search.document_builder import LengthCounter
from engines.search.handlers import document_body
from engines.search.schema import check_document, parse_schema
from legion.errors import BadRequest
from legion.replication import Operation

SCHEMA = parse_schema(corpus.SCHEMA)
INC = "0000000000000abc"


def _decoded(body: bytes) -> ops.Decoded:
    return ops.decode(Operation(ops.ENGINE_NAME, 0, b"a", 1, "n1", ops.KIND_INDEX, body))


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        (b'{"id": "a", "title": "caf\xc3\xa9 au lait"}  \r', True),  # trailing whitespace is stripped
        (b'{"id": "a", "title": null}', False),  # a null is dropped: the checked document differs
        (b'{"id": "a", "title": "\\u00e9"}', False),  # an escape could name a lone surrogate
        (b'{"id": "a", "title": "\xed\x95\x9c"}', False),  # 0xED also leads surrogates in UTF-8
    ],
)
def test_the_line_is_the_source_when_nothing_in_it_needs_checking(line, kept):
    value = json.loads(line)
    _doc_id, checked = check_document(SCHEMA, value)
    sent = line if checked is value else None
    body = _decoded(document_body("docs", INC, checked, LengthCounter(SCHEMA), sent))
    assert json.loads(body.source) == checked
    assert (body.source == line.strip()) is kept
    assert body.lengths == LengthCounter(SCHEMA)(checked)


@pytest.mark.parametrize("line", [b'{"id": "a", "title": "\\ud800"}', b'{"id": "a", "module": "\\udfff"}'])
def test_a_lone_surrogate_is_refused_in_any_field(line):
    value = json.loads(line)
    _doc_id, checked = check_document(SCHEMA, value)
    with pytest.raises(BadRequest, match="Unicode"):
        document_body("docs", INC, checked, LengthCounter(SCHEMA), line)
