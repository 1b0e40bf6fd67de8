"""Batch writes: which items may go, how their operations are cut into chunks, when each is decided.

Pure: no sockets, no event loop, no clock. ``legion.runtime.batch_writer``
carries these decisions out for ``Cluster.write_many``:

1. ``check_item`` refuses, item by item, what cannot be sent at all — a bad
   key, an empty kind, a body over ``OP_BODY_BYTES_MAX``, a malformed
   idempotency key — so one bad item
   fails alone instead of failing the batch.
2. Each replica node's share of the batch is sent in chunks: ``chunk_ranges``
   cuts it into consecutive runs bounded both by a count of operations and by
   their encoded size (``op_wire_bytes`` is an upper bound of one operation's
   msgpack size), so a batch of large values becomes more requests rather
   than one request the peer refuses as too large.
3. An ``ItemTally`` per item counts the acknowledgements and failures of the
   replicas that count towards its quorum and says when the item is decided:
   as soon as ``need`` replicas acknowledged it (or, when the write waits for
   every replica, once none is still pending), or as soon as too few remain
   to reach ``need``. ``BatchTally`` keeps every item's tally and how many are
   still undecided.
"""

from __future__ import annotations

from collections.abc import Sequence

from legion.engine import WriteItem, WriteResult
from legion.errors import BadRequest, DeadlineExceeded, LegionError, NotOwner, Overloaded, PayloadTooLarge, Unavailable
from legion.idempotency import check_key
from legion.keyspace import key_bytes
from legion.limits import OP_BODY_BYTES_MAX
from legion.replication import Operation

# msgpack framing of one encoded operation (a 7-element list: a fixarray
# header, two 64-bit integers, and str/bin headers for the five other fields)
# is at most 1 + 2*9 + 5*5 = 44 bytes; and of the list holding a chunk, 5.
OP_FRAMING_BYTES_MAX = 44
LIST_HEADER_BYTES_MAX = 5


def check_item(item: WriteItem) -> bytes:
    """The item's key bytes if it may be written; else the ``LegionError`` it fails with."""
    key = key_bytes(item.key)
    if not isinstance(item.kind, str) or not item.kind:
        raise BadRequest("an operation's kind must be a non-empty string")
    if not isinstance(item.body, bytes):
        raise BadRequest("an operation's body must be bytes")
    if len(item.body) > OP_BODY_BYTES_MAX:
        raise PayloadTooLarge(f"operation body is {len(item.body)} bytes; the limit is {OP_BODY_BYTES_MAX}")
    if item.idempotency_key is not None:
        check_key(item.idempotency_key)
    return key


def op_wire_bytes(op: Operation) -> int:
    """An upper bound of the bytes ``op`` takes in a msgpack-encoded batch (``encode_ops``)."""
    text = len(op.engine.encode()) + len(op.origin.encode()) + len(op.kind.encode())
    return OP_FRAMING_BYTES_MAX + text + len(op.key) + len(op.body)


def chunk_ranges(sizes: Sequence[int], *, ops_max: int, bytes_max: int) -> list[range]:
    """Cut operations of the given encoded sizes into consecutive chunks, in order.

    Each chunk holds at most ``ops_max`` operations and, list framing
    included, at most ``bytes_max`` bytes. Every operation must fit in a
    chunk alone (``check_item`` and the limits guarantee it)."""
    assert ops_max >= 1
    chunks: list[range] = []
    start, total = 0, LIST_HEADER_BYTES_MAX
    for i, size in enumerate(sizes):
        assert LIST_HEADER_BYTES_MAX + size <= bytes_max, f"an operation of {size} bytes fits no chunk"
        if i - start >= ops_max or total + size > bytes_max:
            chunks.append(range(start, i))
            start, total = i, LIST_HEADER_BYTES_MAX
        total += size
    if start < len(sizes):
        chunks.append(range(start, len(sizes)))
    return chunks


def is_owner_failure(error: LegionError) -> bool:
    """True if a send to an owner failed for the owner's sake (down, slow, overloaded, broken): worth a hint.

    Not a refusal of the operation, nor a disagreement about who owns it."""
    return isinstance(error, (Unavailable, DeadlineExceeded, Overloaded)) or error.http_status >= 500


def owner_missed(error: LegionError, epoch: int) -> bool:
    """True if an owner did not take a write it should hold, so it gets the write later as a hint:
    it failed for its own sake (``is_owner_failure``), or it refused as holding no replica because
    it has not yet heard of ``epoch``, the coordinator's state (a node gaining the partition that has
    not yet learned of the move: it copies the partition from a replica that may log this write only
    after the copy, and nothing else would bring it)."""
    if is_owner_failure(error):
        return True
    seen = error.details.get("epoch")
    return isinstance(error, NotOwner) and isinstance(seen, int) and seen < epoch


def is_refusal(error: LegionError) -> bool:
    """True if ``error`` says the operation itself is bad (every replica would refuse it)."""
    return isinstance(error, (BadRequest, PayloadTooLarge))


class ItemTally:
    """One item's replies from the replicas that count towards its quorum.

    Kept small (a batch has up to ``WRITE_MANY_ITEMS_MAX`` of them): the
    replicas still pending are a bit mask over ``counted``, a tuple shared by
    every item of the partition, and failures are listed only once one happens."""

    __slots__ = ("partition", "hlc", "counted", "need", "replicas", "wait_all", "acks", "pending", "failures", "result")

    def __init__(
        self, partition: int, hlc: int, counted: tuple[str, ...], need: int, replicas: int, *, wait_all: bool = False
    ) -> None:
        assert len(counted) >= need >= 1, "items without enough live replicas are refused before they are sent"
        self.partition = partition
        self.hlc = hlc
        self.counted = counted
        self.need = need
        self.replicas = replicas
        self.wait_all = wait_all
        self.acks = 0
        self.pending = (1 << len(counted)) - 1
        self.failures: list[tuple[str, LegionError]] | None = None
        self.result: WriteResult | LegionError | None = None

    def ack(self, node: str) -> bool:
        """``node`` made the operation durable; True if that decided the item."""
        if not self._answered(node):
            return False  # a replica outside the quorum (a gaining node), or a repeat
        self.acks += 1
        return self._settle()

    def fail(self, node: str, error: LegionError) -> bool:
        """``node`` did not take the operation; True if that decided the item."""
        if not self._answered(node):
            return False
        if self.failures is None:
            self.failures = []
        self.failures.append((node, error))
        return self._settle()

    def _answered(self, node: str) -> bool:
        """Clear ``node``'s pending bit; False if it was not pending."""
        try:
            bit = 1 << self.counted.index(node)
        except ValueError:
            return False
        if not self.pending & bit:
            return False
        self.pending &= ~bit
        return True

    def _settle(self) -> bool:
        if self.result is not None:
            return False  # decided earlier; later replies only finish in the background
        if self.acks + self.pending.bit_count() < self.need:
            self.result = self._error()
            return True
        if self.acks >= self.need and not (self.wait_all and self.pending):
            self.result = WriteResult(partition=self.partition, hlc=self.hlc, acks=self.acks, replicas=self.replicas)
            return True
        return False

    def _error(self) -> LegionError:
        failures = self.failures or []
        refusal = next((error for _, error in failures if is_refusal(error)), None)
        if refusal is not None:
            return refusal
        detail = "; ".join(f"{node}: {error}" for node, error in failures)
        return Unavailable(
            f"partition {self.partition}: only {self.acks} of {self.need} required replicas acknowledged "
            f"the write ({detail})",
            partition=self.partition,
        )


class BatchTally:
    """Every item's outcome: refused up front, tallied while replicas answer, or decided."""

    def __init__(self, count: int) -> None:
        self.items: list[ItemTally | None] = [None] * count
        self.refused: dict[int, LegionError] = {}
        self.undecided = 0

    def refuse(self, index: int, error: LegionError) -> None:
        self.refused[index] = error

    def track(self, index: int, tally: ItemTally) -> None:
        self.items[index] = tally
        self.undecided += 1

    def ack(self, index: int, node: str) -> None:
        tally = self.items[index]
        if tally is not None and tally.ack(node):
            self.undecided -= 1

    def ack_all(self, indexes: Sequence[int], node: str) -> None:
        """``ack(index, node)`` for each of ``indexes`` (a chunk that went through whole)."""
        items, decided = self.items, 0
        for index in indexes:
            tally = items[index]
            if tally is not None and tally.ack(node):
                decided += 1
        self.undecided -= decided

    def fail(self, index: int, node: str, error: LegionError) -> None:
        tally = self.items[index]
        if tally is not None and tally.fail(node, error):
            self.undecided -= 1

    def results(self) -> list[WriteResult | LegionError]:
        """One entry per item, in order; only once every item is decided."""
        assert self.undecided == 0, "results() before every item was decided"
        out: list[WriteResult | LegionError] = []
        for index, tally in enumerate(self.items):
            if tally is None:
                out.append(self.refused[index])
            else:
                assert tally.result is not None
                out.append(tally.result)
        return out
