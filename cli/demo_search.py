"""The search part of ``make demo``: index Python's own docstrings, then search them.

Does I/O: talks to the demo's cluster over HTTP. The corpus is one every
machine has without a download — the docstrings of the standard library,
one document per module, class and function (``engines.search.corpus``).
Each step records checks on the shared ``Tour``.
"""

from __future__ import annotations

import time

from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from engines.search import corpus
from engines.search.cli import print_hits
from engines.search.client import SearchClient

INDEX = "pydocs"
QUERIES = (
    ("words, ranked by BM25 over all shards", "hash table"),
    ("a phrase", '"regular expression"'),
    ("fields and boolean operators", "title:json AND kind:function"),
    ("a keyword field and a numeric range", "module:collections AND lines:[20 TO 200]"),
)


def index_docstrings(tour) -> None:
    """Create the index and ingest the standard library's docstrings through the bulk API."""
    assert tour.client is not None
    search = SearchClient(tour.client)
    search.create(INDEX, corpus.SCHEMA)
    docs = list(corpus.documents())
    lines = list(corpus.json_lines(docs))
    started = time.monotonic()
    columns = [TextColumn("[bold]ingest"), BarColumn(), TaskProgressColumn(), TextColumn("{task.completed:,.0f} docs"), TimeElapsedColumn()]
    with Progress(*columns, console=tour.console, transient=True) as progress:
        task = progress.add_task("ingest", total=len(lines))
        report = search.ingest(INDEX, lines, progress=lambda count, _size: progress.advance(task, count))
    elapsed = time.monotonic() - started
    tour.console.print(
        f"indexed {report.indexed:,} docstrings of the standard library in {elapsed:.1f}s "
        f"({report.indexed / elapsed:,.0f} docs/s), {report.failed} failed"
    )
    tour.check(f"all {len(docs):,} docstrings indexed", report.indexed == len(docs) and report.failed == 0)
    everything = search.search(INDEX, "*", limit=1)
    tour.check("every document is searchable as soon as the ingest returns", everything["total"] == len(docs))
    tour.facts["search index"] = f"{report.indexed:,} docstrings in index {INDEX!r} ({report.indexed / elapsed:,.0f} docs/s)"


def search_docstrings(tour) -> None:
    """A few queries through different nodes: same hits everywhere, highlighted snippets."""
    for number, (what, query) in enumerate(QUERIES):
        node = tour.nodes[number % len(tour.nodes)]
        with tour.node_client(node) as client:
            answer = SearchClient(client).search(INDEX, query, limit=3)
        tour.console.print(f"\n[bold]{escape(what)}[/] — through {node['id']}: [cyan]{escape(query)}[/]")
        print_hits(tour.console, answer)
        tour.check(f"{query!r} found documents", answer["total"] > 0)
    _same_answer_everywhere(tour, QUERIES[0][1])


def _same_answer_everywhere(tour, query: str) -> None:
    answers = []
    for node in tour.nodes:
        with tour.node_client(node) as client:
            answer = SearchClient(client).search(INDEX, query, limit=10, snippets=False)
        answers.append([(hit["id"], hit["score"]) for hit in answer["hits"]])
    tour.check(f"every node ranks {query!r} the same (one replica per partition, global statistics)", all(a == answers[0] for a in answers))
    tour.facts["search"] = f"{len(QUERIES)} queries, ranked as one index would, through {len(tour.nodes)} nodes"


STEPS = [
    ("Index the standard library's docstrings", index_docstrings),
    ("Search them", search_docstrings),
]
