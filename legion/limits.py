"""Every bound Legion runs under, in one place, with units last.

Pure. The relations between the limits are asserted at import so that a bad
edit fails loudly at start-up rather than as a hang under load.
"""

from __future__ import annotations

PARTITIONS_DEFAULT = 64
PARTITIONS_MAX = 4096
REPLICAS_DEFAULT = 3
REPLICAS_MAX = 7

KEY_BYTES_MAX = 1024
VALUE_BYTES_MAX = 4 * 1024 * 1024
REQUEST_BODY_BYTES_MAX = 8 * 1024 * 1024
PEER_BODY_BYTES_MAX = 64 * 1024 * 1024
# A streamed request body (an engine route with stream_body, e.g. a bulk upload).
STREAM_BODY_BYTES_MAX = 1024 * 1024 * 1024
NODE_ID_CHARS_MAX = 64

REQUEST_DEADLINE_MS = 5_000
PEER_CONNECT_TIMEOUT_MS = 1_000
FORWARD_ATTEMPTS_MAX = 3

HEARTBEAT_INTERVAL_MS = 500
# A member silent for this long is marked down by the claimant.
FAILURE_TIMEOUT_MS = 3_000
GOSSIP_INTERVAL_MS = 500
GOSSIP_FANOUT = 2

HANDOFF_BATCH_OPS_MAX = 2_000
# A fold batch is also cut by size: an engine's operations may be megabytes each
# (map/reduce batches), and the receiver buffers one batch (at most PEER_BODY_BYTES_MAX).
HANDOFF_BATCH_BYTES_MAX = 16 * 1024 * 1024
HANDOFF_RETRY_INTERVAL_MS = 500
# A node pulls this many partitions at once (handoff and re-sync). Each pull holds at most one
# fold batch (HANDOFF_BATCH_BYTES_MAX) and reads no more until its log writer took it, and the
# source's producer waits on a short queue: memory stays bounded by bytes, and TCP carries the
# backpressure to the source. A snapshot's files stream to disk.
HANDOFF_PULLS_MAX = 3

WRITE_QUEUE_OPS_MAX = 10_000

# Hinted handoff (``legion.hints``): a node keeps at most this many hints
# (rows and bytes of bodies) for owners that are down; beyond that it records
# the partition as lost for the owner, which then re-copies it whole. Hints
# waiting for the store's next group commit are bounded like a write queue.
# The replay loop runs this often (and at once after a round that hit its
# budget), sending at most this many hints per round.
HINTS_OPS_MAX = 1_000_000
HINTS_BYTES_MAX = 1024 * 1024 * 1024
HINT_QUEUE_OPS_MAX = WRITE_QUEUE_OPS_MAX
HINT_REPLAY_INTERVAL_MS = 500
HINT_REPLAY_OPS_PER_ROUND_MAX = 20_000
WRITE_BATCH_OPS_MAX = 1_000

# Batch writes (Cluster.write_many): one operation's body, one chunk of
# operations sent to one replica node, and how many chunks travel to one
# node at once. A chunk is bounded by count and bytes, so a batch of large
# values splits into more chunks instead of drawing a 413 for all of them.
OP_BODY_BYTES_MAX = VALUE_BYTES_MAX + 64 * 1024
PEER_BATCH_OPS_MAX = 1_000
PEER_BATCH_BYTES_MAX = 8 * 1024 * 1024
PEER_CHUNKS_IN_FLIGHT_MAX = 4
WRITE_MANY_ITEMS_MAX = 100_000

# Engine checkpoints (engines that defer durability to flush): the writer
# flushes at least this often while there is something to flush, and as soon
# as this many operations are waiting for a flush.
FLUSH_INTERVAL_MS = 1_000
FLUSH_OPS_MAX = 20_000
# After an engine's apply or flush raises, the writer re-applies the
# partition's log from its checkpoint: first this long after the failure,
# then doubling up to the max, until it succeeds (the operations are logged;
# giving up would lose them).
REAPPLY_BACKOFF_MS_MIN = FLUSH_INTERVAL_MS
REAPPLY_BACKOFF_MS_MAX = 30_000
# Compaction deletes logged operations at or below their partition's
# checkpoint: at most this many rows per pass (one transaction of the writer
# thread, about 10 ms), a pass at most this often while any are waiting, and at
# once when a full pass is waiting.
COMPACT_INTERVAL_MS = 1_000
COMPACT_BATCH_OPS_MAX = 10_000

# The claimant may drift from another node's wall clock by this much before
# the hybrid logical clock refuses a remote timestamp as absurd.
CLOCK_DRIFT_MS_MAX = 60_000

# Member attributes: small strings a node publishes through gossip (e.g. the
# address of the Dask worker beside it). Ephemeral, per node, all engines together.
ATTRIBUTE_KEYS_MAX = 16
ATTRIBUTE_KEY_CHARS_MAX = 64
ATTRIBUTE_VALUE_CHARS_MAX = 256
# Node options (``--option KEY=VALUE``), handed to every engine's ``start``.
NODE_OPTIONS_MAX = 64
NODE_OPTION_KEY_CHARS_MAX = 64
NODE_OPTION_VALUE_CHARS_MAX = 1024

# Engine services: ``Engine.start`` must return within this (it starts sidecars,
# it does not wait for them); ``Engine.stop`` is abandoned after this.
ENGINE_START_TIMEOUT_MS = 30_000
ENGINE_STOP_TIMEOUT_MS = 20_000
# A sidecar that exits unexpectedly is restarted after a backoff that doubles
# from the min to the max, and resets once a run lasted SIDECAR_STABLE_MS.
# Stopping one sends SIGTERM, then SIGKILL after SIGTERM's timeout.
SIDECAR_RESTART_BACKOFF_MS_MIN = 250
SIDECAR_RESTART_BACKOFF_MS_MAX = 10_000
SIDECAR_STABLE_MS = 10_000
SIDECAR_TERM_TIMEOUT_MS = 5_000
SIDECAR_KILL_TIMEOUT_MS = 5_000

assert PARTITIONS_DEFAULT & (PARTITIONS_DEFAULT - 1) == 0
assert PARTITIONS_MAX & (PARTITIONS_MAX - 1) == 0
assert 1 <= REPLICAS_DEFAULT <= REPLICAS_MAX
assert KEY_BYTES_MAX + VALUE_BYTES_MAX < REQUEST_BODY_BYTES_MAX <= PEER_BODY_BYTES_MAX <= STREAM_BODY_BYTES_MAX
assert HEARTBEAT_INTERVAL_MS * 3 <= FAILURE_TIMEOUT_MS
assert PEER_CONNECT_TIMEOUT_MS < REQUEST_DEADLINE_MS
assert WRITE_BATCH_OPS_MAX <= WRITE_QUEUE_OPS_MAX
assert HINT_QUEUE_OPS_MAX <= HINTS_OPS_MAX
assert 0 < HINT_REPLAY_INTERVAL_MS <= REQUEST_DEADLINE_MS
assert KEY_BYTES_MAX + OP_BODY_BYTES_MAX < PEER_BATCH_BYTES_MAX <= PEER_BODY_BYTES_MAX
assert PEER_BATCH_OPS_MAX <= WRITE_QUEUE_OPS_MAX
assert KEY_BYTES_MAX + OP_BODY_BYTES_MAX < HANDOFF_BATCH_BYTES_MAX < PEER_BODY_BYTES_MAX
assert 0 < FLUSH_INTERVAL_MS < REQUEST_DEADLINE_MS
assert 0 < REAPPLY_BACKOFF_MS_MIN <= REAPPLY_BACKOFF_MS_MAX
# A pass deletes at least what one group commit logs, so compaction keeps up with the write path.
assert WRITE_BATCH_OPS_MAX <= COMPACT_BATCH_OPS_MAX
assert 0 < COMPACT_INTERVAL_MS
# Worst case of one node's attributes in a gossip message (JSON may escape a
# character as six), times a thousand members, still fits a peer body.
assert ATTRIBUTE_KEYS_MAX * (ATTRIBUTE_KEY_CHARS_MAX + ATTRIBUTE_VALUE_CHARS_MAX) * 6 * 1024 < PEER_BODY_BYTES_MAX
assert 0 < SIDECAR_RESTART_BACKOFF_MS_MIN <= SIDECAR_RESTART_BACKOFF_MS_MAX <= SIDECAR_STABLE_MS
# Engine.stop stops its sidecars, each within SIGTERM's and SIGKILL's timeouts.
assert SIDECAR_TERM_TIMEOUT_MS + SIDECAR_KILL_TIMEOUT_MS < ENGINE_STOP_TIMEOUT_MS

# Active anti-entropy (``legion.runtime.anti_entropy``): a round compares every partition pair a
# node starts, one at a time with a pause between pairs; rounds start this often. An exchange asks
# for the items of at most this many differing segments per request (and ships their keys).
ANTI_ENTROPY_INTERVAL_MS = 5_000
ANTI_ENTROPY_PAIR_PAUSE_MS = 20
ANTI_ENTROPY_SEGMENTS_PER_REQUEST = 64
# Keys found differing are compared again this much later (writes in flight settle) before they are shipped.
ANTI_ENTROPY_SETTLE_MS = 500

assert 0 < ANTI_ENTROPY_SETTLE_MS < REQUEST_DEADLINE_MS

# How long `legion cluster verify` waits for one node to fold and digest every partition it holds.
VERIFY_DEADLINE_MS = 120_000
# A replay round sends whole chunks of hints.
assert PEER_BATCH_OPS_MAX <= HINT_REPLAY_OPS_PER_ROUND_MAX

# The cluster state in etcd (``legion.etcd_metadata``): one request to etcd (a read, or a
# compare-and-swap) may take this long before etcd counts as unreachable (503 no_quorum); a change
# retries a lost swap at most this many times and takes at most the deadline in all; a node polls
# etcd for a newer state this often (besides hearing it by gossip).
ETCD_REQUEST_TIMEOUT_MS = 2_000
ETCD_SWAP_ATTEMPTS_MAX = 8
ETCD_CHANGE_DEADLINE_MS = REQUEST_DEADLINE_MS
ETCD_POLL_INTERVAL_MS = GOSSIP_INTERVAL_MS

assert 0 < ETCD_REQUEST_TIMEOUT_MS < ETCD_CHANGE_DEADLINE_MS <= REQUEST_DEADLINE_MS
assert ETCD_SWAP_ATTEMPTS_MAX >= 2
