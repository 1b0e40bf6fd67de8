"""What a node indexes for one document: the engine's own fields, the length fields, and the user's.

No I/O; imports tantivy for its analysers and ``Document``. ``shard`` owns
the index and re-exports the field names defined here.

Every document carries the engine's own fields next to the user's:

- the id field   the schema's own ``id_field`` (a keyword, so indexed raw),
                 stored by tantivy: updates and deletes find a document by its
                 term, and hits read the id from the document store. A
                 tombstone carries it too;
- ``_partition`` u64, indexed and fast: queries filter on the partitions a
                 coverage plan assigned, a handoff folds one partition out,
                 dropping a partition deletes by it;
- ``_deleted``   u64 1 for a *tombstone* (a deleted id keeps a document that
                 has only the engine's fields, so an older write arriving late
                 still loses to the delete), 0 otherwise; queries exclude 1;
- ``_hlc``, ``_origin``, ``_pos`` the version of the write that produced the
                 document (``operations`` explains versions; ``_pos`` only when not 0);
- ``_source``    the document as it was indexed (JSON bytes), for handoff, for
                 returning the document and for its snippets: the only stored
                 copy of the user's fields but the id (``shard.tantivy_schema``);
- ``_len_<f>``   u64 fast: how many tokens tantivy indexed for field ``f`` in this
                 document. Round 1 of a search sums them, so BM25's average field
                 length can be the whole plan's rather than this node's
                 (``query_compile``). Only for the fields whose token total
                 nothing else gives (``length_fields``): a field that makes one
                 token per value and has a fast column is counted by that
                 column (``counted_fields``), and the id field has one token in
                 every document. Each ``_len_`` field costs tantivy about half a
                 microsecond per document at ingest, on every replica.

Two ways to build one, with the same result:

- ``DocumentBuilder.json_text``: the source's JSON text with the engine's
  fields appended, for ``IndexWriter.add_json`` — tantivy parses it in
  Rust, so the node never parses the source in Python. Used when the
  operation carries its lengths (``LengthCounter``, counted once by the
  coordinator) and every field of the schema is text, keyword, i64, u64, f64
  or bool, whose JSON values tantivy reads exactly as the per-field path adds
  them (dates and json objects always take the per-field path). The id is
  the source's own id field, which the coordinator checked is the document's id;
- ``DocumentBuilder.document``: a ``tantivy.Document`` built field by field
  from the parsed source, counting the lengths itself; for everything else,
  and whenever tantivy refuses the JSON text (a value it reads differently,
  such as a lone surrogate or ``-0`` for a u64): a bad value is logged and
  skipped, and the rest of the document is indexed.
"""

from __future__ import annotations

import binascii
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import tantivy

from engines.search.query_compile import DEFAULT_TOKEN_CHARS_MAX, default_text_analyzer, field_length
from engines.search.schema import FieldSpec, IndexSchema, parse_date
log = logging.getLogger(__name__)

PARTITION, DELETED, HLC, ORIGIN, POSITION, SOURCE = "_partition", "_deleted", "_hlc", "_origin", "_pos", "_source"
LENGTH_PREFIX = "_len_"
INTERNAL_FIELDS = (PARTITION, DELETED, HLC, ORIGIN, POSITION, SOURCE)
# The engine's id field before the schema's own id field took its place: only an index of that
# layout has it (``shard`` rebuilds such an index), and no schema may name a field so.
LEGACY_ID = "_id"
# Field types whose JSON values tantivy's add_json reads exactly as the per-field path adds them.
JSON_TEXT_TYPES = frozenset({"text", "keyword", "i64", "u64", "f64", "bool"})


class Version(NamedTuple):
    """One write of one id as a shard holds it: its version, partition, and source (None: a tombstone)."""

    hlc: int
    origin: str
    position: int
    partition: int
    source: bytes | None

    @property
    def order(self) -> tuple[int, str, int]:
        """The last-writer-wins order (``operations`` explains it)."""
        return (self.hlc, self.origin, self.position)


def length_fields(schema: IndexSchema) -> dict[str, str]:
    """Each field a query can score (indexed, not json) whose token total only a ``_len_`` field gives → that field."""
    counted = counted_fields(schema)
    return {
        f.name: LENGTH_PREFIX + f.name
        for f in schema.fields
        if f.indexed and f.type != "json" and f.name != schema.id_field and f.name not in counted
    }


def counted_fields(schema: IndexSchema) -> frozenset[str]:
    """The fields a query can score whose token total is the value count of their own fast column.

    A field that makes one token per value (a keyword, a number, a bool, a date,
    text with the ``raw`` tokenizer) has as many tokens in a document as values;
    when it is fast, its column holds each of them, and tantivy's ``value_count``
    aggregation counts them over any set of documents."""
    return frozenset(
        f.name
        for f in schema.fields
        if f.indexed and f.fast and f.type != "json" and f.name != schema.id_field and one_token_per_value(f)
    )


def one_token_per_value(spec: FieldSpec) -> bool:
    """Whether tantivy indexes each value of the field as one token (every type but tokenized text)."""
    return spec.type != "text" or spec.tokenizer == "raw"


def analyzer(spec: FieldSpec) -> tantivy.TextAnalyzer | None:
    """An analyzer that splits a field's text into as many tokens as tantivy's tokenizer does (None: one per value)."""
    if one_token_per_value(spec):
        return None
    if spec.tokenizer == "whitespace":
        return tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.whitespace()).build()
    return default_text_analyzer()  # "default", and "en_stem" (stemming keeps the token count)


# ASCII letters and digits as "a", every other byte a space: where tantivy's simple tokenizer splits ASCII text.
_ASCII_MARKS = bytes(0x61 if c < 128 and chr(c).isalnum() else 0x20 for c in range(256))
_LONG_TOKEN = b"a" * DEFAULT_TOKEN_CHARS_MAX


def default_token_count(text: str) -> int:
    """The tokens tantivy's ``default`` (and ``en_stem``) tokenizer makes of ASCII ``text``.

    Runs of ASCII letters and digits, less those of ``DEFAULT_TOKEN_CHARS_MAX``
    bytes or more (the remove-long filter): counted in C as the starts of runs
    (a space then an "a" once marked), where the analyzer, or a split, would
    hand every token back as a Python object."""
    marked = text.encode("ascii").translate(_ASCII_MARKS)
    if _LONG_TOKEN in marked:
        return sum(1 for word in marked.split() if len(word) < DEFAULT_TOKEN_CHARS_MAX)
    return marked.count(b" a") + (marked[:1] == b"a")


class LengthCounter:
    """Counts the tokens tantivy indexes for each scored field of one document (what ``_len_<f>`` holds)."""

    def __init__(self, schema: IndexSchema) -> None:
        specs = {spec.name: spec for spec in schema.fields}
        self._fields = [(name, analyzer(specs[name]), _counts_ascii(specs[name])) for name in length_fields(schema)]

    def __call__(self, fields: Mapping[str, Any]) -> list[int]:
        """One count per ``length_fields(schema)``, in that order; 0 for an absent field."""
        out: list[int] = []
        append, get = out.append, fields.get  # once per document, for every field
        for name, field_analyzer, ascii_counted in self._fields:
            value = get(name)
            if value is None:
                append(0)
            elif field_analyzer is None:
                append(len(value) if type(value) is list else 1)
            elif type(value) is str:
                if ascii_counted and value.isascii():
                    append(default_token_count(value))
                else:
                    append(len(field_analyzer.analyze(value)))
            else:
                append(field_length(value, field_analyzer))
        return out


def _counts_ascii(spec: FieldSpec) -> bool:
    """True if ``default_token_count`` counts this field's ASCII text as its analyzer would."""
    return spec.type == "text" and spec.tokenizer in ("default", "en_stem")


class DocumentBuilder:
    """Builds the documents of one index: JSON text for ``add_json``, or a ``tantivy.Document``."""

    def __init__(self, index_name: str, schema: IndexSchema, tantivy_schema: tantivy.Schema) -> None:
        self.index_name = index_name
        self.tantivy_schema = tantivy_schema
        self._specs = {spec.name: spec for spec in schema.fields}
        self._id_field = schema.id_field
        self._count_lengths = LengthCounter(schema)
        self._length_names = list(length_fields(schema).values())
        # The source's bytes without its closing brace, then the engine's fields and the lengths
        # (in LengthCounter order): one %-format in C per document, decoded once; _pos only when not 0.
        lengths = "".join(f',"{name}":%d' for name in self._length_names)
        head = f'%b,"{PARTITION}":%d,"{DELETED}":0,"{HLC}":%d,"{ORIGIN}":%b'
        tail = f',"{SOURCE}":"%b"{lengths}}}'
        self._json_formats = ((head + tail).encode(), (head + f',"{POSITION}":%d' + tail).encode())
        self.json_text_ok = all(spec.type in JSON_TEXT_TYPES for spec in schema.fields)
        self._origins: dict[str, bytes] = {}

    def json_text(self, doc_id: str, version: Version, lengths: Sequence[int] | None) -> str | None:
        """The document as JSON text for ``add_json``; None when it must take the per-field path."""
        if not self.json_text_ok or lengths is None or len(lengths) != len(self._length_names):
            return None
        hlc, origin, position, partition, source = version
        if source is None or len(source) < 3 or source[:1] != b"{" or source[-1:] != b"}":
            return None  # a tombstone, or not a non-empty JSON object as the coordinator encodes them
        quoted_origin = self._origins.get(origin)
        if quoted_origin is None:
            quoted_origin = self._origins[origin] = json.dumps(origin).encode()
        encoded = binascii.b2a_base64(source, newline=False)  # tantivy reads bytes as base64
        try:
            # %d takes integers only, so a count that is no count cannot inject JSON; one that is
            # negative or too large makes tantivy refuse the text, and the per-field path counts.
            if position:
                text = self._json_formats[1] % (source[:-1], partition, hlc, quoted_origin, position, encoded, *lengths)
            else:
                text = self._json_formats[0] % (source[:-1], partition, hlc, quoted_origin, encoded, *lengths)
            return text.decode("utf-8")
        except (TypeError, UnicodeDecodeError):  # not UTF-8 (nor a source the coordinator wrote): the other path
            return None

    def document(self, doc_id: str, version: Version) -> tantivy.Document:
        """The document built field by field (a tombstone when its source is None)."""
        source = version.source
        doc = tantivy.Document()
        doc.add_text(self._id_field, doc_id)
        doc.add_unsigned(PARTITION, version.partition)
        doc.add_unsigned(DELETED, 1 if source is None else 0)
        doc.add_unsigned(HLC, version.hlc)
        doc.add_text(ORIGIN, version.origin)
        if version.position:
            doc.add_unsigned(POSITION, version.position)
        if source is None:
            return doc
        doc.add_bytes(SOURCE, source)
        try:
            fields = json.loads(source)
        except ValueError:
            log.warning("search index %s: document %r has a source that is not JSON; indexed by id only", self.index_name, doc_id)
            return doc
        if not isinstance(fields, dict):
            log.warning("search index %s: document %r has a source that is not an object; indexed by id only", self.index_name, doc_id)
            return doc
        counted = {name: value for name, value in fields.items() if value is not None}
        try:
            lengths = self._count_lengths(counted)
        except (ValueError, TypeError) as exc:  # a value the analyser cannot read (e.g. a lone surrogate)
            log.warning("search index %s: document %r: field lengths not counted: %s", self.index_name, doc_id, exc)
        else:
            for name, count in zip(self._length_names, lengths):
                doc.add_unsigned(name, count)
        for name, value in counted.items():
            spec = self._specs.get(name)
            if spec is None or name == self._id_field:
                continue  # the coordinator checked the document against this schema; the id is added above
            for item in value if isinstance(value, list) and spec.type != "json" else [value]:
                try:
                    _add_value(doc, spec, item)
                except (ValueError, TypeError, OverflowError) as exc:
                    # A bad value must not fail the batch (and every replay of it): index the rest.
                    log.warning("search index %s: document %r field %r not indexed: %s", self.index_name, doc_id, name, exc)
        return doc


def _add_value(doc: tantivy.Document, spec: FieldSpec, value: Any) -> None:
    name = spec.name
    if spec.type in ("text", "keyword"):
        doc.add_text(name, value)
    elif spec.type == "i64":
        doc.add_integer(name, value)
    elif spec.type == "u64":
        doc.add_unsigned(name, value)
    elif spec.type == "f64":
        doc.add_float(name, float(value))
    elif spec.type == "bool":
        doc.add_boolean(name, value)
    elif spec.type == "date":
        parsed = parse_date(value)
        if parsed is not None:
            doc.add_date(name, parsed)
    elif spec.type == "json":
        doc.add_json(name, value)
