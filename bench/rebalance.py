"""Adding a node to a loaded 3-node cluster: how long, how much moves, and what clients see meanwhile.

Run: ``.venv/bin/python bench/rebalance.py [--gb 1.0] [--value-kib 16] [--clients 4]``.

A fresh local cluster (3 nodes, N=3, 64 partitions) is loaded with ``--gb``
of KV values (bulk msgpack puts, w=3, so every replica holds every value
before the join). Then, with ``--clients`` threads reading random loaded
keys (r=1, through every node) and one thread writing new keys (w=2) the
whole time, a 4th node is added (``legion cluster add-node``: it returns once
the new placement is committed). Printed, against the figures the same
clients saw for ``--baseline-seconds`` before the join:

- time of the join and MB/s moved (the new node's ``legion_handoff_bytes``);
- the fraction of all replica data moved: ideally 1/4 (the newcomer takes
  48 of 192 slots), target within 10% of it;
- failed requests during the move (target 0);
- p99 read latency during the move against before it (target ≤ 3×).

No assertion: a missed target shows in the table.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.kv import KVClient  # noqa: E402
from legion.client import Client  # noqa: E402
from legion.errors import LegionError  # noqa: E402
from legion.runtime import local_cluster  # noqa: E402

PARTITIONS = 64
LOAD_BATCH_ITEMS = 256


class Load:
    """Readers and a writer running against the cluster until stopped; what each request cost."""

    def __init__(self, directory: Path, keys: list[str], clients: int) -> None:
        self.directory, self.keys, self.clients = directory, keys, clients
        self.latencies_ms: list[float] = []
        self.failures: list[str] = []
        self.writes = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._read, args=(i,)) for i in range(self.clients)]
        self._threads.append(threading.Thread(target=self._write))
        for thread in self._threads:
            thread.start()

    def stop(self) -> tuple[list[float], list[str], int]:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        with self._lock:
            taken = (self.latencies_ms, self.failures, self.writes)
            self.latencies_ms, self.failures, self.writes = [], [], 0
        return taken

    def _read(self, index: int) -> None:
        rnd = random.Random(index)
        with Client.connect(self.directory) as base, base.copy(start_at=index) as client:
            kv = KVClient(client)
            while not self._stop.is_set():
                key = rnd.choice(self.keys)
                started = time.perf_counter()
                try:
                    kv.get(key, r=1)
                except LegionError as exc:
                    with self._lock:
                        self.failures.append(f"GET {key}: {exc}")
                    continue
                with self._lock:
                    self.latencies_ms.append((time.perf_counter() - started) * 1000)

    def _write(self) -> None:
        with Client.connect(self.directory) as client:
            kv, n = KVClient(client), 0
            while not self._stop.is_set():
                n += 1
                try:
                    kv.put(f"during:{os.getpid()}:{n}", b"w" * 256, w=2)
                except LegionError as exc:
                    with self._lock:
                        self.failures.append(f"PUT: {exc}")
                    continue
                with self._lock:
                    self.writes += 1


def load_data(directory: Path, gb: float, value_kib: int) -> tuple[list[str], int]:
    value = os.urandom(value_kib * 1024)
    count = int(gb * 1024**3) // len(value)
    keys = [f"bulk:{i:08d}" for i in range(count)]
    started = time.monotonic()
    with Client.connect(directory, timeout_s=300) as client:
        kv = KVClient(client)
        for first in range(0, count, LOAD_BATCH_ITEMS):
            batch = keys[first : first + LOAD_BATCH_ITEMS]
            results = kv.put_many(({"key": k, "value": value} for k in batch), w=3, request_items=LOAD_BATCH_ITEMS)
            failed = [r for r in results if "error" in r]
            if failed:
                raise SystemExit(f"loading failed: {failed[:3]}")
    took = time.monotonic() - started
    print(f"loaded {count:,} values of {value_kib} KiB ({count * len(value) / 1024**3:.2f} GiB) in {took:.1f} s", flush=True)
    return keys, count * len(value)


def handoff_bytes(directory: Path, node_id: str) -> float:
    document = local_cluster.load(directory)
    url = next(n["url"] for n in document["nodes"] if n["id"] == node_id)
    with Client.connect(directory) as client, client.for_node(url) as node:
        text = node.request("GET", "/metrics").body.decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("legion_handoff_bytes_total"))


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values, default=float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="GiB of values to load before the join")
    parser.add_argument("--value-kib", type=int, default=16)
    parser.add_argument("--clients", type=int, default=4, help="reader threads during the baseline and the join")
    parser.add_argument("--baseline-seconds", type=float, default=8.0)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="legion-bench-rebalance-"))
    directory = root / "cluster"
    try:
        local_cluster.up(directory, nodes=3, partitions=PARTITIONS, replicas=3, base_port=0, timeout_s=120)
        keys, data_bytes = load_data(directory, args.gb, args.value_kib)
        load = Load(directory, keys, args.clients)

        load.start()
        time.sleep(args.baseline_seconds)
        before, before_failures, _ = load.stop()

        load.start()
        started = time.monotonic()
        local_cluster.add_node(directory, timeout_s=1800)
        took = time.monotonic() - started
        during, during_failures, writes = load.stop()

        moved = handoff_bytes(directory, "n4")
        fraction = moved / (3 * data_bytes)
        load_avg = os.getloadavg()[0]
        print()
        print(f"rebalance: 3 → 4 nodes, N=3, {PARTITIONS} partitions, {data_bytes / 1024**3:.2f} GiB of values "
              f"(×3 replicas), {args.clients} readers + 1 writer, load {load_avg:.1f}")  # fmt: skip
        rows = [
            ("join time", f"{took:.1f} s", ""),
            ("moved to n4", f"{moved / 1024**2:,.0f} MB at {moved / 1024**2 / took:,.1f} MB/s", ""),
            ("fraction of replica data moved", f"{fraction:.3f} (ideal 0.250)", "within 10% of 1/4"),
            ("failed requests during the move", f"{len(during_failures)} of {len(during) + writes + len(during_failures):,}",
             "0"),  # fmt: skip
            ("failed requests before", f"{len(before_failures)} of {len(before) + len(before_failures):,}", ""),
            ("read p99 before / during", f"{p99(before):.1f} ms / {p99(during):.1f} ms = {p99(during) / p99(before):.2f}×",
             "≤ 3×"),  # fmt: skip
            ("read p50 before / during", f"{statistics.median(before):.1f} ms / {statistics.median(during):.1f} ms", ""),
        ]
        width = max(len(r[0]) for r in rows)
        for name, value, target in rows:
            print(f"  {name:<{width}}  {value:<48} {('target ' + target) if target else ''}")
        for failure in during_failures[:5]:
            print(f"  failed: {failure}")
    finally:
        local_cluster.down(directory)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
