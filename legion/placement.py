"""Placement: which nodes hold each partition, and in what order.

This module owns one decision: mapping every partition to an ordered
preference list of node ids (position 0 is the primary, the rest replicas).
It is pure: no I/O, no clock, no randomness. The same inputs give the same
placement in every process and on every Python version, because nothing here
depends on ``hash()`` or on the iteration order of a set.

With r = min(replicas, n), every member ends up holding floor(P*r/n) or
ceil(P*r/n) slots. A new placement is derived from the previous one:

1. carry over every slot whose node is still a member, in the same position
   (lists that grow get holes appended; lists that shrink lose holes first,
   then their tail);
2. nodes above the ceiling shed just enough slots, never two into the same
   partition when one newcomer must take them all, preferring partitions
   that keep co-holders and primaries evenly spread;
3. fill holes greedily with the neediest node not already in the partition,
   among near-equals the one sharing fewest partitions with its members;
4. fill any hole step 3 got stuck on along an augmenting path (one max-flow
   step, cheapest first): re-route slots filled in step 3, and move a
   carried-over slot only if nothing else works.

A fresh placement deals primaries round-robin and fills the rest as in step 3.

Adding one node to a balanced placement therefore moves exactly the
newcomer's load, all to the newcomer; removing one refills exactly the
leaver's slots whenever that is possible at all. It is not always possible:
if a node that must grow already sits in (nearly) every partition the leaver
vacates, no balanced in-place refill exists. Example: P=8, r=2, x and v hold
partitions 0-3, a and b hold 4-7; once x leaves, v must reach 5 slots but
every vacated slot is in a partition v holds. Step 4 then moves as few
carried-over slots as each augmenting path allows (here a cedes partition 4
to v and takes a vacated slot), so ``moved_slots`` exceeds the leaver's load
(here by one). Steps 2 and 3 keep co-holders spread so that this stays
confined to small clusters with few partitions per node; in randomized
histories it shows up only with P <= 32 and one extra move per hole at most.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Sequence

from legion.errors import BadRequest

Placement = tuple[tuple[str, ...], ...]

_SLACK = 2  # step 3: "near-equals" are within this much need of the neediest
_WINDOW = 8  # step 3: and at most this many of them are compared
_SHORTLIST = 32  # step 2: groups re-ranked after each pick


def place(
    previous: Placement | None, members: Sequence[str], partitions: int, replicas: int
) -> Placement:
    """Deterministically compute the next placement.

    ``previous`` may name nodes that are no longer members and may have been
    built with another replica count; ``None`` builds from scratch.
    """
    if not members:
        raise BadRequest("cannot place partitions on an empty member set")
    nodes = sorted(members)
    if len(set(nodes)) != len(nodes):
        raise BadRequest("member ids must be distinct")
    if partitions < 1 or replicas < 1:
        raise BadRequest(f"need partitions >= 1 and replicas >= 1, got {partitions}, {replicas}")
    if previous is not None and len(previous) != partitions:
        raise BadRequest(f"previous placement has {len(previous)} partitions, expected {partitions}")
    r = min(replicas, len(nodes))
    if previous is None:
        previous = tuple((nodes[p % len(nodes)],) for p in range(partitions))
    result = _rebalance(previous, nodes, partitions, r)
    _assert_valid(result, nodes, partitions, r)
    return result


def node_loads(placement: Placement) -> dict[str, int]:
    """Slots held per node (nodes holding nothing are absent), sorted by node id."""
    return dict(sorted(Counter(node for prefs in placement for node in prefs).items()))


def moved_slots(old: Placement, new: Placement) -> int:
    """(partition, node) pairs in ``new`` absent from ``old``: replicas to copy."""
    return sum(
        1
        for p, prefs in enumerate(new)
        for node in prefs
        if p >= len(old) or node not in old[p]
    )


def partitions_of(placement: Placement, node: str) -> list[int]:
    """Partitions whose preference list contains ``node``, ascending."""
    return [p for p, prefs in enumerate(placement) if node in prefs]


class _Board:
    """A placement under repair: rows with holes (None) plus the bookkeeping."""

    def __init__(self, rows: list[list[str | None]], nodes: list[str]) -> None:
        self.rows, self.nodes = rows, nodes
        self.held = [{v for v in row if v is not None} for row in rows]
        self.fresh: list[set[str]] = [set() for _ in rows]  # filled by this call
        self.holes = [row.count(None) for row in rows]
        self.spots: dict[str, list[tuple[int, int]]] = {v: [] for v in nodes}
        self.pairs: dict[str, Counter[str]] = {v: Counter() for v in nodes}
        for p, row in enumerate(rows):
            for pos, v in enumerate(row):
                if v is not None:
                    self.spots[v].append((p, pos))
                    self.pairs[v].update(w for w in row if w is not None and w != v)
        self.load = {v: len(self.spots[v]) for v in nodes}
        self.leads = {v: sum(1 for _, pos in self.spots[v] if pos == 0) for v in nodes}
        # Set by _shed_excess: what nodes at or below the floor still need to
        # reach it, and how many of them may go one above it (the pool).
        self.eligible: list[str] = []
        self.need: dict[str, int] = {}
        self.pool = 0
        self.topped: set[str] = set()  # eligible nodes that drew on the pool

    def suits(self, v: str, p: int, pos: int) -> tuple[int, int]:
        """How badly v fits hole (p, pos): rows it leads, if pos is the
        primary's; then partitions it already shares with p's members."""
        shared = sum(self.pairs[v][w] for w in self.rows[p] if w is not None)
        return (self.leads[v] if pos == 0 else 0, shared)

    def vacate(self, p: int, pos: int) -> None:
        v = self.rows[p][pos]
        assert v is not None
        self.rows[p][pos] = None
        self._pair(p, v, -1)
        self.held[p].discard(v)
        self.fresh[p].discard(v)
        self.load[v] -= 1
        self.leads[v] -= pos == 0
        self.holes[p] += 1

    def put(self, p: int, pos: int, v: str) -> None:
        assert self.rows[p][pos] is None and v not in self.held[p]
        self._pair(p, v, 1)
        self.rows[p][pos] = v
        self.held[p].add(v)
        self.fresh[p].add(v)
        self.load[v] += 1
        self.leads[v] += pos == 0
        self.holes[p] -= 1

    def _pair(self, p: int, v: str, delta: int) -> None:
        for w in self.rows[p]:
            if w is not None and w != v:
                self.pairs[v][w] += delta
                self.pairs[w][v] += delta


def _rebalance(previous: Placement, nodes: list[str], partitions: int, r: int) -> Placement:
    board = _Board(_carry(previous, set(nodes), r), nodes)
    _shed_excess(board, partitions * r)
    _fill_greedily(board)
    while any(board.holes):
        _augment(board)
    return tuple(tuple(v for v in row if v is not None) for row in board.rows)


def _carry(previous: Placement, members: set[str], r: int) -> list[list[str | None]]:
    rows: list[list[str | None]] = []
    for prefs in previous:
        row: list[str | None] = []
        for v in prefs:
            row.append(v if v in members and v not in row else None)
        excess = len(row) - r
        for i in reversed(range(len(row))):  # a shrinking list drops holes first
            if excess > 0 and row[i] is None:
                del row[i]
                excess -= 1
        rows.append(row[:r] + [None] * (r - len(row)))
    return rows


def _shed_excess(board: _Board, total: int) -> None:
    nodes, partitions = board.nodes, len(board.rows)
    base, extra = divmod(total, len(nodes))
    # The heaviest nodes keep the ceiling: that sheds the fewest slots.
    over = sorted((v for v in nodes if board.load[v] > base), key=lambda v: (-board.load[v], v))
    board.eligible = [v for v in nodes if board.load[v] <= base]
    board.need = {v: base - board.load[v] for v in board.eligible}
    board.pool = extra - min(extra, len(over))
    # Primaries get floor/ceil targets likewise; a node leading more rows
    # than its target hands the surplus over with its shed slots.
    lead_base, lead_extra = divmod(partitions, len(nodes))
    by_leads = sorted(nodes, key=lambda v: (-board.leads[v], v))
    surplus = {v: board.leads[v] - lead_base - (i < lead_extra) for i, v in enumerate(by_leads)}
    pairing = _Pairing(board)
    for rank, v in enumerate(over):
        target = base + 1 if rank < extra else base
        for p, pos in _shed_choice(board, v, board.load[v] - target, surplus[v], pairing):
            board.vacate(p, pos)


class _Pairing:
    """Shedding v from partition p parts v from p's other members and pairs
    whoever fills the hole with them (and with p's other holes' fillers).
    These counts, kept even, spread every node's partitions over many
    co-holders, which keeps a later departure refillable in place."""

    def __init__(self, board: _Board) -> None:
        self.fillers = sum(1 for v in board.eligible if board.need[v] or board.pool)
        self.with_filler = dict.fromkeys(board.nodes, 0)  # summed over fillers
        self.among_fillers = 0
        for p, row in enumerate(board.rows):
            for w in row:
                if w is not None:
                    self.with_filler[w] += board.holes[p]
            self.among_fillers += board.holes[p] * (board.holes[p] - 1) // 2

    def crowded(self, holes: int) -> int:
        # With f fillers, a partition with f holes takes no more.
        return max(0, holes + 1 - self.fillers)

    def cost(self, holes: int, others: tuple[str, ...], mates_of_v: Counter[str]) -> int:
        # Per filler, sharing with w grows as with_filler[w] / f and with one
        # other filler as among_fillers / (f (f - 1) / 2), while v's sharing
        # with w shrinks; scaled by f (f - 1) to compare in integers.
        f = max(1, self.fillers)
        g = max(1, f - 1)
        split = sum(g * self.with_filler[w] - f * g * mates_of_v[w] for w in others)
        return split + 2 * holes * self.among_fillers

    def record(self, holes: int, others: tuple[str, ...], mates_of_v: Counter[str]) -> None:
        for w in others:
            self.with_filler[w] += 1
            mates_of_v[w] -= 1
        self.among_fillers += holes


def _shed_choice(
    board: _Board, v: str, count: int, surplus: int, pairing: _Pairing
) -> list[tuple[int, int]]:
    """Pick ``count`` of v's slots to give up, preferring in turn: partitions
    not yet holding a hole per filler (so that a lone newcomer can take every
    shed slot); primaries exactly while v has a surplus of them; even
    ``pairing``; fewer holes; the lowest partition."""
    # Partitions with the same holes and other members rank alike, so rank
    # groups of them. Each pick shifts many groups' pairing cost; re-ranking
    # just a shortlist of the best keeps this fast.
    Key = tuple[int, tuple[str, ...]]
    groups: dict[Key, tuple[list[int], list[int]]] = {}
    for p, pos in reversed(board.spots[v]):  # so that pop() yields the lowest p
        others = tuple(sorted(w for w in board.rows[p] if w is not None and w != v))
        groups.setdefault((board.holes[p], others), ([], []))[pos == 0].append(p)
    mates_of_v = Counter(board.pairs[v])

    def role(by_role: tuple[list[int], list[int]]) -> int:  # 1: give up a primary
        return 1 if surplus > 0 and by_role[1] or not by_role[0] else 0

    def rank(key: Key) -> tuple[int, bool, int, int, int]:
        (holes, others), by_role = key, groups[key]
        r = role(by_role)
        cost = pairing.cost(holes, others, mates_of_v)
        return (pairing.crowded(holes), r != (surplus > 0), cost, holes, by_role[r][-1])

    queue = sorted(groups, key=rank)
    picks: list[tuple[int, int]] = []
    while len(picks) < count:
        key = min(queue[:_SHORTLIST], key=rank)
        by_role = groups[key]
        r = role(by_role)
        p = by_role[r].pop()
        picks.append((p, board.rows[p].index(v)))
        pairing.record(key[0], key[1], mates_of_v)
        if not by_role[0] and not by_role[1]:
            queue.remove(key)
        surplus -= r
        if r and not surplus:  # primaries no longer preferred: re-rank all
            queue.sort(key=rank)
    return picks


def _fill_greedily(board: _Board) -> None:
    heap = [(-need, v) for v, need in board.need.items() if need > 0]
    heapq.heapify(heap)
    for p, row in enumerate(board.rows):
        for pos in range(len(row)):
            if row[pos] is None:
                v = _take_needy(board, heap, p, pos) or _take_pooled(board, p, pos)
                if v is not None:
                    board.put(p, pos, v)


def _take_needy(board: _Board, heap: list[tuple[int, str]], p: int, pos: int) -> str | None:
    popped: list[tuple[int, str]] = []
    near: list[tuple[int, str]] = []
    while heap and len(near) < _WINDOW:
        popped.append(heapq.heappop(heap))
        if near and popped[-1][0] > near[0][0] + _SLACK:
            break
        if popped[-1][1] not in board.held[p]:
            near.append(popped[-1])
    chosen = min(near, key=lambda entry: (board.suits(entry[1], p, pos), entry), default=None)
    for entry in popped:
        if entry is not chosen:
            heapq.heappush(heap, entry)
        elif entry[0] < -1:
            heapq.heappush(heap, (entry[0] + 1, entry[1]))
    if chosen is None:
        return None
    board.need[chosen[1]] -= 1
    return chosen[1]


def _take_pooled(board: _Board, p: int, pos: int) -> str | None:
    if not board.pool:
        return None
    free = [v for v in board.eligible if v not in board.topped and v not in board.held[p]]
    if not free:
        return None
    v = min(free, key=lambda v: (board.suits(v, p, pos), v))
    board.pool -= 1
    board.topped.add(v)
    return v


_Vertex = str | int | None  # a node id, a partition, or (None) the pool
_Via = tuple[_Vertex, int | None]  # previous vertex, position a leaving member frees


def _augment(board: _Board) -> None:
    """Fill one hole along a cheapest augmenting path (0-1 BFS).

    A node with unmet need, or the pool while it lasts, is a source; a
    partition with a hole is a sink. Node -> partition: the node joins a
    partition it is not in. Partition -> node: a member leaves to make room,
    costing one extra move if its slot was carried over, none if this call
    filled it. Pool <-> node: a node takes or returns a one-above-floor
    allowance.
    """
    dist: dict[_Vertex, int] = {}
    parent: dict[_Vertex, _Via | None] = {}
    queue: deque[tuple[int, _Vertex]] = deque()

    def reach(vertex: _Vertex, d: int, cost: int, via: _Via | None) -> None:
        if vertex not in dist or d + cost < dist[vertex]:
            dist[vertex], parent[vertex] = d + cost, via
            if cost:
                queue.append((d + cost, vertex))
            else:
                queue.appendleft((d, vertex))

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
    """(next vertex, extra moves, position freed) for each residual edge."""
    if vertex is None:
        return [(v, 0, None) for v in board.eligible if v not in board.topped]
    if isinstance(vertex, str):
        back: list[tuple[_Vertex, int, int | None]] = [(None, 0, None)] if vertex in board.topped else []
        return back + [(p, 0, None) for p, held in enumerate(board.held) if vertex not in held]
    fresh = board.fresh[vertex]
    return [(w, int(w not in fresh), pos) for pos, w in enumerate(board.rows[vertex]) if w is not None]


def _apply_path(board: _Board, sink: int, parent: dict[_Vertex, _Via | None]) -> None:
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
        if prev is None:  # nxt draws on the pool
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
