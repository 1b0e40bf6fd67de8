"""``legion search …``: the search engine's command group.

Commands parse arguments, call ``SearchClient`` and print; they hold no HTTP
and no logic. Errors (``LegionError``) propagate to the top-level ``legion``
command, which prints them and picks the exit code.
"""

from __future__ import annotations

import html
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from engines.search.client import BATCH_DOCS_DEFAULT, IN_FLIGHT_DEFAULT, SearchClient
from legion.client import Client
from legion.command_line import ClusterOption
from legion.errors import ConfigError

app = typer.Typer(name="search", help="Create indexes, ingest documents and search them.", no_args_is_help=True)
console = Console()
stderr = Console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the server's answer as JSON.")]


@contextmanager
def _search(cluster: Path | None) -> Iterator[SearchClient]:
    with Client.connect(cluster) as client:
        yield SearchClient(client)


@app.command()
def create(
    index: Annotated[str, typer.Argument(help="The index name (lowercase letters, digits, '_', '-').")],
    schema: Annotated[Path, typer.Option("--schema", help="A JSON file: id_field, default_fields, fields.")],
    cluster: ClusterOption = None,
) -> None:
    """Create INDEX from a JSON schema."""
    try:
        document = json.loads(schema.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the schema file {schema}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"the schema file {schema} is not valid JSON: {exc}") from None
    with _search(cluster) as search:
        answer = search.create(index, document)
    fields = ", ".join(f"{name} ({spec['type']})" for name, spec in answer["schema"]["fields"].items())
    console.print(f"index [bold]{escape(index)}[/bold] ready: {escape(fields)}")


@app.command("list")
def list_indexes(cluster: ClusterOption = None, as_json: JsonOption = False) -> None:
    """List the indexes."""
    with _search(cluster) as search:
        indexes = search.list()
    if as_json:
        console.print_json(data=indexes)
        return
    if not indexes:
        console.print("no indexes; create one with `legion search create NAME --schema FILE`")
        return
    table = Table(show_edge=False, header_style="bold")
    for column in ("index", "id field", "default fields", "fields"):
        table.add_column(column)
    for entry in indexes:
        s = entry["schema"]
        table.add_row(escape(entry["index"]), escape(s["id_field"]), escape(", ".join(s["default_fields"])), escape(", ".join(s["fields"])))
    console.print(table)


@app.command()
def drop(index: Annotated[str, typer.Argument(help="The index to drop, with all its documents.")], cluster: ClusterOption = None) -> None:
    """Drop INDEX and every document in it."""
    with _search(cluster) as search:
        search.drop(index)
    console.print(f"dropped [bold]{escape(index)}[/bold]")


@app.command()
def ingest(
    index: Annotated[str, typer.Argument(help="The index to add documents to.")],
    source: Annotated[str, typer.Argument(help="A JSON-lines file (one document per line), or '-' for stdin.")],
    batch: Annotated[int, typer.Option("--batch", help="Documents per bulk request.")] = BATCH_DOCS_DEFAULT,
    in_flight: Annotated[int, typer.Option("--in-flight", help="Bulk requests in flight at once.")] = IN_FLIGHT_DEFAULT,
    cluster: ClusterOption = None,
) -> None:
    """Index every document of a JSON-lines file; when it returns, all of them are searchable."""
    stream, total_bytes = _open_source(source)
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[docs]:,} docs · {task.fields[rate]:,.0f} docs/s"), TimeElapsedColumn(), TimeRemainingColumn(),
    ]
    with _search(cluster) as search, stream, Progress(*columns, console=stderr, transient=False) as progress:
        task = progress.add_task(f"ingest {index}", total=total_bytes, docs=0, rate=0.0)
        sent = {"docs": 0}

        def advance(docs: int, size: int) -> None:
            sent["docs"] += docs
            elapsed = progress.tasks[task].elapsed or 1e-9
            progress.update(task, advance=size, docs=sent["docs"], rate=sent["docs"] / elapsed)

        report = search.ingest(index, stream, batch_docs=batch, in_flight=in_flight, progress=advance)
        elapsed = progress.tasks[task].elapsed or 1e-9
    for error in report.errors[:20]:
        stderr.print(f"line {error['line']}: {escape(str(error.get('message')))}", soft_wrap=True, highlight=False)
    if report.failed > 20:
        stderr.print(f"… and {report.failed - 20} more failed documents")
    console.print(f"indexed {report.indexed:,} documents into [bold]{escape(index)}[/bold] in {elapsed:.1f}s "
                  f"({report.indexed / elapsed:,.0f} docs/s); {report.failed:,} failed")
    if report.failed:
        raise typer.Exit(code=1)


def _open_source(source: str) -> tuple[BinaryIO, int | None]:
    if source == "-":
        return sys.stdin.buffer, None
    path = Path(source)
    try:
        return path.open("rb"), path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror}") from None


@app.command()
def query(
    index: Annotated[str, typer.Argument(help="The index to search.")],
    text: Annotated[str, typer.Argument(help='A query: words, "phrases", field:value, AND/OR/NOT, ranges like size:[10 TO 20].')],
    limit: Annotated[int, typer.Option("--limit", help="Hits to show.")] = 10,
    offset: Annotated[int, typer.Option("--offset", help="Hits to skip (pagination).")] = 0,
    fields: Annotated[str | None, typer.Option("--fields", help="Comma-separated stored fields to return.")] = None,
    ranking: Annotated[
        str | None,
        typer.Option(
            "--ranking",
            help="exact (default: as one index would rank), global_idf (no rescoring) or local (each node's own statistics, one round).",
        ),
    ] = None,
    as_json: JsonOption = False,
    cluster: ClusterOption = None,
) -> None:
    """Search INDEX and print the best hits with highlighted snippets."""
    wanted = [f for f in fields.split(",") if f] if fields else None
    with _search(cluster) as search:
        answer = search.search(index, text, limit=limit, offset=offset, fields=wanted, ranking=ranking)
    if as_json:
        console.print_json(data=answer)
        return
    print_hits(console, answer, offset)


def print_hits(out: Console, answer: dict[str, Any], offset: int = 0) -> None:
    """A search answer as a ranked list with highlighted snippets (also used by the demo)."""
    missing = answer.get("partitions_missing") or []
    header = f"{answer['total']:,} hits in {answer['took_ms']:.1f} ms"
    if answer.get("ranking", "exact") != "exact":  # asked for, or all the query allows (e.g. a regex)
        header += f" [dim](ranking: {escape(str(answer['ranking']))})[/dim]"
    if missing:
        header += f" — [yellow]partial: {len(missing)} partitions did not answer ({', '.join(map(str, missing[:10]))})[/yellow]"
    out.print(header)
    for rank, hit in enumerate(answer["hits"], start=offset + 1):
        out.print(f"[bold]{rank}. {escape(hit['id'])}[/bold]  [dim]score {hit['score']:.4f}[/dim]")
        for field, snippet in hit.get("snippets", {}).items():
            out.print(f"   [dim]{escape(field)}:[/dim] {_highlight(snippet)}", soft_wrap=False)


def _highlight(snippet: str) -> str:
    """A snippet's <b>…</b> marks as rich bold; its text (HTML-escaped by tantivy) printed literally."""
    out = []
    for part in re.split(r"(</?b>)", snippet.replace("\n", " ")):
        if part == "<b>":
            out.append("[bold yellow]")
        elif part == "</b>":
            out.append("[/bold yellow]")
        else:
            out.append(escape(html.unescape(part)))
    return "".join(out)


@app.command()
def get(
    index: Annotated[str, typer.Argument(help="The index.")],
    doc_id: Annotated[str, typer.Argument(metavar="ID", help="The document id.")],
    cluster: ClusterOption = None,
) -> None:
    """Print one document as JSON."""
    with _search(cluster) as search:
        console.print_json(data=search.get(index, doc_id)["doc"])


@app.command()
def delete(
    index: Annotated[str, typer.Argument(help="The index.")],
    doc_id: Annotated[str, typer.Argument(metavar="ID", help="The document id.")],
    cluster: ClusterOption = None,
) -> None:
    """Delete one document (searchable as deleted when this returns)."""
    with _search(cluster) as search:
        search.delete(index, doc_id, refresh=True)
    console.print(f"deleted [bold]{escape(doc_id)}[/bold] from {escape(index)}")


@app.command()
def stats(index: Annotated[str, typer.Argument(help="The index.")], as_json: JsonOption = False, cluster: ClusterOption = None) -> None:
    """Documents per node and partition, and size on disk."""
    with _search(cluster) as search:
        answer = search.stats(index)
    if as_json:
        console.print_json(data=answer)
        return
    table = Table(show_edge=False, header_style="bold")
    for column, justify in (("node", "left"), ("partitions", "right"), ("docs", "right"), ("tombstones", "right"), ("size on disk", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for node, info in sorted(answer["nodes"].items()):
        table.add_row(escape(node), str(len(info["partitions"])), f"{info['docs']:,}", f"{info['tombstones']:,}", _size(info["size_bytes"]))
    console.print(table)
    counts = list(answer["partitions"].values())
    spread = f"min {min(counts):,} / max {max(counts):,} per partition" if counts else "no partitions"
    console.print(f"[bold]{escape(index)}[/bold]: {answer['docs']:,} documents in {len(counts)} partitions ({spread})")
    if answer.get("partitions_missing"):
        console.print(f"[yellow]partitions without a live replica: {answer['partitions_missing']}[/yellow]")


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return str(size)
