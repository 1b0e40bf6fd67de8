"""``make demo`` (``python -m cli.demo``): a guided tour of a real local cluster.

Does I/O: starts node processes in ``./.legion`` and talks to them over HTTP.
The tour is a list of steps, ``STEPS``; each is a title and a function of the
shared ``Tour``. Engines add their part of the tour by appending to the list
(search, map/reduce), before the epilogue that tells the user how to carry on.
The cluster is left running at the end.

A step that finds the cluster misbehaving records a failed check rather than
stopping the tour; the demo exits 1 if any check failed, so it doubles as a
smoke test.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from cli.cluster import status_table
from legion.client import TOKEN_FILE_NAME, Client
from legion.errors import LegionError, NotFound
from legion.runtime import local_cluster

DEMO_DIR = Path(".legion")
DEMO_NODES = 3

# The smallest valid PNG (1×1, transparent): a binary value among the text ones.
PIXEL_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"


def _json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


# Twenty entries of the kinds a key/value store really holds.
ENTRIES: list[tuple[str, bytes, str]] = [
    ("user:1001", _json({"name": "Ada Lovelace", "email": "ada@example.org", "plan": "pro"}), JSON),
    ("user:1002", _json({"name": "Grace Hopper", "email": "grace@example.org", "plan": "team"}), JSON),
    ("user:1003", _json({"name": "Alan Turing", "email": "alan@example.org", "plan": "free"}), JSON),
    ("user:1004", _json({"name": "Katherine Johnson", "email": "kj@example.org", "plan": "pro"}), JSON),
    ("user:1005", _json({"name": "Edsger Dijkstra", "email": "ewd@example.org", "plan": "free"}), JSON),
    ("session:7f3c9a", b"user:1001 expires 2025-12-01T10:00:00Z", TEXT),
    ("session:b41e07", b"user:1004 expires 2025-12-01T11:30:00Z", TEXT),
    ("cart:1002", _json({"items": [{"sku": "BK-0451", "qty": 1}, {"sku": "MUG-07", "qty": 2}]}), JSON),
    ("config:feature-flags", _json({"new_checkout": True, "dark_mode": True, "beta_search": False}), JSON),
    ("config:rate-limits", _json({"api_per_minute": 600, "login_per_hour": 20}), JSON),
    ("page:/about", b"<h1>About us</h1><p>We make replicated state boring.</p>", HTML),
    ("page:/pricing", b"<h1>Pricing</h1><ul><li>Free</li><li>Pro</li><li>Team</li></ul>", HTML),
    ("sensor:berlin-01:last", _json({"t": "2024-11-26T09:14:00Z", "temp_c": 4.5, "humidity": 0.81}), JSON),
    ("sensor:lisbon-04:last", _json({"t": "2024-11-26T09:14:02Z", "temp_c": 15.2, "humidity": 0.67}), JSON),
    ("order:2024-000381", _json({"user": "user:1002", "total_eur": 42.9, "status": "shipped"}), JSON),
    ("order:2024-000382", _json({"user": "user:1001", "total_eur": 9.5, "status": "paid"}), JSON),
    ("counter:signups:2024-11", b"1289", TEXT),
    ("i18n:de:greeting", "Guten Tag".encode(), TEXT),
    ("i18n:ja:greeting", "こんにちは".encode(), TEXT),
    ("avatar:1001", PIXEL_PNG, "image/png"),
]
DELETED_KEY = "session:7f3c9a"  # a user logs out


@dataclass
class Tour:
    """What the steps share: the console, the cluster, and what was checked so far."""

    console: Console
    directory: Path
    nodes: list[dict[str, Any]] = field(default_factory=list)
    token: str = ""
    client: Client | None = None
    status: dict[str, Any] = field(default_factory=dict)
    checks: list[tuple[str, bool]] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    def node_client(self, node: dict[str, Any]) -> Client:
        """A client that talks to this one node only, to show any node can serve any key."""
        return Client([node["url"]], self.token)

    def check(self, what: str, passed: bool) -> None:
        self.checks.append((what, passed))
        mark = "[green]✓[/]" if passed else "[bold red]✗[/]"
        self.console.print(f"{mark} {escape(what)}")


Step = Callable[[Tour], None]


def start_cluster(tour: Tour) -> None:
    """Stop whatever ran in ./.legion before, then start a fresh 3-node cluster there."""
    if (tour.directory / "cluster.json").exists():
        stopped = local_cluster.down(tour.directory)
        if stopped:
            tour.console.print(f"stopped the previous cluster in {tour.directory} ({', '.join(stopped)})")
    with tour.console.status("starting nodes…") as spinner:
        started = time.monotonic()
        document = local_cluster.up(
            tour.directory,
            nodes=DEMO_NODES,
            base_port=0,  # free ports: the demo must not fail because 7400 is taken
            reset=True,
            progress=lambda message: spinner.update(escape(message) + "…"),
        )
    tour.nodes = [node for node in document["nodes"] if not node.get("removed")]
    tour.token = (tour.directory / TOKEN_FILE_NAME).read_text().strip()
    tour.client = Client.connect(tour.directory)
    tour.facts["start-up"] = f"{DEMO_NODES} nodes up in {time.monotonic() - started:.1f}s"
    for node in tour.nodes:
        tour.console.print(f"  {node['id']}  {node['url']}  pid {node['pid']}")
    tour.console.print(f"each node logs to {_shown(tour.directory)}/nodes/<id>/node.log")


def show_status(tour: Tour) -> None:
    """The cluster's own view: members, partitions each one leads or copies, the epoch."""
    assert tour.client is not None
    tour.status = tour.client.status()
    tour.console.print(status_table(tour.status))
    partitions, replicas = tour.status["partitions"], tour.status["replicas"]
    tour.console.print(
        f"\nEach of the {partitions} partitions lives on {replicas} nodes; the first node in a "
        "partition's preference list is its [bold]primary[/], the others are [bold]replicas[/]."
    )
    tour.facts["placement"] = f"{partitions} partitions × {replicas} replicas over {len(tour.nodes)} nodes"


def write_entries(tour: Tour) -> None:
    """Write every entry through the first node; each lands on its partition's replicas."""
    from engines.kv import KVClient

    first = tour.nodes[0]
    table = Table(header_style="bold")
    for column in ("key", "content type", "bytes", "partition", "replicas", "acks"):
        table.add_column(column, no_wrap=True)
    with tour.node_client(first) as client:
        kv = KVClient(client)
        for key, value, content_type in ENTRIES:
            result = kv.put(key, value, content_type=content_type)
            owners = tour.status.get("placement", [])[result["partition"]] if tour.status else []
            table.add_row(
                escape(key), content_type.split(";")[0], str(len(value)), str(result["partition"]),
                " ".join(owners), str(result["acks"]),
            )  # fmt: skip
    tour.console.print(f"through {first['id']} ({first['url']}):")
    tour.console.print(table)
    tour.facts["writes"] = f"{len(ENTRIES)} entries written through {first['id']}"


def read_back(tour: Tour) -> None:
    """Read every entry through each *other* node: same bytes, same content type."""
    from engines.kv import KVClient

    for node in tour.nodes[1:]:
        with tour.node_client(node) as client:
            kv = KVClient(client)
            same = 0
            for key, value, content_type in ENTRIES:
                found = kv.get(key)
                same += found.value == value and found.content_type == content_type
        tour.check(f"{node['id']} returned {same}/{len(ENTRIES)} entries byte-for-byte", same == len(ENTRIES))
    sample = next(entry for entry in ENTRIES if entry[0] == "i18n:ja:greeting")
    tour.console.print(f"for example, {escape(sample[0])} → {sample[1].decode()!r} ({sample[2]})")
    tour.facts["reads"] = f"{len(ENTRIES)} entries read back through each of {len(tour.nodes) - 1} other nodes"


def delete_one(tour: Tour) -> None:
    """Delete one key through the first node; every other node now answers 404."""
    from engines.kv import KVClient

    with tour.node_client(tour.nodes[0]) as client:
        result = KVClient(client).delete(DELETED_KEY)
    tour.console.print(f"deleted {DELETED_KEY} through {tour.nodes[0]['id']} (hlc {result['hlc']}, {result['acks']} acks)")
    for node in tour.nodes[1:]:
        with tour.node_client(node) as client:
            try:
                KVClient(client).get(DELETED_KEY)
            except NotFound as exc:
                tour.console.print(f"  {node['id']}: [yellow]404 {exc.code}[/]: {escape(exc.message)}")
                tour.check(f"{node['id']} no longer has {DELETED_KEY}", True)
            else:
                tour.check(f"{node['id']} no longer has {DELETED_KEY}", False)
    tour.facts["delete"] = f"{DELETED_KEY} deleted through one node; the others answer 404"


# Engines append their own steps here (e.g. search, map/reduce).
STEPS: list[tuple[str, Step]] = [
    ("Start a 3-node cluster", start_cluster),
    ("Cluster status", show_status),
    ("Write 20 entries through one node", write_entries),
    ("Read them back through the other nodes", read_back),
    ("Delete one entry", delete_one),
]


def _engine_steps() -> list[tuple[str, Step]]:
    from cli import demo_mapreduce, demo_search

    return list(demo_search.STEPS) + list(demo_mapreduce.STEPS)


STEPS += _engine_steps()


def summary(tour: Tour, elapsed_s: float) -> None:
    """What the tour showed, and whether every check passed."""
    passed = sum(ok for _, ok in tour.checks)
    lines = [f"[bold]{name}[/]: {escape(text)}" for name, text in tour.facts.items()]
    verdict = "[green]all checks passed[/]" if passed == len(tour.checks) else "[bold red]some checks FAILED[/]"
    lines.append(f"[bold]checks[/]: {passed}/{len(tour.checks)} — {verdict}")
    lines.append(f"[bold]time[/]: {elapsed_s:.1f}s")
    tour.console.print(Panel("\n".join(lines), title="Legion demo", expand=False))


def epilogue(tour: Tour) -> None:
    """How to keep using the cluster the demo left running."""
    legion = "legion" if shutil.which("legion") else _shown(Path(sys.executable).parent / "legion")
    tour.console.print(
        f"\nThe cluster is still running in {_shown(tour.directory)}/. Try:\n"
        f"  {legion} cluster status\n"
        f"  {legion} kv get user:1001\n"
        f"  {legion} kv put greeting 'hello, world'\n"
        f"  {legion} search query pydocs 'binary search' --limit 5\n"
        f"  {legion} search stats pydocs\n"
        f"  {legion} mr datasets\n"
        f"  {legion} mr run engines/mapreduce/examples/tpch_q6.py --dataset lineitem\n"
        f"  {legion} cluster add-node        # watch partitions move\n"
        f"  {legion} cluster down            # stop it; its data stays until `cluster up --reset`",
        soft_wrap=True,
    )
    tour.console.print(
        f"\nDashboard: {local_cluster.dashboard_url(tour.directory)}  "
        f"(sign in with the token in {_shown(tour.directory)}/token)",
        soft_wrap=True,
        highlight=False,
    )


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is under it: shorter to copy."""
    try:
        return "./" + str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run(console: Console, directory: Path = DEMO_DIR) -> bool:
    """Run every step, then the summary and epilogue; whether all checks passed."""
    tour = Tour(console=console, directory=directory)
    started = time.monotonic()
    try:
        for number, (title, step) in enumerate(STEPS, start=1):
            console.rule(f"[bold]{number}. {title}")
            step(tour)
        console.rule()
        summary(tour, time.monotonic() - started)
        epilogue(tour)
    finally:
        if tour.client is not None:
            tour.client.close()
    return all(ok for _, ok in tour.checks)


def main() -> None:
    console = Console()
    try:
        ok = run(console)
    except LegionError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True, highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
