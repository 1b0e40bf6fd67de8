"""Placement: which nodes hold each partition, and in what order.

This module owns one decision: mapping every partition to an ordered
preference list of node ids (position 0 is the primary, the rest replicas).
It is pure: no I/O, no clock, no randomness. The same inputs give the same
placement in every process and on every Python version, because nothing here
depends on ``hash()`` or on the iteration order of a set.

Every member ends up holding floor(P*r/n) or ceil(P*r/n) slots, where
r = min(replicas, n). A fresh placement deals the P*r slots round-robin over
the sorted members (r consecutive members per partition, so always distinct)
and rotates each list so primaries spread evenly too. A new placement derived
from a previous one:

1. carries over every slot whose node is still a member, in the same position
   (lists that grow get holes appended; lists that shrink lose holes first,
   then their tail);
2. makes nodes above the ceiling shed just enough slots, from the partitions
   with the fewest holes, so that one newcomer can take them all;
3. fills the holes greedily with the node furthest below its target that is
   not already in the partition;
4. fills any hole the greedy pass got stuck on with an augmenting path (one
   max-flow step, cheapest first) that re-routes slots filled in step 3 and
   moves a carried-over slot only if nothing else works.

So adding one node to a balanced placement moves exactly the newcomer's load,
all of it to the newcomer, and removing one refills exactly the leaver's
slots, whenever that is possible at all. It is not always possible: if the
nodes that must grow already sit in (nearly) every partition the leaver
vacates, no in-place refill is balanced. Example: P=8, r=2, x and v both hold
partitions 0-3, a and b hold 4-7; after x leaves, v must reach 5 slots but
every vacated slot is in a partition v holds. Step 4 then moves one
carried-over slot (a cedes partition 4 to v and takes a vacated slot), the
fewest its path allows, and ``moved_slots`` exceeds the leaver's load by one.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import deque
from collections.abc import Sequence

from legion.errors import BadRequest

Placement = tuple[tuple[str, ...], ...]


def place(
    previous: Placement | None, members: Sequence[str], partitions: int, replicas: int
) -> Placement:
    """Deterministically compute the next placement.

    ``previous`` may name nodes that are no longer members and may have been
    built with another replica count; ``None`` builds from scratch.
    """
    nodes = _checked(previous, members, partitions, replicas)
    r = min(replicas, len(nodes))
    if previous is None:
        result = _fresh(nodes, partitions, r)
    else:
        result = _rebalance(previous, nodes, partitions, r)
    _assert_valid(result, nodes, partitions, r)
    return result


def node_loads(placement: Placement) -> dict[str, int]:
    """Slots held per node (nodes holding nothing are absent), sorted by node id."""
    loads: dict[str, int] = {}
    for prefs in placement:
        for node in prefs:
            loads[node] = loads.get(node, 0) + 1
    return dict(sorted(loads.items()))


def moved_slots(old: Placement, new: Placement) -> int:
    """(partition, node) pairs in ``new`` absent from ``old``: replicas to copy."""
    moved = 0
    for p, prefs in enumerate(new):
        before = set(old[p]) if p < len(old) else set()
        moved += sum(1 for node in prefs if node not in before)
    return moved


def partitions_of(placement: Placement, node: str) -> list[int]:
    """Partitions whose preference list contains ``node``, ascending."""
    return [p for p, prefs in enumerate(placement) if node in prefs]


def _checked(
    previous: Placement | None, members: Sequence[str], partitions: int, replicas: int
) -> list[str]:
    if not members:
        raise BadRequest("cannot place partitions on an empty member set")
    nodes = sorted(members)
    if len(set(nodes)) != len(nodes):
        raise BadRequest("member ids must be distinct")
    if partitions < 1 or replicas < 1:
        raise BadRequest(f"need partitions >= 1 and replicas >= 1, got {partitions}, {replicas}")
    if previous is not None and len(previous) != partitions:
        raise BadRequest(f"previous placement has {len(previous)} partitions, expected {partitions}")
    return nodes


def _fresh(nodes: list[str], partitions: int, r: int) -> Placement:
    rows: list[list[str]] = []
    cycle: list[str] = []
    for k in range(partitions * r):
        if not cycle:
            cycle = _cycle_order(nodes, k // len(nodes))
        if k % r == 0:
            rows.append([])
        # Each cycle deals every member once, so loads differ by at most one.
        # A member the current row already has (left over from the previous
        # cycle) waits its turn; at most r - 1 do, and n >= r.
        row = rows[-1]
        i = next(i for i, v in enumerate(cycle) if v not in row)
        row.append(cycle.pop(i))
    return _spread_primaries(rows, nodes)


def _cycle_order(nodes: list[str], cycle: int) -> list[str]:
    # A fresh stable pseudo-random order per cycle, so that a node's
    # co-replicas vary: with a fixed order, r consecutive nodes would always
    # share partitions, and when one left its neighbours could not take its
    # slots without breaking balance.
    def rank(v: str) -> bytes:
        return hashlib.blake2b(f"{cycle}:{v}".encode(), digest_size=8).digest()

    return sorted(nodes, key=rank)


def _spread_primaries(rows: list[list[str]], nodes: list[str]) -> Placement:
    leads = [min(row, key=row.index) for row in rows]  # the first dealt, for now
    count = dict.fromkeys(nodes, 0)
    rows_of: dict[str, list[int]] = {v: [] for v in nodes}
    for p, row in enumerate(rows):
        count[leads[p]] += 1
        for v in row:
            rows_of[v].append(p)
    # Raise an under-led node along a chain of hand-overs (it takes row p
    # from a, a takes another row from b, ...) ending at a node leading at
    # least two more rows. Each chain narrows the spread; none left means the
    # spread is as small as these rows allow.
    while True:
        top = max(count.values())
        levels = sorted({c for c in count.values() if c <= top - 2})
        if not any(
            _hand_over([w for w in nodes if count[w] == c], leads, count, rows_of) for c in levels
        ):
            break
    return tuple((leads[p], *(v for v in row if v != leads[p])) for p, row in enumerate(rows))


def _hand_over(
    sources: list[str], leads: list[str], count: dict[str, int], rows_of: dict[str, list[int]]
) -> bool:
    """Breadth-first search from equally-led ``sources`` for one chain; apply it."""
    starts = set(sources)
    taken_from: dict[str, tuple[int, str]] = {}
    queue = deque(sources)
    while queue:
        a = queue.popleft()
        for p in rows_of[a]:
            b = leads[p]
            if b in starts or b in taken_from:
                continue
            taken_from[b] = (p, a)
            if count[b] >= count[sources[0]] + 2:
                count[b] -= 1
                while b not in starts:
                    p, b = taken_from[b]
                    leads[p] = b
                count[b] += 1
                return True
            queue.append(b)
    return False


class _Board:
    """A placement under repair: rows with holes (None) plus the bookkeeping."""

    def __init__(self, rows: list[list[str | None]], nodes: list[str]) -> None:
        self.rows = rows
        self.nodes = nodes
        self.held = [{v for v in row if v is not None} for row in rows]
        self.fresh: list[set[str]] = [set() for _ in rows]  # filled by this call
        self.holes = [row.count(None) for row in rows]
        self.spots: dict[str, list[tuple[int, int]]] = {v: [] for v in nodes}
        for p, row in enumerate(rows):
            for pos, v in enumerate(row):
                if v is not None:
                    self.spots[v].append((p, pos))
        self.load = {v: len(self.spots[v]) for v in nodes}
        # Set by _shed_excess: below-floor deficits, and ceil-sized loads still
        # to hand out to nodes that started at or below the floor.
        self.need: dict[str, int] = {}
        self.pool = 0
        self.eligible: list[str] = []
        self.topped: set[str] = set()

    def vacate(self, p: int, pos: int) -> None:
        v = self.rows[p][pos]
        assert v is not None
        self.rows[p][pos] = None
        self.held[p].discard(v)
        self.fresh[p].discard(v)
        self.load[v] -= 1
        self.holes[p] += 1

    def put(self, p: int, pos: int, v: str) -> None:
        assert self.rows[p][pos] is None and v not in self.held[p]
        self.rows[p][pos] = v
        self.held[p].add(v)
        self.fresh[p].add(v)
        self.load[v] += 1
        self.holes[p] -= 1


def _rebalance(previous: Placement, nodes: list[str], partitions: int, r: int) -> Placement:
    board = _Board(_carry(previous, set(nodes), r), nodes)
    _shed_excess(board, partitions * r)
    _fill_greedily(board)
    while sum(board.holes):
        _augment(board)
    return tuple(tuple(row) for row in board.rows)  # type: ignore[arg-type]


def _carry(previous: Placement, members: set[str], r: int) -> list[list[str | None]]:
    rows: list[list[str | None]] = []
    for prefs in previous:
        row: list[str | None] = []
        for v in prefs:
            row.append(v if v in members and v not in row else None)
        excess = len(row) - r
        # A shrinking list gives up its holes before any surviving replica.
        for i in range(len(row) - 1, -1, -1):
            if excess > 0 and row[i] is None:
                del row[i]
                excess -= 1
        del row[r:]
        row.extend([None] * (r - len(row)))
        rows.append(row)
    return rows


def _shed_excess(board: _Board, total: int) -> None:
    nodes = board.nodes
    base, extra = divmod(total, len(nodes))
    # The heaviest nodes keep the ceiling: that sheds the fewest slots.
    over = sorted((v for v in nodes if board.load[v] > base), key=lambda v: (-board.load[v], v))
    board.eligible = [v for v in nodes if board.load[v] <= base]
    board.need = {v: base - board.load[v] for v in board.eligible}
    board.pool = extra - min(extra, len(over))
    fair_primaries = -(-len(board.rows) // len(nodes))
    mates = dict.fromkeys(nodes, 0)
    for rank, v in enumerate(over):
        target = base + 1 if rank < extra else base
        primaries = sum(1 for _, pos in board.spots[v] if pos == 0)
        spots = _shed_choice(board, v, board.load[v] - target, primaries - fair_primaries, mates)
        for p, pos in spots:
            board.vacate(p, pos)


def _shed_choice(
    board: _Board, v: str, count: int, spare_primaries: int, mates: dict[str, int]
) -> list[tuple[int, int]]:
    """Pick ``count`` of v's slots to give up.

    Fewest holes first, so shed slots land in distinct partitions and one
    newcomer can take them all. Next, the partitions whose remaining members
    were left behind least often (``mates``): whoever fills the holes then
    shares partitions with every node about equally, which keeps a later
    departure refillable in place. Last, primaries only while v leads more
    than its share of partitions.
    """

    def key(spot: tuple[int, int]) -> tuple[int, int, bool, int]:
        p, pos = spot
        left = sum(mates[w] for w in board.rows[p] if w is not None and w != v)
        return (board.holes[p], left, (pos == 0) != (spare_primaries > 0), p)

    heap = [(key(spot), spot) for spot in board.spots[v]]
    heapq.heapify(heap)
    picks: list[tuple[int, int]] = []
    while len(picks) < count:
        stale, spot = heapq.heappop(heap)
        if key(spot) != stale:  # its mates were left behind since: re-rank
            heapq.heappush(heap, (key(spot), spot))
            continue
        picks.append(spot)
        spare_primaries -= spot[1] == 0
        for w in board.rows[spot[0]]:
            if w is not None and w != v:
                mates[w] += 1
    return picks


def _fill_greedily(board: _Board) -> None:
    # One heap entry per node, keyed by remaining deficit (ties by id).
    heap = [(-need, v) for v, need in board.need.items() if need > 0]
    heapq.heapify(heap)
    for p, row in enumerate(board.rows):
        for pos in range(len(row)):
            if row[pos] is None:
                v = _take_needy(board, heap, p) or _take_pooled(board, p)
                if v is not None:
                    board.put(p, pos, v)


def _take_needy(board: _Board, heap: list[tuple[int, str]], p: int) -> str | None:
    skipped, chosen = [], None
    while heap:
        entry = heapq.heappop(heap)
        if entry[1] not in board.held[p]:
            chosen = entry[1]
            board.need[chosen] -= 1
            if board.need[chosen]:
                heapq.heappush(heap, (entry[0] + 1, chosen))
            break
        skipped.append(entry)
    for entry in skipped:
        heapq.heappush(heap, entry)
    return chosen


def _take_pooled(board: _Board, p: int) -> str | None:
    if board.pool == 0:
        return None
    for v in board.eligible:
        if v not in board.topped and v not in board.held[p]:
            board.pool -= 1
            board.topped.add(v)
            return v
    return None


_Vertex = str | int | None  # a node id, a partition, or (None) the pool


def _augment(board: _Board) -> None:
    """Fill one hole along a cheapest augmenting path (0-1 BFS).

    Vertices: node ids (str), partitions (int) and the pool (None). A node
    with unmet need, or the pool while allowances remain, is a source; a
    partition with a hole is a sink. Node -> partition: the node joins a
    partition it is not in. Partition -> node: a member leaves to make room,
    costing one extra move if its slot was carried over and nothing if it was
    filled by this call. Pool <-> node: a node takes or returns a ceil-sized
    allowance.
    """
    dist: dict[_Vertex, int] = {}
    parent: dict[_Vertex, tuple[_Vertex, int | None] | None] = {}
    queue: deque[tuple[int, _Vertex]] = deque()

    def reach(vertex: _Vertex, d: int, cost: int, via: tuple[_Vertex, int | None] | None) -> None:
        if vertex not in dist or d + cost < dist[vertex]:
            dist[vertex], parent[vertex] = d + cost, via
            (queue.append if cost else queue.appendleft)((d + cost, vertex))

    for v in board.nodes:
        if board.need.get(v, 0) > 0:
            reach(v, 0, 0, None)
    if board.pool:
        reach(None, 0, 0, None)
    while queue:
        d, vertex = queue.popleft()
        if d > dist[vertex]:
            continue
        if isinstance(vertex, int) and board.holes[vertex]:
            _apply_path(board, vertex, parent)
            return
        for nxt, cost, pos in _edges(board, vertex):
            reach(nxt, d, cost, (vertex, pos))
    raise AssertionError("no augmenting path, yet a balanced placement always exists")


def _edges(board: _Board, vertex: _Vertex) -> list[tuple[_Vertex, int, int | None]]:
    """(next vertex, extra moves, position a leaving member frees) for each residual edge."""
    if vertex is None:
        return [(v, 0, None) for v in board.eligible if v not in board.topped]
    if isinstance(vertex, str):
        out: list[tuple[_Vertex, int, int | None]] = [(None, 0, None)] if vertex in board.topped else []
        return out + [(p, 0, None) for p, held in enumerate(board.held) if vertex not in held]
    fresh = board.fresh[vertex]
    return [(w, 0 if w in fresh else 1, pos) for pos, w in enumerate(board.rows[vertex]) if w is not None]


def _apply_path(
    board: _Board, sink: int, parent: dict[_Vertex, tuple[_Vertex, int | None] | None]
) -> None:
    steps: list[tuple[_Vertex, int | None, _Vertex]] = []
    vertex: _Vertex = sink
    while (via := parent[vertex]) is not None:
        steps.append((via[0], via[1], vertex))
        vertex = via[0]
    if vertex is None:
        board.pool -= 1
    else:
        board.need[str(vertex)] -= 1
    joining = ""
    for prev, pos, nxt in reversed(steps):
        if prev is None:  # nxt takes an allowance from the pool
            board.topped.add(str(nxt))
        elif nxt is None:  # prev hands its allowance back
            board.topped.discard(str(prev))
        elif isinstance(prev, str):  # prev joins partition nxt
            joining = prev
        else:  # a member of partition prev leaves position pos; joining takes it
            assert pos is not None
            board.vacate(prev, pos)
            board.put(prev, pos, joining)
    board.put(sink, board.rows[sink].index(None), joining)


def _assert_valid(result: Placement, nodes: list[str], partitions: int, r: int) -> None:
    members = set(nodes)
    assert len(result) == partitions
    for prefs in result:
        assert len(prefs) == r and len(set(prefs)) == r and members.issuperset(prefs), prefs
    base, extra = divmod(partitions * r, len(nodes))
    loads = node_loads(result)
    assert all(base <= loads.get(v, 0) <= base + 1 for v in nodes), loads
    assert sum(1 for v in nodes if loads.get(v, 0) == base + 1) == extra
