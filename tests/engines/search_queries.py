"""Tantivy query strings over a schema with every field type: the inputs of the search query tests.

``typed_index()`` builds an empty index whose schema has text, keyword
(raw), i64, u64, f64, bool, date and JSON fields beside a node's internal
fields; ``queries()`` is a Hypothesis strategy of query strings tantivy's
parser accepts for it: words, phrases (slop, prefix), ``field:value`` of
every type, ranges, ``IN`` sets, ``*`` and ``field:*``, boosts, and
boolean combinations with ``+``/``-``/``AND``/``OR``/``NOT`` and
parentheses. It never makes a range on a JSON path or a term on a JSON
field's root (which ``query_compile`` deliberately refuses to rebuild).
"""

from __future__ import annotations

import tantivy
from hypothesis import strategies as st


DEFAULT_FIELDS = ["title", "body"]
FIELD_NAMES = (
    "_id", "_partition", "_deleted", "title", "body", "tag", "lines", "size", "ratio", "flag", "when", "attrs",
)  # fmt: skip


def typed_index() -> tantivy.Index:
    """An empty in-memory index with one field of every type (``FIELD_NAMES``, in id order)."""
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("_id", stored=True, tokenizer_name="raw", fast=True)
    builder.add_unsigned_field("_partition", indexed=True, fast=True)
    builder.add_unsigned_field("_deleted", indexed=True, fast=True)
    builder.add_text_field("title", stored=True)
    builder.add_text_field("body", stored=True)
    builder.add_text_field("tag", stored=True, tokenizer_name="raw", fast=True)
    builder.add_integer_field("lines", indexed=True, fast=True, stored=True)
    builder.add_unsigned_field("size", indexed=True, fast=True, stored=True)
    builder.add_float_field("ratio", indexed=True, fast=True, stored=True)
    builder.add_boolean_field("flag", indexed=True, fast=True, stored=True)
    builder.add_date_field("when", indexed=True, fast=True, stored=True)
    builder.add_json_field("attrs", stored=True, fast=True)
    return tantivy.Index(builder.build())


words = st.sampled_from(
    ["hello", "world", "run", "dog", "buffer", "read", "the", "abc", "x1", "é", "naïve", "ünïcode"]
)
keyword_chars = st.one_of(
    st.characters(exclude_categories=("Cs", "Cn")), st.sampled_from("\"\\\\\n\t")
)
integers_i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
integers_u64 = st.integers(min_value=0, max_value=2**64 - 1)
decimals = st.decimals(min_value=-1_000_000, max_value=1_000_000, places=3, allow_nan=False).map(str)
dates = st.datetimes(
    min_value=__import__("datetime").datetime(1970, 1, 1), max_value=__import__("datetime").datetime(2100, 1, 1)
).map(lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%SZ"))
json_paths = st.sampled_from(["attrs.a", "attrs.a.b", "attrs.n", "attrs.deep.er.path"])
boosts = st.sampled_from(["2", "0.5", "1.25", "3", "0.0000001", "100"])


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def _phrase(draw: st.DrawFn) -> str:
    field = draw(st.sampled_from(["", "title:", "body:", "attrs.a:"]))
    phrase = _quoted(" ".join(draw(st.lists(words, min_size=2, max_size=4))))
    suffix = draw(st.sampled_from(["", "", "~1", "~3", "*"]))
    if suffix == "*" and field == "attrs.a:":
        suffix = ""
    return field + phrase + suffix


@st.composite
def _range(draw: st.DrawFn) -> str:
    field, values = draw(
        st.sampled_from([("lines", integers_i64), ("size", integers_u64), ("ratio", decimals), ("when", dates)])
    )
    low, high = draw(values), draw(values)
    shape = draw(st.sampled_from(["[]", "{}", "[}", "{]", "[*", "*]", ">", ">=", "<", "<="]))
    if shape in (">", ">=", "<", "<="):
        return f"{field}:{shape}{low}"
    if shape == "[*":
        return f"{field}:[{low} TO *]"
    if shape == "*]":
        return f"{field}:[* TO {high}]"
    return f"{field}:{shape[0]}{low} TO {high}{shape[1]}"


@st.composite
def _in_set(draw: st.DrawFn) -> str:
    field, values = draw(
        st.sampled_from(
            [
                ("tag", st.text(keyword_chars, min_size=1, max_size=6).map(_quoted)),
                ("lines", integers_i64.map(str)),
                ("size", integers_u64.map(str)),
                ("title", words),
            ]
        )
    )
    return f"{field}:IN [{' '.join(draw(st.lists(values, min_size=1, max_size=4)))}]"


def _leaf() -> st.SearchStrategy[str]:
    return st.one_of(
        words,
        st.builds(lambda field, word: f"{field}:{word}", st.sampled_from(["title", "body"]), words),
        _phrase(),
        st.text(keyword_chars, min_size=1, max_size=8).map(lambda text: "tag:" + _quoted(text)),
        integers_i64.map(lambda n: f"lines:{n}"),
        integers_u64.map(lambda n: f"size:{n}"),
        decimals.map(lambda d: f"ratio:{d}"),
        st.booleans().map(lambda b: f"flag:{str(b).lower()}"),
        dates.map(lambda d: f'when:"{d}"'),  # a bare date inside parentheses is a syntax error
        st.builds(lambda path, word: f"{path}:{word}", json_paths, st.one_of(words, st.integers(-99, 99).map(str))),
        _range(),
        _in_set(),
        st.sampled_from(["*", "lines:*", "tag:*", "flag:*", "attrs.a:*", "when:*"]),
        st.builds(lambda field, words_: f"{field}:({' '.join(words_)})", st.sampled_from(["title", "body"]),
                  st.lists(words, min_size=2, max_size=3)),
    )


def _boosted(clause: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(clause, st.builds(lambda c, b: f"{c}^{b}", clause, boosts))


def queries() -> st.SearchStrategy[str]:
    """Query strings with at least one clause that can match (tantivy refuses queries that only exclude)."""
    leaf = _boosted(_leaf())
    group = st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.builds(lambda a, b, op: f"({a} {op} {b})", inner, inner, st.sampled_from(["AND", "OR"])),
            st.builds(lambda a, b: f"({a} AND NOT {b})", inner, inner),
            st.builds(lambda a, b, c: f"(+{a} -{b} {c})", inner, inner, inner),
            _boosted(st.builds(lambda a, b: f"({a} {b})", inner, inner)),
        ),
        max_leaves=6,
    )
    extra = st.lists(st.tuples(st.sampled_from(["", "+", "-"]), group), max_size=3)
    return st.builds(lambda first, rest: " ".join([first] + [sign + clause for sign, clause in rest]), group, extra)
