"""Idempotency keys: a retried write is the same operation everywhere.

Pure (a context variable, no I/O). A write that timed out or failed with
503 may still have been stored; its retry gets a new timestamp, so an engine
that is not last-writer-wins (a counter) would count it twice. A client that
names each write with an ``Idempotency-Key`` header — ``legion.Client`` does,
on every write — makes the retry *the same operation*:

- the core derives the operation's ``origin`` from the key, the engine, the
  operation's key and its occurrence in the request (the n-th operation on
  that key the handler writes while serving it): ``key:`` and 32 hex digits.
  ``Operation.id`` of such an operation is that origin alone, so the first
  attempt and every retry share one id, on every coordinator;
- the timestamp is *not* derived from the key: each attempt is stamped by
  the node that coordinates it, so two attempts may carry different
  ``hlc``s. Ordering stays causal (a retry is newer than what its
  coordinator has seen), and an engine that keeps one entry per id
  (insert-once) applies the write once, whichever attempt reaches a replica
  first. We chose this over a cluster-wide table of recently seen keys:
  nothing to expire, no extra round trip, and nothing lost when the node
  that saw the first attempt dies — the retry goes to another node.

The key of the request being served travels in ``IDEMPOTENCY_CONTEXT``
(the runtime sets it from the header around an engine's handler), so a
handler's ``cluster.write`` and ``cluster.write_many`` use it with no change
to the handler. A ``WriteItem`` may name its own ``idempotency_key`` instead.
Retrying must repeat the request: the same key with another body is the
caller's bug, and replicas then keep whichever attempt reached them first.
"""

from __future__ import annotations

import contextvars
import hashlib
import re

from legion.errors import BadRequest
from legion.replication import IDEMPOTENT_ORIGIN_PREFIX

IDEMPOTENCY_HEADER = "Idempotency-Key"
KEY_CHARS_MAX = 255
KEY_PATTERN = re.compile(rf"^[\x21-\x7e]{{1,{KEY_CHARS_MAX}}}$")
ORIGIN_DIGEST_BYTES = 16


def check_key(raw: object) -> str:
    """An idempotency key as given, if it is 1-255 printable ASCII characters without spaces; else BadRequest."""
    if not isinstance(raw, str) or not KEY_PATTERN.match(raw):
        raise BadRequest(
            f"an idempotency key must be 1-{KEY_CHARS_MAX} printable ASCII characters without spaces "
            f"(a UUID is a good one); got {raw!r}"[:400]
        )
    return raw


def origin_of(idempotency_key: str, engine: str, key: bytes, occurrence: int = 0) -> str:
    """The origin every attempt of one keyed write gets: a function of the key and what it writes."""
    digest = hashlib.blake2b(digest_size=ORIGIN_DIGEST_BYTES)
    for part in (idempotency_key.encode(), engine.encode(), key, str(occurrence).encode()):
        digest.update(len(part).to_bytes(4, "big") + part)  # length-prefixed: no two tuples hash alike by concatenation
    return IDEMPOTENT_ORIGIN_PREFIX + digest.hexdigest()


class RequestKey:
    """The idempotency key of one request, counting the operations written under it per (engine, key)."""

    def __init__(self, idempotency_key: str) -> None:
        self.key = check_key(idempotency_key)
        self._written: dict[tuple[str, bytes], int] = {}

    def next_origin(self, engine: str, key: bytes) -> str:
        occurrence = self._written.get((engine, key), 0)
        self._written[(engine, key)] = occurrence + 1
        return origin_of(self.key, engine, key, occurrence)


# Set by the runtime while an engine handler serves a request that carries the header.
IDEMPOTENCY_CONTEXT: contextvars.ContextVar[RequestKey | None] = contextvars.ContextVar(
    "legion_idempotency_key", default=None
)


def origin_for(engine: str, key: bytes, explicit: str | None = None) -> str | None:
    """The origin of a keyed write (``explicit``, else the request's key), or None for an ordinary one."""
    if explicit is not None:
        return origin_of(check_key(explicit), engine, key)
    request = IDEMPOTENCY_CONTEXT.get()
    return request.next_origin(engine, key) if request is not None else None
