"""The keyspace: which partition a key belongs to.

Pure. ``partition_of`` is a stable hash (BLAKE2b of the key's bytes, first 8
bytes big-endian) modulo the partition count, so every process and every
Python version agrees — never the built-in ``hash()``, which is salted per
process.
"""

from __future__ import annotations

import hashlib

from legion.errors import BadRequest
from legion.limits import KEY_BYTES_MAX, PARTITIONS_MAX


def check_partition_count(partitions: int) -> int:
    """Return ``partitions`` if it is a power of two in range, else raise BadRequest."""
    if (
        not isinstance(partitions, int)
        or partitions < 1
        or partitions > PARTITIONS_MAX
        or partitions & (partitions - 1)
    ):
        raise BadRequest(
            f"partition count must be a power of two between 1 and {PARTITIONS_MAX}, got {partitions!r}"
        )
    return partitions


def key_bytes(key: str | bytes) -> bytes:
    """The bytes a key hashes as; raise BadRequest for empty or oversized keys."""
    try:
        raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    except UnicodeEncodeError:
        raise BadRequest("key is not valid UTF-8 text") from None
    if not raw:
        raise BadRequest("key must not be empty")
    if len(raw) > KEY_BYTES_MAX:
        raise BadRequest(f"key is {len(raw)} bytes; the limit is {KEY_BYTES_MAX}")
    return raw


def partition_of(key: str | bytes, partitions: int) -> int:
    """The partition (0 .. partitions-1) that owns ``key``."""
    if type(key) is not bytes or not 0 < len(key) <= KEY_BYTES_MAX:  # the common case needs no conversion
        key = key_bytes(key)
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") & (partitions - 1)
