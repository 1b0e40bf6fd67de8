"""Search ingest and query speed of a Legion cluster against raw tantivy, on 50,000 real documents.

Run: ``make bench`` or ``.venv/bin/python bench/search.py [--docs 50000] [--runs 3] [--query-seconds 8]``.

The corpus is Python docstrings (``engines.search.corpus``): the standard
library, this virtualenv's ``site-packages`` and, to pass 50,000 documents,
other Pythons' standard libraries found on the machine (labelled, so ids stay
unique). It is written once as JSON lines — the file every side reads.
Everything below is measured in the same run, on the same machine:

- **raw tantivy** (the baseline): one process, one ``IndexWriter`` (tantivy's
  default heap and threads: one indexing thread per core) over an on-disk
  index with the schema ``corpus.SCHEMA`` describes; each line
  ``json.loads``-ed and added with ``Document.from_dict``, then one commit.
  The ratios are against it; the same with one indexing thread (what each
  node runs) is printed beside it for reference;
- **legion N=1 / N=3**: a fresh local cluster of 3 nodes and 64 partitions
  per run, ``legion search create``, then ``legion search ingest INDEX FILE``
  run as a subprocess, timed from start to exit (it returns once every
  document is searchable);
- **queries**: ``--clients`` threads, each with its own ``legion.Client``
  bound to one node (round-robin), run ``engines.search.testing.QUERIES``
  (top 10, snippets on: the defaults a user gets) for ``--query-seconds``;
  p50/p99 latency as the client sees it and queries per second. The queries
  repeat, so with N=1 each node, as coordinator, searches in one round with
  the statistics it remembers (``engines.search.stats_cache``) after its
  first two-round search of a query: the figures are those of a workload
  of recurring queries on an index not being written. So that every
  coordinator is in that state when the clock starts, each client first runs
  every query once, untimed for the table; that pass's p50/p99 (queries new
  to their coordinator, also 8 at a time) is printed below it;
- **ranking**: every query of ``QUERIES`` once (top 10, no snippets); mean
  overlap@10 and top-1 agreement with the raw tantivy index, ordered the way
  the cluster orders ties (score, then id). As the issue counts them, a hit
  agrees when its score in the raw index ties the one it replaces: a run of
  tied scores longer than a node orders by id is cut in tantivy's order, on
  both sides, and which of the tied documents make the page is no ranking;
- **rankings** (``--rankings``): the queries and the ranking are measured with
  each search ranking a user can ask for — ``exact`` (the default, which the
  targets are for), ``global_idf`` and ``local`` (faster, less exact) — where
  they differ: with N below the node count.

It prints each run (with the machine's load average: other work on a
2-core machine moves every figure, the baseline most), then a table of the
medians of ``--runs`` runs with the targets of the issue. No assertion: a
missed target shows in the table. The corpus depends on what is installed
in ``site-packages``; the header says where its documents came from.

Known gap, not a bug of the run: ``kind:class`` ties ~6,000 documents, more
than a node orders by id (``node_hits.TIE_RUN_HITS_MAX``), so its page is
cut in tantivy's order on both sides; with ties agreeing (above) it costs
overlap@10 and top-1 nothing, but which ten documents show depends on the
segments.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import tantivy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.search import corpus  # noqa: E402
from engines.search.client import SearchClient  # noqa: E402
from engines.search.node_hits import top_hits  # noqa: E402
from engines.search.query_compile import RANKING_EXACT, IndexFields  # noqa: E402
from engines.search.ranking import overlap_at_k, top1_agrees  # noqa: E402
from engines.search.testing import QUERIES  # noqa: E402
from legion.client import Client  # noqa: E402
from legion.runtime import local_cluster  # noqa: E402

INDEX = "docs"
NODES = 3
PARTITIONS = 64
K = 10
CLI_TIMEOUT_S = 900.0
CLUSTER_START_TIMEOUT_S = 120.0
TARGET_RATIO = {1: 0.5, 3: 0.25}
RAW_WRITER_HEAP_BYTES = 128_000_000  # tantivy-py's default
TARGET_P50_MS, TARGET_P99_MS = 10.0, 40.0
OTHER_PYTHONS = (Path.home() / ".pyenv" / "versions", Path("/usr/lib"), Path("/usr/local/lib"))


# --- the corpus ---------------------------------------------------------------------------


def default_roots() -> list[corpus.Root]:
    """The standard library, site-packages, then other Pythons' standard libraries (newest first)."""
    roots = [corpus.stdlib_root(), corpus.Root(Path(sysconfig.get_paths()["purelib"]), "site")]
    seen = {Path(sysconfig.get_paths()["stdlib"]).resolve()}
    candidates = [p for top in OTHER_PYTHONS for p in top.glob("python3.*")]
    candidates += [p for p in OTHER_PYTHONS[0].glob("3.*/lib/python3.*")]
    for stdlib in sorted(candidates, key=_version_key, reverse=True):
        if stdlib.resolve() not in seen and (stdlib / "os.py").exists():
            seen.add(stdlib.resolve())
            roots.append(corpus.Root(stdlib, f"py{stdlib.name[len('python'):]}"))
    return roots


def _version_key(path: Path) -> tuple[int, ...]:
    digits = path.name[len("python") :].split(".")
    return tuple(int(d) for d in digits if d.isdigit())


def write_corpus(path: Path, docs: int) -> dict[str, int]:
    """Write at most ``docs`` documents as JSON lines; how many came from each root."""
    per_root: dict[str, int] = {}
    with path.open("wb") as out:
        for doc in corpus.documents(default_roots(), limit=docs):
            label = doc.id.split(":", 1)[0] if ":" in doc.id else "stdlib"
            per_root[label] = per_root.get(label, 0) + 1
            out.writelines(corpus.json_lines([doc]))
    return per_root


# --- raw tantivy ----------------------------------------------------------------------------


def raw_schema() -> tantivy.Schema:
    """``corpus.SCHEMA`` as a plain tantivy schema (no engine fields)."""
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw")
    builder.add_text_field("title", stored=True)
    builder.add_text_field("body", stored=True)
    builder.add_text_field("module", stored=True, tokenizer_name="raw", fast=True)
    builder.add_text_field("kind", stored=True, tokenizer_name="raw", fast=True)
    builder.add_integer_field("lines", stored=True, indexed=True, fast=True)
    builder.add_unsigned_field("size", stored=True, indexed=True, fast=True)
    return builder.build()


def raw_tantivy(corpus_path: Path, directory: Path, threads: int = 0) -> tuple[float, tantivy.Index]:
    """Index the corpus in this process; docs/s from the first line read to the commit, and the index.

    ``threads`` 0 is tantivy's default (one indexing thread per core)."""
    directory.mkdir(parents=True)
    schema = raw_schema()
    index = tantivy.Index(schema, path=str(directory))
    started = time.perf_counter()
    writer = index.writer(RAW_WRITER_HEAP_BYTES, threads)
    count = 0
    with corpus_path.open("rb") as lines:
        for line in lines:
            writer.add_document(tantivy.Document.from_dict(json.loads(line), schema))
            count += 1
    writer.commit()
    elapsed = time.perf_counter() - started
    writer.wait_merging_threads()
    index.reload()
    return count / elapsed, index


@dataclass
class Reference:
    """The raw tantivy index, searched as the ranking tests search their reference."""

    index: tantivy.Index

    def __post_init__(self) -> None:
        names = ("id", "title", "body", "module", "kind", "lines", "size")
        self.fields = IndexFields(self.index.schema, names, id_field="id")

    def top(self, query: str, count: int) -> list:
        parsed = self.index.parse_query(query, ["title", "body"])
        return top_hits(self.index.searcher(), self.fields, parsed, None, count)

    def scores(self, query: str, expected: list, ids: list[str]) -> dict[str, float]:
        """Each id's score for ``query`` in this index: those of ``expected`` (its top hits), and of
        ``ids`` beyond them from an explanation (an id that does not match is left out)."""
        scores = {hit.id: hit.score for hit in expected}
        searcher = self.index.searcher()
        parsed = self.index.parse_query(query, ["title", "body"])
        for doc_id in ids:
            if doc_id in scores:
                continue
            found = searcher.search(tantivy.Query.term_query(self.index.schema, self.fields.id_field, doc_id), 1).hits
            try:
                explained = json.loads(parsed.explain(searcher, found[0][1]).to_json()) if found else None
            except ValueError:  # tantivy: the document does not match
                explained = None
            if explained is not None:
                scores[doc_id] = explained["value"]
        return scores


# --- a Legion cluster -------------------------------------------------------------------------


def legion_command() -> list[str]:
    """The ``legion`` command of this environment (its console script, else ``python -m cli``)."""
    script = Path(sys.executable).with_name("legion")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


def cli_ingest(cluster: Path, corpus_path: Path, docs: int) -> float:
    """``legion search ingest`` as a subprocess; docs/s from its start to its exit."""
    argv = [*legion_command(), "search", "ingest", INDEX, str(corpus_path), "--cluster", str(cluster)]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or f"indexed {docs:,} documents" not in done.stdout:
        raise SystemExit(f"legion search ingest failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-2000:]}")
    return docs / elapsed


def ranking(search: SearchClient, reference: Reference, mode: str = RANKING_EXACT) -> tuple[float, float]:
    """Mean overlap@10 and top-1 agreement of the cluster's answers (ranked as ``mode`` asks) with the reference's."""
    overlaps, top1 = [], []
    for query in QUERIES:
        answer = search.search(INDEX, query, limit=K, snippets=False, ranking=mode)
        ids = [hit["id"] for hit in answer["hits"]]
        expected = reference.top(query, 20 * K)
        scores = reference.scores(query, expected, ids)
        overlaps.append(overlap_at_k(ids, [hit.id for hit in expected], K, scores))
        top1.append(top1_agrees(ids, expected, scores))
    return statistics.mean(overlaps), statistics.mean(top1)


def query_load(urls: list[str], token: str, clients: int, seconds: float, mode: str = RANKING_EXACT) -> dict[str, float]:
    """``clients`` threads searching for ``seconds`` (ranked as ``mode`` asks); p50/p99 latency (ms) and queries per second.

    Before the clock starts, every client runs each query once, all of them at the same time:
    each coordinator then knows every query, as in the recurring workload measured. That pass's
    p50/p99 (``first_p50_ms``, ``first_p99_ms``) are those of queries new to their coordinator."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    first_pass: list[list[float]] = [[] for _ in range(clients)]
    failures: list[BaseException] = []
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker(number: int) -> None:
        with Client([urls[number % len(urls)]], token) as client:
            search = SearchClient(client)
            for i in range(number, number + len(QUERIES)):
                began = time.perf_counter()
                search.search(INDEX, QUERIES[i % len(QUERIES)], limit=K, ranking=mode)
                first_pass[number].append(time.perf_counter() - began)
            start.wait()
            i = number
            while time.perf_counter() < stop_at[0]:
                began = time.perf_counter()
                try:
                    search.search(INDEX, QUERIES[i % len(QUERIES)], limit=K, ranking=mode)
                except Exception as exc:  # the bench reports failures instead of dying mid-run
                    failures.append(exc)
                latencies[number].append(time.perf_counter() - began)
                i += 1

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + 3600  # set for real once every client is connected
    start.wait(timeout=60)
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for thread in threads:
        thread.join(timeout=seconds + 60)
    elapsed = time.perf_counter() - began
    if failures:
        print(f"  warning: {len(failures)} queries failed, e.g. {failures[0]!r}", file=sys.stderr)
    every = sorted(x for per_client in latencies for x in per_client)
    first = sorted(x for per_client in first_pass for x in per_client)
    return {
        "p50_ms": 1000 * _percentile(every, 0.5),
        "p99_ms": 1000 * _percentile(every, 0.99),
        "qps": len(every) / elapsed,
        "first_p50_ms": 1000 * _percentile(first, 0.5),
        "first_p99_ms": 1000 * _percentile(first, 0.99),
    }


def _percentile(ascending: list[float], share: float) -> float:
    return ascending[min(len(ascending) - 1, int(len(ascending) * share))]


def legion_run(workdir: Path, replicas: int, corpus_path: Path, docs: int, reference: Reference, args: argparse.Namespace) -> dict[str, float]:
    """One fresh cluster: create, ingest through the CLI, check the ranking, then load it with queries."""
    directory = workdir / f"cluster-n{replicas}"
    shutil.rmtree(directory, ignore_errors=True)
    local_cluster.up(directory, nodes=NODES, partitions=PARTITIONS, replicas=replicas, base_port=0, timeout_s=CLUSTER_START_TIMEOUT_S)
    try:
        with Client.connect(directory) as client:
            SearchClient(client).create(INDEX, corpus.SCHEMA)
            rate = cli_ingest(directory, corpus_path, docs)
            total = SearchClient(client).search(INDEX, "*", limit=1, snippets=False)["total"]
            if total != docs:
                raise SystemExit(f"the cluster holds {total} documents after ingest, not {docs}")
            found: dict[str, float] = {"docs_per_s": rate}
            for mode in modes(args, replicas):
                found[f"{mode}:overlap"], found[f"{mode}:top1"] = ranking(SearchClient(client), reference, mode)
        urls = [node["url"] for node in local_cluster.load(directory)["nodes"]]
        token = (directory / "token").read_text().strip()
        for mode in modes(args, replicas):
            for key, value in query_load(urls, token, args.clients, args.query_seconds, mode).items():
                found[f"{mode}:{key}"] = value
    finally:
        local_cluster.down(directory)
        shutil.rmtree(directory, ignore_errors=True)
    return found


def modes(args: argparse.Namespace, replicas: int) -> list[str]:
    """The rankings measured at ``replicas``: with every partition on every node, one node holds each
    plan, and ranks exactly in one round whatever was asked, so only exact ranking is measured there."""
    return [mode for mode in args.rankings.split(",") if mode == RANKING_EXACT or replicas < NODES]


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=50_000, help="documents in the corpus (at most what the roots hold)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--query-seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=8, help="concurrent query clients")
    parser.add_argument("--replicas", default="1,3", help="replication factors to measure, comma-separated")
    parser.add_argument(
        "--rankings", default="exact,global_idf,local", help="search rankings to measure queries with, comma-separated"
    )
    args = parser.parse_args()
    replication = [int(n) for n in args.replicas.split(",") if n]

    workdir = Path(tempfile.mkdtemp(prefix="legion-bench-search-"))
    try:
        corpus_path = workdir / "corpus.jsonl"
        per_root = write_corpus(corpus_path, args.docs)
        docs = sum(per_root.values())
        sources = ", ".join(f"{label} {count:,}" for label, count in per_root.items())
        print(f"corpus: {docs:,} docs ({sources}), {corpus_path.stat().st_size / 1e6:.1f} MB of JSON lines", flush=True)
        results = run_all(workdir, corpus_path, docs, replication, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(results, docs, replication, args)


def run_all(workdir: Path, corpus_path: Path, docs: int, replication: list[int], args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {"raw": [], "raw1": [], **{f"n{r}": [] for r in replication}}
    reference: Reference | None = None
    for run in range(args.runs):
        rate, index = raw_tantivy(corpus_path, workdir / f"raw-{run}")
        one_thread, _ = raw_tantivy(corpus_path, workdir / f"raw1-{run}", threads=1)
        results["raw"].append({"docs_per_s": rate})
        results["raw1"].append({"docs_per_s": one_thread})
        reference = reference or Reference(index)
        load = os.getloadavg()[0]  # other work on the machine skews every figure: say how much there was
        line = f"run {run + 1}/{args.runs} (load {load:.1f}): raw tantivy {rate:,.0f} docs/s (1 thread {one_thread:,.0f})"
        for replicas in replication:
            found = legion_run(workdir, replicas, corpus_path, docs, reference, args)
            results[f"n{replicas}"].append(found)
            line += f" | N={replicas} {found['docs_per_s']:,.0f} docs/s ({found['docs_per_s'] / rate:.2f}x)"
            for mode in modes(args, replicas):
                line += (
                    f", {mode}: p50 {found[f'{mode}:p50_ms']:.1f} ms p99 {found[f'{mode}:p99_ms']:.1f} ms "
                    f"{found[f'{mode}:qps']:.0f} q/s (first pass p50 {found[f'{mode}:first_p50_ms']:.1f} "
                    f"p99 {found[f'{mode}:first_p99_ms']:.1f}), "
                    f"overlap {found[f'{mode}:overlap']:.4f} top-1 {found[f'{mode}:top1']:.4f}"
                )
        print(line, flush=True)
    return results


def print_table(results: dict[str, list[dict[str, float]]], docs: int, replication: list[int], args: argparse.Namespace) -> None:
    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    raw, raw1 = median("raw", "docs_per_s"), median("raw1", "docs_per_s")
    print(f"\nsearch: {docs:,} docs, {NODES} nodes, {PARTITIONS} partitions, {os.cpu_count()} cores; "
          f"median of {args.runs} runs")  # fmt: skip
    print(f"{'ingest':<32}{'docs/s':>10}{'ratio':>8}{'target':>8}{'vs 1 thread':>13}")
    print(f"{'raw tantivy, one process':<32}{raw:>10,.0f}{1.0:>8.2f}{'':>8}{raw / raw1:>13.2f}")
    print(f"{'raw tantivy, 1 indexing thread':<32}{raw1:>10,.0f}{raw1 / raw:>8.2f}{'':>8}{1.0:>13.2f}")
    for r in replication:
        rate = median(f"n{r}", "docs_per_s")
        target = f"{TARGET_RATIO[r]:.2f}" if r in TARGET_RATIO else ""
        print(f"{f'legion N={r}, CLI':<32}{rate:>10,.0f}{rate / raw:>8.2f}{target:>8}{rate / raw1:>13.2f}")
    print(f"\n{f'queries ({args.clients} clients, {args.query_seconds:.0f} s)':<32}"
          f"{'p50 ms':>8}{'p99 ms':>8}{'q/s':>7}{'overlap@10':>12}{'top-1':>7}")  # fmt: skip
    for r in replication:
        side = f"n{r}"
        for mode in modes(args, r):
            label = f"legion N={r}" + ("" if mode == RANKING_EXACT else f", ranking {mode}")
            print(f"{label:<32}{median(side, f'{mode}:p50_ms'):>8.1f}{median(side, f'{mode}:p99_ms'):>8.1f}"
                  f"{median(side, f'{mode}:qps'):>7.0f}{median(side, f'{mode}:overlap'):>12.4f}"
                  f"{median(side, f'{mode}:top1'):>7.4f}")  # fmt: skip
    print(f"{'target':<32}{TARGET_P50_MS:>8.0f}{TARGET_P99_MS:>8.0f}")
    print(f"\n{'first pass (queries new to a coordinator)':<44}{'p50 ms':>8}{'p99 ms':>8}")
    for r in replication:
        for mode in modes(args, r):
            label = f"legion N={r}" + ("" if mode == RANKING_EXACT else f", ranking {mode}")
            print(f"{label:<44}{median(f'n{r}', f'{mode}:first_p50_ms'):>8.1f}{median(f'n{r}', f'{mode}:first_p99_ms'):>8.1f}")


if __name__ == "__main__":
    main()
