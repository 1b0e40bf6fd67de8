"""The key/value engine's client: typed methods over ``legion.client.Client``.

No I/O of its own: every call goes through the wrapped ``Client``, which owns
the connection, the cluster token and the mapping of HTTP errors back to
``LegionError``s (a missing key raises ``NotFound``). Keys and values are
checked here with the same rules the server applies, so a bad one fails
before it crosses the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from engines.kv import entries
from legion.errors import LegionError

if TYPE_CHECKING:
    from legion.client import Client

TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"


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


def _path(key: str) -> str:
    entries.parse_key(key)  # the server's rules, checked before sending
    return "/v1/kv/" + quote(key, safe="")


def _params(**values: int | None) -> dict[str, int] | None:
    present = {name: value for name, value in values.items() if value is not None}
    return present or None
