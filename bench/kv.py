"""Single-key KV throughput of a Legion cluster against a bare aiohttp server.

Run: ``make bench`` or ``.venv/bin/python bench/kv.py [--runs 5] [--seconds 5] [--concurrency 32]``.

Both sides are measured in the same run, on the same machine, by the same
load generator (one aiohttp client process, ``--concurrency`` requests in
flight, keep-alive connections, the bearer token on every request):

- **baseline**: one aiohttp server process (same event loop as the nodes:
  uvloop where installed) with a dict behind
  ``PUT/GET /v1/kv/{key}`` that checks the token — the same HTTP round trip
  with no routing, no replication and no storage;
- **legion**: a local 3-node cluster (N=3, default W=2, R=2), requests spread
  round-robin over the nodes, so most of them are forwarded to replicas —
  twice, both clusters up for the whole run: one in the default durability
  mode (``--durability fsync``: a write is acknowledged once fsynced on ``w``
  replicas) and one with ``--durability async`` (acknowledged once handed to
  the OS), so the price of fsync is measured under the same conditions.

It prints the median of ``--runs`` runs for each, the ratio legion/bare, and
PUT fsync/async. The machine may be shared: each run line and the table say
the load average. The clusters' data goes under ``$TMPDIR``; on a tmpfs an
fsync costs nothing, so point ``TMPDIR`` at a real disk.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from legion.runtime import local_cluster  # noqa: E402

TOKEN = "bench-token"
# The two clusters measured against the bare server, by their durability mode.
LEGION_SIDES = {"legion": "fsync", "legion-async": "async"}


def bare_server(port: int) -> None:
    """The baseline: the same endpoints, a dict instead of a cluster."""
    store: dict[str, tuple[bytes, str]] = {}
    expected = f"Bearer {TOKEN}"

    async def put(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "unauthorized"}, status=401)
        store[request.match_info["key"]] = (await request.read(), request.content_type)
        return web.json_response({"key": request.match_info["key"], "acks": 1})

    async def get(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "unauthorized"}, status=401)
        found = store.get(request.match_info["key"])
        if found is None:
            return web.json_response({"error": "not_found"}, status=404)
        return web.Response(body=found[0], headers={"Content-Type": found[1]})

    app = web.Application()
    app.router.add_put("/v1/kv/{key}", put)
    app.router.add_get("/v1/kv/{key}", get)
    try:
        import uvloop  # the same event loop the nodes run on, so only Legion's own work differs
    except ImportError:
        loop = None
    else:
        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=loop)


async def load(urls: list[str], token: str, method: str, seconds: float, concurrency: int, keys: int) -> float:
    """Requests per second completed by ``concurrency`` workers over ``seconds`` (GETs ask for keys 0..keys-1)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
    value = b"x" * 100
    done = 0
    errors = 0
    deadline = time.monotonic() + seconds
    counter = itertools.count()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < deadline:
                i = next(counter)
                url = f"{urls[i % len(urls)]}/v1/kv/key-{i % keys}"
                if method == "PUT":
                    async with session.put(url, data=value) as resp:
                        await resp.read()
                        ok = resp.status == 200
                else:
                    async with session.get(url) as resp:
                        await resp.read()
                        ok = resp.status == 200
                done += ok
                errors += not ok

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - start
    if errors:
        print(f"  warning: {errors} {method} requests failed", file=sys.stderr)
    return done / elapsed


def measure(urls: list[str], token: str, args: argparse.Namespace) -> dict[str, float]:
    rates = {"PUT": asyncio.run(load(urls, token, "PUT", args.seconds, args.concurrency, args.keys))}
    # GET only keys the PUT phase certainly wrote, so every GET is a hit.
    written = max(1, min(args.keys, int(rates["PUT"] * args.seconds * 0.9)))
    rates["GET"] = asyncio.run(load(urls, token, "GET", args.seconds, args.concurrency, written))
    return rates


def fsync_latency_ms(directory: Path, writes: int = 200) -> float:
    """Mean time of a 4 KiB write plus fsync in ``directory``: what the fsync mode pays per commit there."""
    path = directory / "fsync-probe"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        start = time.perf_counter()
        for _ in range(writes):
            os.write(descriptor, b"x" * 4096)
            os.fsync(descriptor)
        return (time.perf_counter() - start) / writes * 1000
    finally:
        os.close(descriptor)
        path.unlink()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        bare_server(args.bare_server)
        return

    port = free_port()
    bare = subprocess.Popen([sys.executable, __file__, "--bare-server", str(port)])
    workdir = Path(tempfile.mkdtemp(prefix="legion-bench-"))
    clusters = {side: workdir / side for side in LEGION_SIDES}
    try:
        urls: dict[str, list[str]] = {"bare": [f"http://127.0.0.1:{port}"]}
        tokens = {"bare": TOKEN}
        for side, durability in LEGION_SIDES.items():
            local_cluster.up(clusters[side], nodes=3, partitions=64, replicas=3, base_port=0, durability=durability)
            urls[side] = [n["url"] for n in local_cluster.load(clusters[side])["nodes"]]
            tokens[side] = (clusters[side] / "token").read_text().strip()
        time.sleep(0.5)
        results: dict[str, list[dict[str, float]]] = {side: [] for side in urls}
        loads: list[float] = []
        for run in range(args.runs):
            loads.append(os.getloadavg()[0])  # other work on the machine skews every figure: say how much there was
            # The two clusters take turns going first: what the machine does meanwhile changes over a run.
            sides = ["bare", *list(LEGION_SIDES)[run % 2 :], *list(LEGION_SIDES)[: run % 2]]
            for side in sides:
                results[side].append(measure(urls[side], tokens[side], args))
            line = "  ".join(f"{side} {results[side][-1]}" for side in results)
            print(f"run {run + 1}/{args.runs} (load {loads[-1]:.1f}): {line}", flush=True)
    finally:
        bare.terminate()
        for directory in clusters.values():
            try:
                local_cluster.down(directory)
            except Exception as exc:  # the bench must not leave nodes behind, and must say why
                print(f"cleanup: {exc}", file=sys.stderr)
    print_table(results, loads, args)
    print(f"(a 4 KiB write + fsync takes {fsync_latency_ms(workdir):.2f} ms in {workdir}; on a tmpfs it costs nothing)")
    shutil.rmtree(workdir, ignore_errors=True)


def print_table(results: dict[str, list[dict[str, float]]], loads: list[float], args: argparse.Namespace) -> None:
    def median(side: str, method: str) -> float:
        return statistics.median(r[method] for r in results[side])

    print(f"\nKV single-key throughput, median of {args.runs} runs x {args.seconds:.0f} s, "
          f"concurrency {args.concurrency}, {os.cpu_count()} cores, "
          f"load average {min(loads):.1f}-{max(loads):.1f}")  # fmt: skip
    print(f"{'op':<11}{'bare aiohttp req/s':>20}{'legion req/s':>16}{'ratio':>8}{'target':>8}")
    # The first two rows are the default (fsync) cluster's, as before durability could be chosen.
    rows = [("GET", "legion", "GET", 0.5), ("PUT", "legion", "PUT", 0.25),
            ("GET async", "legion-async", "GET", None), ("PUT async", "legion-async", "PUT", None)]  # fmt: skip
    for label, side, method, target in rows:
        bare, legion = median("bare", method), median(side, method)
        target_text = "" if target is None else f"{target:.2f}"
        print(f"{label:<11}{bare:>20.0f}{legion:>16.0f}{legion / bare:>8.2f}{target_text:>8}")
    # Per run, the two clusters ran back to back under the same load: compare them run by run.
    paired = [f["PUT"] / a["PUT"] for f, a in zip(results["legion"], results["legion-async"])]
    print(f"PUT fsync/async: {statistics.median(paired):.2f}, median of the runs' "
          f"{', '.join(f'{ratio:.2f}' for ratio in paired)} (the throughput a write keeps when it is fsynced)")  # fmt: skip


if __name__ == "__main__":
    main()
