"""Tests of engines.search.corpus: one document per module, class and function, read with ast."""

from __future__ import annotations

import textwrap
from pathlib import Path

from engines.search import corpus
from engines.search.corpus import CorpusDoc, Root


def write(root: Path, relative: str, source: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")


def sample_tree(root: Path) -> None:
    write(root, "pkg/__init__.py", '"""The package."""\n')
    write(
        root,
        "pkg/shapes.py",
        '''
        """Shapes and their areas."""

        class Square:
            """A square."""

            def area(self):
                """Side squared."""
                return self.side ** 2

            @property
            def side(self):
                return 1

            @side.setter
            def side(self, value):
                """A second definition of side: the first one wins."""

        def helper():
            def inner():
                """Nested."""
            return inner

        if True:
            def conditional():
                """Inside an if block."""
        ''',
    )
    write(root, "broken.py", "def oops(:\n")
    write(root, "pkg/tests/test_shapes.py", '"""Skipped: a test package."""\n')
    write(root, "test_top.py", '"""Skipped: a test module."""\n')
    write(root, ".hidden/secret.py", '"""Skipped: hidden."""\n')
    write(root, "site-packages/other.py", '"""Skipped: installed packages are another tree."""\n')
    write(root, "notes.txt", "not python")


def test_a_tree_gives_one_doc_per_definition_in_source_order(tmp_path: Path) -> None:
    sample_tree(tmp_path)
    docs = list(corpus.documents([Root(tmp_path)]))
    assert [(doc.id, doc.kind) for doc in docs] == [
        ("pkg", "module"),
        ("pkg.shapes", "module"),
        ("pkg.shapes.Square", "class"),
        ("pkg.shapes.Square.area", "method"),
        ("pkg.shapes.Square.side", "method"),
        ("pkg.shapes.helper", "function"),
        ("pkg.shapes.helper.inner", "function"),
        ("pkg.shapes.conditional", "function"),
    ]
    area = docs[3]
    assert area == CorpusDoc(
        id="pkg.shapes.Square.area",
        title="pkg.shapes.Square.area",
        body="Side squared.",
        module="pkg.shapes",
        kind="method",
        lines=3,
        size=len("Side squared."),
    )
    side = docs[4]
    assert side.body == "" and side.size == 0  # the getter (no docstring) came first


def test_labels_prefix_ids_and_limits_cut_the_stream(tmp_path: Path) -> None:
    sample_tree(tmp_path)
    docs = list(corpus.documents([Root(tmp_path, "extra")], limit=3))
    assert [doc.id for doc in docs] == ["extra:pkg", "extra:pkg.shapes", "extra:pkg.shapes.Square"]
    assert docs[0].title == "pkg"
    assert list(corpus.documents([Root(tmp_path)], limit=0)) == []


def test_the_standard_library_gives_unique_ids_in_a_repeatable_order() -> None:
    first = list(corpus.documents(limit=2000))
    again = list(corpus.documents(limit=2000))
    assert first == again
    assert len({doc.id for doc in first}) == len(first) == 2000
    assert {doc.kind for doc in first} == {"module", "class", "function", "method"}
    assert not any(".tests." in doc.id or doc.module.startswith("test.") for doc in first)


def test_fields_name_every_field_an_index_ingests() -> None:
    doc = next(corpus.documents(limit=1))
    assert set(doc.fields()) == {"id", "title", "body", "module", "kind", "lines", "size"}
