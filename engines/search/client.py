"""The search engine's client: typed methods over ``legion.client.Client``.

No I/O of its own: every call goes through the wrapped ``Client`` (which
owns connections, the token, failover and typed errors). Bulk ingest sends
NDJSON batches; ``ingest`` runs several batches in flight, one ``Client``
per worker thread (a ``Client`` is not thread-safe), and reports progress
through a callback so that the CLI can draw a progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from engines.search.schema import check_index_name
from legion.errors import ConfigError

if TYPE_CHECKING:
    from legion.client import Client

NDJSON = "application/x-ndjson"
BATCH_DOCS_DEFAULT = 2_000
BATCH_BYTES_MAX = 4 * 1024 * 1024
IN_FLIGHT_DEFAULT = 3
# Bulk requests index thousands of documents; give them longer than a point request.
BULK_TIMEOUT_S = 120.0


@dataclass
class IngestReport:
    """What a whole ingest did: documents indexed and the per-document errors (line numbers are the file's)."""

    indexed: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    bytes_sent: int = 0


class SearchClient:
    """Create indexes, ingest and search documents through any node of a cluster."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # --- indexes ----------------------------------------------------------------

    def create(self, index: str, schema: dict[str, Any]) -> dict[str, Any]:
        """Create ``index`` with ``schema`` (see ``engines.search.schema``); idempotent for the same schema."""
        return self.client.request("PUT", _index_path(index), json=schema).json()

    def drop(self, index: str) -> dict[str, Any]:
        return self.client.request("DELETE", _index_path(index)).json()

    def list(self) -> list[dict[str, Any]]:
        return self.client.request("GET", "/v1/search").json()["indexes"]

    def stats(self, index: str) -> dict[str, Any]:
        return self.client.request("GET", _index_path(index) + "/_stats").json()

    def refresh(self, index: str) -> dict[str, Any]:
        """Make every document acknowledged so far searchable."""
        return self.client.request("POST", _index_path(index) + "/_refresh").json()

    # --- documents ----------------------------------------------------------------

    def put(self, index: str, doc: dict[str, Any], *, doc_id: str | None = None, refresh: bool = False) -> dict[str, Any]:
        """Index one document (its id from ``doc_id`` or the schema's id field)."""
        doc_id = doc_id if doc_id is not None else str(doc.get("id", ""))
        params = {"refresh": "wait_for"} if refresh else None
        return self.client.request("PUT", _doc_path(index, doc_id), json=doc, params=params).json()

    def get(self, index: str, doc_id: str) -> dict[str, Any]:
        return self.client.request("GET", _doc_path(index, doc_id)).json()

    def delete(self, index: str, doc_id: str, *, refresh: bool = False) -> dict[str, Any]:
        params = {"refresh": "wait_for"} if refresh else None
        return self.client.request("DELETE", _doc_path(index, doc_id), params=params).json()

    def bulk(self, index: str, ndjson: bytes, *, refresh: bool = False) -> dict[str, Any]:
        """One bulk request: ``ndjson`` is one JSON document per line."""
        params = {"refresh": "wait_for"} if refresh else None
        return self.client.request(
            "POST", _index_path(index) + "/docs", body=ndjson, params=params, headers={"Content-Type": NDJSON}
        ).json()

    def ingest(
        self,
        index: str,
        lines: Iterable[bytes],
        *,
        batch_docs: int = BATCH_DOCS_DEFAULT,
        in_flight: int = IN_FLIGHT_DEFAULT,
        progress: Callable[[int, int], None] | None = None,
    ) -> IngestReport:
        """Send NDJSON ``lines`` in batches, ``in_flight`` at a time, then refresh: when this
        returns, every document it indexed is searchable.

        ``progress(docs, bytes)`` is called after every batch with what it sent."""
        if batch_docs < 1 or in_flight < 1:
            raise ConfigError("batch_docs and in_flight must be at least 1")
        report = IngestReport()

        def send(client: Client, batch: _Batch) -> tuple[_Batch, dict[str, Any]]:
            return batch, SearchClient(client).bulk(index, batch.body)

        for batch, answer in self.client.pipelined(
            _batches(lines, batch_docs), send, in_flight=in_flight, timeout_s=BULK_TIMEOUT_S, thread_name="legion-ingest"
        ):
            _collect(batch, answer, report, progress)
        # All batches are acknowledged: one refresh makes all of them searchable.
        self.refresh(index)
        return report

    # --- search ----------------------------------------------------------------

    def search(
        self,
        index: str,
        q: str,
        *,
        limit: int = 10,
        offset: int = 0,
        fields: list[str] | None = None,
        snippets: bool = True,
        aggs: dict[str, Any] | None = None,
        ranking: str | None = None,
    ) -> dict[str, Any]:
        """Search ``index``; ``{"hits": [{"id", "score", "doc", "snippets"}], "total", "took_ms", "partitions_missing", "ranking"}``.

        ``ranking``: ``exact`` (the default: as one index would rank), ``global_idf`` or ``local`` (faster, less exact)."""
        body: dict[str, Any] = {"q": q, "limit": limit, "offset": offset, "snippets": snippets}
        if fields is not None:
            body["fields"] = fields
        if ranking is not None:
            body["ranking"] = ranking
        if aggs:
            body["aggs"] = aggs
        return self.client.request("POST", _index_path(index) + "/_search", json=body).json()


@dataclass(frozen=True, slots=True)
class _Batch:
    body: bytes
    docs: int
    first_line: int  # the file's line number of the batch's first line, to report errors by file line


def _batches(lines: Iterable[bytes], batch_docs: int) -> Iterator[_Batch]:
    chunk: list[bytes] = []
    size, first = 0, 1
    number = 0
    for number, line in enumerate(lines, start=1):
        if not chunk:
            first = number
        chunk.append(line if line.endswith(b"\n") else line + b"\n")
        size += len(line)
        if len(chunk) >= batch_docs or size >= BATCH_BYTES_MAX:
            yield _Batch(b"".join(chunk), len(chunk), first)
            chunk, size = [], 0
    if chunk:
        yield _Batch(b"".join(chunk), len(chunk), first)


def _collect(batch: _Batch, answer: dict[str, Any], report: IngestReport, progress: Callable[[int, int], None] | None) -> None:
    report.indexed += int(answer.get("indexed", 0))
    report.failed += int(answer.get("failed", 0))
    report.bytes_sent += len(batch.body)
    for error in answer.get("errors", ()):
        report.errors.append({**error, "line": batch.first_line + int(error["line"]) - 1})
    if progress is not None:
        progress(batch.docs, len(batch.body))


def _index_path(index: str) -> str:
    return "/v1/search/" + check_index_name(index)


def _doc_path(index: str, doc_id: str) -> str:
    if not doc_id:
        raise ConfigError("a document id must not be empty")
    return _index_path(index) + "/docs/" + quote(doc_id, safe="")


__all__ = ["IngestReport", "SearchClient"]
