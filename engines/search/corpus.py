"""A real text corpus for search tests and benchmarks: Python's own docstrings.

One document per module, class and function (methods and nested functions
included) found in a source tree, read with ``ast`` — files are parsed, never
imported. The default tree is the standard library of the running Python
(``sysconfig.get_paths()["stdlib"]``); more trees (a ``site-packages``,
another Python's standard library) can be added to grow the corpus past
50,000 documents for a benchmark.

Fields of a document (``CorpusDoc``):

- ``id``: the qualified name, e.g. ``json.decoder.JSONDecoder.raw_decode``,
  prefixed with ``label:`` for a tree added with a label; unique (when a tree
  defines one name twice — a property setter, a platform-specific
  alternative — the first definition wins);
- ``title``: the qualified name as text (the default tokenizer splits it
  into words: ``json decoder jsondecoder raw decode``);
- ``body``: the cleaned docstring, ``""`` when there is none;
- ``module``: the dotted module name (a keyword);
- ``kind``: ``module``, ``class``, ``function`` or ``method`` (a keyword);
- ``lines``: source lines the definition spans (an i64);
- ``size``: characters in the docstring (a u64).

Skipped: ``__pycache__``, ``site-packages``/``dist-packages`` inside a tree,
test packages (``test``, ``tests``, ``idle_test``: they hold lib2to3's and
others' deliberately broken data files), ``test_*.py``/``*_test.py``/
``conftest.py``, hidden directories, and any file that does not parse.

The order is deterministic: trees in the order given, directories and files
sorted by name, definitions in source order.

Does I/O: reads files. Run ``python -m engines.search.corpus`` to count the
documents each tree gives (``--root label=path`` adds trees).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SKIPPED_DIRECTORY_NAMES = frozenset(
    {"__pycache__", "site-packages", "dist-packages", "test", "tests", "idle_test"}
)
KIND_MODULE = "module"
KIND_CLASS = "class"
KIND_FUNCTION = "function"
KIND_METHOD = "method"

_Definition = ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class Root:
    """A source tree to read; ``label`` (if any) prefixes its documents' ids."""

    path: Path
    label: str = ""


@dataclass(frozen=True)
class CorpusDoc:
    """One module, class or function and its docstring."""

    id: str
    title: str
    body: str
    module: str
    kind: str
    lines: int
    size: int

    def fields(self) -> dict[str, str | int]:
        """The document as a field-name → value mapping (what an index ingests)."""
        return {
            "id": self.id,
            "title": self.title,
            "body": self.body,
            "module": self.module,
            "kind": self.kind,
            "lines": self.lines,
            "size": self.size,
        }


# The schema of an index holding corpus documents (``legion search create NAME --schema``).
SCHEMA = {
    "id_field": "id",
    "default_fields": ["title", "body"],
    "fields": {
        "id": {"type": "keyword", "stored": True},
        "title": {"type": "text", "stored": True},
        "body": {"type": "text", "stored": True},
        "module": {"type": "keyword", "stored": True, "fast": True},
        "kind": {"type": "keyword", "stored": True, "fast": True},
        "lines": {"type": "i64", "stored": True, "fast": True},
        "size": {"type": "u64", "stored": True, "fast": True},
    },
}


def json_lines(docs: Iterable[CorpusDoc]) -> Iterator[bytes]:
    """The documents as JSON lines, what ``legion search ingest`` reads."""
    for doc in docs:
        yield json.dumps(doc.fields(), ensure_ascii=False).encode("utf-8") + b"\n"


def stdlib_root() -> Root:
    """The running Python's standard library, unlabelled."""
    return Root(Path(sysconfig.get_paths()["stdlib"]))


def documents(roots: Sequence[Root] | None = None, limit: int | None = None) -> Iterator[CorpusDoc]:
    """Every document of ``roots`` (default: the standard library), in order; at most ``limit``."""
    assert limit is None or limit >= 0
    count = 0
    for root in roots if roots is not None else [stdlib_root()]:
        seen: set[str] = set()
        for doc in _root_documents(root):
            if doc.id in seen:
                continue
            seen.add(doc.id)
            if limit is not None and count >= limit:
                return
            count += 1
            yield doc


def _root_documents(root: Root) -> Iterator[CorpusDoc]:
    for path in _source_files(root.path):
        module = _module_name(root.path, path)
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, RecursionError, OSError):
            continue  # not Python 3 source we can read (or a file that vanished): skip it
        prefix = f"{root.label}:" if root.label else ""
        yield from _definitions(tree, module, prefix)


def _source_files(top: Path) -> Iterator[Path]:
    for directory, subdirectories, files in os.walk(top):
        subdirectories[:] = sorted(
            name for name in subdirectories if name not in SKIPPED_DIRECTORY_NAMES and not name.startswith(".")
        )
        for name in sorted(files):
            if name.endswith(".py") and not _is_test_file(name):
                yield Path(directory, name)


def _is_test_file(name: str) -> bool:
    return name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"


def _module_name(top: Path, path: Path) -> str:
    parts = list(path.relative_to(top).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _definitions(tree: ast.Module, module: str, id_prefix: str) -> Iterator[CorpusDoc]:
    """The module's document, then every class and function in source order (pre-order)."""
    module_lines = max((node.end_lineno or node.lineno for node in tree.body if isinstance(node, ast.stmt)), default=0)
    yield _document(id_prefix, module, module, KIND_MODULE, ast.get_docstring(tree), module_lines)
    yield from _nested_definitions(tree, module, module, KIND_MODULE, id_prefix)


def _nested_definitions(node: ast.AST, qualified: str, module: str, kind: str, id_prefix: str) -> Iterator[CorpusDoc]:
    for child in _child_definitions(node):
        name = f"{qualified}.{child.name}"
        child_kind = _kind(child, parent_kind=kind)
        lines = (child.end_lineno or child.lineno) - child.lineno + 1
        yield _document(id_prefix, name, module, child_kind, ast.get_docstring(child), lines)
        yield from _nested_definitions(child, name, module, child_kind, id_prefix)


def _child_definitions(node: ast.AST) -> Iterator[_Definition]:
    """Definitions directly inside ``node``'s scope, also inside if/try/with/for blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _Definition):
            yield child
        elif not isinstance(child, ast.Lambda | ast.expr):
            yield from _child_definitions(child)


def _kind(node: _Definition, parent_kind: str) -> str:
    if isinstance(node, ast.ClassDef):
        return KIND_CLASS
    return KIND_METHOD if parent_kind == KIND_CLASS else KIND_FUNCTION


def _document(id_prefix: str, name: str, module: str, kind: str, docstring: str | None, lines: int) -> CorpusDoc:
    body = docstring or ""
    return CorpusDoc(
        id=id_prefix + name, title=name, body=body, module=module, kind=kind, lines=lines, size=len(body)
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Print how many documents each tree gives (and the total)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-stdlib", action="store_true", help="leave the standard library out")
    parser.add_argument("--root", action="append", default=[], metavar="LABEL=PATH", help="another tree")
    args = parser.parse_args(argv)
    roots = [] if args.no_stdlib else [stdlib_root()]
    for spec in args.root:
        label, _, path = spec.partition("=")
        roots.append(Root(Path(path), label))
    total = 0
    for root in roots:
        count = sum(1 for _ in documents([root]))
        total += count
        print(f"{count:>8}  {root.label or '(stdlib)'}  {root.path}")
    print(f"{total:>8}  total")


if __name__ == "__main__":
    main()
