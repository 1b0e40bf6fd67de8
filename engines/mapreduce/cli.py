"""``legion mr …``: the map/reduce engine's command group.

Commands parse arguments, call ``MRClient`` (or ``local_run`` for
``run --input``, which needs no cluster) and print; they hold no HTTP and no
logic. Errors (``LegionError``) propagate to the top-level ``legion``
command, which prints them and picks the exit code; a failed job prints the
user's traceback first.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from engines.mapreduce.client import IN_FLIGHT_DEFAULT, JobError, MRClient
from engines.mapreduce.report import JobReport, JobStatus
from engines.mapreduce.report import Progress as JobProgress
from legion.client import Client
from legion.command_line import ClusterOption
from legion.errors import ConfigError

app = typer.Typer(name="mr", help="Store datasets in the cluster and run map/reduce jobs on them.", no_args_is_help=True)
console = Console()
stderr = Console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
FormatOption = Annotated[str | None, typer.Option("--format", help="parquet, csv or jsonl (default: from the extension).")]
ROWS_SHOWN_DEFAULT = 50


@contextmanager
def _mr(cluster: Path | None) -> Iterator[MRClient]:
    with Client.connect(cluster) as client:
        yield MRClient(client)


@app.command()
def ingest(
    dataset: Annotated[str, typer.Argument(help="The dataset to add rows to (created from the first file's columns).")],
    files: Annotated[list[Path], typer.Argument(help="Parquet, CSV or JSON-lines files.")],
    key: Annotated[str | None, typer.Option("--key", help="Place rows by this column's hash (default: evenly).")] = None,
    format: FormatOption = None,
    in_flight: Annotated[int, typer.Option("--in-flight", help="Requests in flight at once.")] = IN_FLIGHT_DEFAULT,
    cluster: ClusterOption = None,
) -> None:
    """Store the rows of FILES in DATASET, spread over the partitions and replicated."""
    total_rows = _count_rows(files, format)
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
        TextColumn("{task.completed:,.0f} rows · {task.fields[rate]:,.0f} rows/s"), TimeElapsedColumn(),
    ]  # fmt: skip
    with _mr(cluster) as mr, Progress(*columns, console=stderr) as progress:
        task = progress.add_task(f"ingest {dataset}", total=total_rows, rate=0.0)

        def advance(rows: int, _size: int) -> None:
            elapsed = progress.tasks[task].elapsed or 1e-9
            progress.update(task, advance=rows, rate=(progress.tasks[task].completed + rows) / elapsed)

        report = mr.ingest(dataset, files, key=key, format=format, in_flight=in_flight, progress=advance)
    rate = report.rows / report.seconds if report.seconds else 0.0
    console.print(
        f"ingested {report.rows:,} rows into [bold]{escape(dataset)}[/bold] in {report.seconds:.1f}s "
        f"({rate:,.0f} rows/s, {report.batches:,} batches)"
    )


def _count_rows(files: list[Path], format: str | None) -> int | None:
    """Rows of the input when cheap to know (Parquet metadata), for the progress bar."""
    from engines.mapreduce.local_run import input_format

    total = 0
    for path in files:
        if input_format(path, format) != "parquet":
            return None
        try:
            total += pq.ParquetFile(path).metadata.num_rows
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
    return total


@app.command("datasets")
def list_datasets(cluster: ClusterOption = None, as_json: JsonOption = False) -> None:
    """List the datasets with rows and bytes per node."""
    with _mr(cluster) as mr:
        found = mr.datasets()
    if as_json:
        console.print_json(data=found)
        return
    if not found:
        console.print("no datasets; add one with `legion mr ingest NAME FILE...`")
        return
    table = Table(show_edge=False, header_style="bold")
    for column in ("dataset", "rows", "size", "key", "partitions", "per node (rows, replicas included)"):
        table.add_column(column, justify="right" if column in ("rows", "size", "partitions") else "left")
    for d in found:
        per_node = ", ".join(f"{node}: {v['rows']:,}" for node, v in sorted(d["nodes"].items()))
        table.add_row(escape(d["name"]), f"{d['rows']:,}", _bytes(d["bytes"]), escape(d["key"] or "(even)"),
                      str(len(d["partitions"])), escape(per_node))  # fmt: skip
    console.print(table)


@app.command()
def drop(dataset: Annotated[str, typer.Argument(help="The dataset to drop, with all its rows.")], cluster: ClusterOption = None) -> None:
    """Drop DATASET and every row in it."""
    with _mr(cluster) as mr:
        mr.drop(dataset)
    console.print(f"dropped [bold]{escape(dataset)}[/bold]")


@app.command()
def run(
    job: Annotated[Path, typer.Argument(help="The job file (map/KEY/reduce, or mapper/reducer).")],
    dataset: Annotated[str | None, typer.Option("--dataset", help="Run on this dataset of the cluster.")] = None,
    inputs: Annotated[list[Path] | None, typer.Option("--input", help="Run on these files instead, with no cluster.")] = None,
    reducers: Annotated[int | None, typer.Option("--reducers", help="Reduce buckets (default: the job's REDUCERS, else 4).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the result to this Parquet file.")] = None,
    into: Annotated[str | None, typer.Option("--into", help="Store the result as this dataset (jobs chain).")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Result rows to print.")] = ROWS_SHOWN_DEFAULT,
    format: FormatOption = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds the job may take.")] = 3600.0,
    as_json: JsonOption = False,
    cluster: ClusterOption = None,
) -> None:
    """Run a job on a dataset of the cluster (--dataset), or on files with an embedded Dask cluster (--input)."""
    try:
        source = job.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the job file {job}: {exc.strerror}") from None
    if (dataset is None) == (not inputs):
        raise ConfigError("give either --dataset NAME (a cluster's dataset) or --input FILE... (files, no cluster)")
    if into and (inputs or out):
        raise ConfigError("--into stores the result in the cluster: it goes with --dataset and without --out")
    try:
        if inputs:
            result, report, job_id = _run_local(source, inputs, format, reducers, timeout, as_json)
        else:
            assert dataset is not None
            result, report, job_id = _run_cluster(source, dataset, reducers, into, timeout, as_json, cluster)
    except JobError as exc:
        if exc.user_traceback:
            stderr.print(escape(exc.user_traceback.rstrip()), highlight=False, soft_wrap=True)
        raise
    _show(result, report, job_id, out=out, into=into, limit=limit, as_json=as_json)


def _run_local(
    source: str, inputs: list[Path], format: str | None, reducers: int | None, timeout: float, quiet: bool
) -> tuple[pa.Table, JobReport, str]:
    from engines.mapreduce.job_runner import JobFailed
    from engines.mapreduce.local_run import run_local

    with _job_progress(quiet) as show:
        try:
            table, report = run_local(source, inputs, format=format, reducers=reducers, on_progress=show, timeout_s=timeout)
        except JobFailed as exc:
            failure = exc.failure
            raise JobError(exc.message, stage=failure.stage, user_traceback=failure.traceback) from None
    return table, report, "embedded"


def _run_cluster(
    source: str, dataset: str, reducers: int | None, into: str | None, timeout: float, quiet: bool, cluster: Path | None
) -> tuple[pa.Table | None, JobReport, str]:
    with _mr(cluster) as mr, _job_progress(quiet) as show:
        status, table = mr.run(source, dataset, reducers=reducers, into=into, timeout_s=timeout, progress=lambda s: show(s.progress))
    return table, status.report, status.job_id


@contextmanager
def _job_progress(quiet: bool) -> Iterator[Any]:
    """A callback drawing map and reduce tasks done out of total on stderr (nothing with ``quiet``)."""
    if quiet or not stderr.is_terminal and not sys.stderr.isatty():
        yield lambda _progress: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}"), TimeElapsedColumn()]
    with Progress(*columns, console=stderr, transient=True) as bars:
        map_bar = bars.add_task("map tasks", total=None)
        reduce_bar = bars.add_task("reduce tasks", total=None)

        def show(progress: JobProgress) -> None:
            bars.update(map_bar, completed=progress.map_done, total=progress.map_total or None)
            bars.update(reduce_bar, completed=progress.reduce_done, total=progress.reduce_total or None)

        yield show


def _show(result: pa.Table | None, report: JobReport, job_id: str, *, out: Path | None, into: str | None, limit: int, as_json: bool) -> None:
    if out is not None and result is not None:
        try:
            pq.write_table(result, out)
        except OSError as exc:
            raise ConfigError(f"cannot write {out}: {exc}") from None
    if as_json:
        shown = result.slice(0, limit).to_pylist() if result is not None and out is None else None
        console.print_json(data={"job_id": job_id, "report": report.to_json(), "rows": shown,
                                 "result_rows": result.num_rows if result is not None else report.rows_out}, default=str)  # fmt: skip
        return
    if into:
        console.print(f"stored {report.rows_out:,} rows as dataset [bold]{escape(into)}[/bold]")
    elif out is not None and result is not None:
        console.print(f"wrote {result.num_rows:,} rows to {escape(str(out))}")
    elif result is not None:
        console.print(result_table(result, limit))
    console.print(report_table(report, job_id))


def result_table(result: pa.Table, limit: int = ROWS_SHOWN_DEFAULT) -> Table:
    """A job's result as a rich table (the first ``limit`` rows)."""
    table = Table(show_edge=False, header_style="bold")
    for field in result.schema:
        numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_decimal(field.type)
        table.add_column(escape(field.name), justify="right" if numeric else "left")
    for row in result.slice(0, limit).to_pylist():
        table.add_row(*(escape(_cell(value)) for value in row.values()))
    if result.num_rows > limit:
        table.caption = f"{limit} of {result.num_rows:,} rows (--limit, or --out FILE.parquet for all)"
    return table


def report_table(report: JobReport, job_id: str) -> Table:
    """The job report: tasks, locality, retries, rows, bytes, time per stage."""
    table = Table(title=f"job {job_id}", show_header=False, show_edge=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    stages = " · ".join(f"{name} {seconds:.3f}s" for name, seconds in report.stage_seconds.items())
    nodes = ", ".join(f"{node}: {count}" for node, count in sorted(report.nodes.items()))
    rows = [
        ("tasks", f"{report.map_tasks} map ({report.partitions} partitions) · {report.reduce_tasks} reduce"),
        ("data-local map tasks", f"{report.data_local_percent:.0f}% ({report.map_tasks_local}/{report.map_tasks}; {nodes})"),
        ("retries", str(report.retries)),
        ("rows", f"{report.rows_in:,} in → {report.rows_map_out:,} after map → {report.rows_out:,} out"),
        ("shuffled", _bytes(report.bytes_shuffled)),
        ("time", f"{report.seconds:.3f}s ({stages})"),
    ]
    for name, value in rows:
        table.add_row(name, escape(value))
    return table


@app.command()
def jobs(cluster: ClusterOption = None, as_json: JsonOption = False) -> None:
    """List the jobs of every live node, newest first."""
    with _mr(cluster) as mr:
        found = mr.jobs()
    if as_json:
        console.print_json(data=found)
        return
    if not found:
        console.print("no jobs yet; run one with `legion mr run JOB.py --dataset NAME`")
        return
    table = Table(show_edge=False, header_style="bold")
    for column in ("job", "dataset", "state", "node", "map", "reduce", "rows out", "seconds"):
        table.add_column(column)
    for raw in found:
        s = JobStatus.from_json(raw)
        table.add_row(s.job_id, escape(s.dataset), s.state, s.node, f"{s.progress.map_done}/{s.progress.map_total}",
                      f"{s.progress.reduce_done}/{s.progress.reduce_total}", f"{s.report.rows_out:,}", f"{s.report.seconds:.2f}")  # fmt: skip
    console.print(table)


@app.command()
def status(job_id: Annotated[str, typer.Argument(help="The job id (see `legion mr jobs`).")], cluster: ClusterOption = None, as_json: JsonOption = False) -> None:
    """Show one job: state, progress, report, and its error with the user's traceback if it failed."""
    with _mr(cluster) as mr:
        raw = mr.job(job_id)
    if as_json:
        console.print_json(data=raw)
        return
    s = JobStatus.from_json(raw)
    console.print(f"job {s.job_id} on {escape(s.dataset)}: [bold]{s.state}[/bold] (node {s.node}, stage {s.progress.stage}, "
                  f"map {s.progress.map_done}/{s.progress.map_total}, reduce {s.progress.reduce_done}/{s.progress.reduce_total})")  # fmt: skip
    if s.error:
        if s.error.get("traceback"):
            console.print(escape(s.error["traceback"].rstrip()), highlight=False)
        console.print(f"[red]error in {escape(s.error.get('stage', '?'))}:[/red] {escape(s.error.get('message', ''))}")
    console.print(report_table(s.report, s.job_id))


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _bytes(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size} B"


__all__ = ["app", "report_table", "result_table"]
