"""The key/value engine's client: typed methods over ``legion.client.Client``.

No I/O of its own: every call goes through the wrapped ``Client``, which owns
the connection, the cluster token and the mapping of HTTP errors back to
``LegionError``s (a missing key raises ``NotFound``). Keys and values are
checked here with the same rules the server applies, so a bad one fails
before it crosses the network.

Bulk puts (``put_many``, ``import_ndjson``) split their items into requests
of at most ``BULK_REQUEST_ITEMS`` items and ``REQUEST_BODY_BYTES_MAX`` bytes,
so any number of items can be sent, each request answering well within the
client's timeout; results carry the item's position (or line) in the whole
input, not in one request. Items go to the server unchecked: it refuses bad
ones one by one, and the results say which and why.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

import msgpack

from engines.kv import entries
from legion.errors import LegionError, PayloadTooLarge
from legion.limits import REQUEST_BODY_BYTES_MAX

if TYPE_CHECKING:
    from legion.client import Client

TEXT_CONTENT_TYPE = entries.TEXT_CONTENT_TYPE
# Items per bulk request: large enough that per-request costs vanish, small
# enough that a request answers in well under a second.
BULK_REQUEST_ITEMS = 10_000
# Room left in a request body for the msgpack list header.
BULK_BODY_BYTES_MAX = REQUEST_BODY_BYTES_MAX - 16


@dataclass(frozen=True, slots=True)
class KVValue:
    """A value read from the store, with its content type and the version that wrote it."""

    value: bytes
    content_type: str
    hlc: int

    @property
    def text(self) -> str:
        """The value decoded as UTF-8 (raises UnicodeDecodeError for binary values)."""
        return self.value.decode("utf-8")


@dataclass(frozen=True, slots=True)
class KeyListing:
    """One page of keys: ``truncated`` if more follow (ask again with ``after=keys[-1]``);
    ``partitions_missing`` lists partitions no replica answered for (only with ``allow_partial``)."""

    keys: list[str]
    truncated: bool
    partitions_missing: list[int]


@dataclass
class ImportReport:
    """What a bulk import did: how many items were written, and each failure with its line."""

    written: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)


class KVClient:
    """Put, get and delete keys through any node of a cluster.

    ``w`` / ``r``: how many replicas must acknowledge a write / answer a read
    (defaults: ``legion.replication.write_quorum`` / ``read_quorum``). With
    ``r + w`` greater than the replica count, a read sees every earlier
    acknowledged write even while a replica lags.
    """

    def __init__(self, client: Client) -> None:
        self.client = client

    def put(
        self, key: str, value: bytes | str, *, content_type: str | None = None, w: int | None = None
    ) -> dict[str, Any]:
        """Store ``value`` under ``key``; a str is sent as UTF-8 text. Returns ``{key, partition, hlc, acks}``."""
        if isinstance(value, str):
            value = value.encode("utf-8")
            content_type = content_type or TEXT_CONTENT_TYPE
        entries.check_value(value)
        headers = {"Content-Type": entries.check_content_type(content_type)}
        response = self.client.request("PUT", _path(key), body=value, params=_params(w=w), headers=headers)
        return response.json()

    def get(self, key: str, *, r: int | None = None) -> KVValue:
        """The newest value of ``key`` among ``r`` replicas; NotFound if it is missing or deleted."""
        response = self.client.request("GET", _path(key), params=_params(r=r))
        # Response.headers looks names up case-insensitively, as HTTP requires.
        content_type = response.headers.get("Content-Type") or entries.CONTENT_TYPE_DEFAULT
        hlc = response.headers.get("X-Legion-HLC")
        if hlc is None:
            raise LegionError("the server's kv reply has no X-Legion-HLC header")
        return KVValue(value=response.body, content_type=content_type, hlc=int(hlc))

    def delete(self, key: str, *, w: int | None = None) -> dict[str, Any]:
        """Delete ``key`` (writes a tombstone). Returns ``{key, deleted, hlc, acks}``."""
        response = self.client.request("DELETE", _path(key), params=_params(w=w))
        return response.json()

    def put_many(
        self,
        items: Iterable[Mapping[str, Any]],
        *,
        w: int | None = None,
        refresh: bool = False,
        request_items: int = BULK_REQUEST_ITEMS,
    ) -> list[dict[str, Any]]:
        """Store many ``{"key", "value", "content_type"?}`` items (a value may be str or bytes).

        One result per item, in order: ``{line, partition, hlc, acks}`` or
        ``{line, error, message}``, ``line`` being the item's 1-based position."""
        results: list[dict[str, Any]] = []
        packed = (msgpack.packb(dict(item), use_bin_type=True) for item in items)
        for first, body_items in _batches(packed, request_items):
            if isinstance(body_items, PayloadTooLarge):
                results.append(_local_failure(first, body_items))
                continue
            body = _msgpack_array_header(len(body_items)) + b"".join(body_items)
            reply = self._bulk(body, entries.MSGPACK_CONTENT_TYPE, w=w, refresh=refresh)
            results.extend(_offset(result, first - 1) for result in reply["results"])
        return results

    def import_ndjson(
        self,
        source: BinaryIO | Iterable[bytes],
        *,
        w: int | None = None,
        refresh: bool = False,
        request_items: int = BULK_REQUEST_ITEMS,
    ) -> ImportReport:
        """Store every NDJSON line ``{"key", "value", "content_type"?}`` of ``source`` (a binary file).

        A bad line fails alone; the report names it by its line number in ``source``."""
        report = ImportReport()
        lines = (line.rstrip(b"\r\n") for line in source)
        for first, body_lines in _batches(lines, request_items):
            if isinstance(body_lines, PayloadTooLarge):
                report.failures.append(_local_failure(first, body_lines))
                continue
            if not any(line.strip() for line in body_lines):
                continue  # blank lines only: nothing to send
            reply = self._bulk(b"\n".join(body_lines), "application/x-ndjson", w=w, refresh=refresh)
            report.written += reply["written"]
            report.failures.extend(_offset(r, first - 1) for r in reply["results"] if "error" in r)
        return report

    def list_keys(
        self, prefix: str = "", *, limit: int | None = None, after: str | None = None, allow_partial: bool = False
    ) -> KeyListing:
        """One page of live keys starting with ``prefix``, in key order, after ``after``."""
        params: dict[str, str | int] = {"prefix": prefix, **_params(limit=limit)}
        if after is not None:
            params["after"] = after
        if allow_partial:
            params["allow_partial"] = 1
        document = self.client.request("GET", "/v1/kv", params=params).json()
        return KeyListing(document["keys"], document["truncated"], document["partitions_missing"])

    def _bulk(self, body: bytes, content_type: str, *, w: int | None, refresh: bool) -> dict[str, Any]:
        params: dict[str, str | int] = {**_params(w=w)}
        if refresh:
            params["refresh"] = 1
        return self.client.request(
            "POST", "/v1/kv", body=body, params=params or None, headers={"Content-Type": content_type}
        ).json()


def _batches(pieces: Iterable[bytes], items_max: int) -> Iterator[tuple[int, list[bytes] | PayloadTooLarge]]:
    """Consecutive runs of encoded items for one request each, with the 1-based position of the first.

    An item too large for any request comes alone, as the error it fails with."""
    batch: list[bytes] = []
    first, size = 1, 0
    for position, piece in enumerate(pieces, start=1):
        if len(piece) + 1 > BULK_BODY_BYTES_MAX:
            if batch:
                yield first, batch
            yield position, PayloadTooLarge(f"item is {len(piece)} bytes; a request body holds {BULK_BODY_BYTES_MAX}")
            batch, first, size = [], position + 1, 0
            continue
        if batch and (len(batch) >= items_max or size + len(piece) + 1 > BULK_BODY_BYTES_MAX):
            yield first, batch
            batch, first, size = [], position, 0
        batch.append(piece)
        size += len(piece) + 1  # + the newline or framing between items
    if batch:
        yield first, batch


def _msgpack_array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _offset(result: dict[str, Any], before: int) -> dict[str, Any]:
    """A result of one request renumbered as a line of the whole input."""
    line = result["line"] + before
    if "error" in result:
        message = result["message"].replace(f"line {result['line']}:", f"line {line}:", 1)
        return {**result, "line": line, "message": message}
    return {**result, "line": line}


def _local_failure(line: int, error: LegionError) -> dict[str, Any]:
    return {"line": line, "error": error.code, "message": f"line {line}: {error.message}"}


def _path(key: str) -> str:
    entries.parse_key(key)  # the server's rules, checked before sending
    return "/v1/kv/" + quote(key, safe="")


def _params(**values: int | None) -> dict[str, int]:
    return {name: value for name, value in values.items() if value is not None}
