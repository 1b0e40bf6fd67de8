"""Consensus on the cluster state: a replicated register of one value, with terms.

Pure: plain functions over plain data, no I/O. This is Elasticsearch's cluster
coordination (and Viewstamped Replication's view change) specialised to a
register holding the whole ``ClusterState``. The runtime (``legion.runtime``)
and the simulator (``legion.testing``) both call these functions; they only
carry messages, persist records and keep time.

Every node keeps a ``Record`` on disk, persisted (fsynced) before it answers
anything that changed it: ``current_term``, the newest state it ``accepted``
and the newest state it knows ``committed``. A state carries the ``term`` of
the leader that published it, its ``voters`` and the ``previous_voters`` of
the state it was built on.

- **Election.** A candidate (the lowest-id live voter, as a hint only: safety
  never depends on who campaigns) asks voters to join a term higher than any
  it knows (``start_join``). A voter that moves to a term refuses lower terms
  for good and answers with its accepted state (a ``Vote``). The candidate
  becomes leader once its votes hold a majority of *both* voter sets of the
  newest accepted state among them (``elected``), and adopts that state.
- **Publication.** A leader publishes one state at a time (``accept``): first
  the adopted state again under its own term (``republish``: it finishes what
  a previous leader may have left uncommitted), then each change built on its
  last committed state (``propose``), moving the voters towards the voting
  members by at most one member per publication. A state is committed once a
  majority of both its voter sets persisted it (``is_quorum``); only then is
  the operator answered, and ``learn_commit`` spreads it.

Why it is safe: two majorities of one voter set intersect, and consecutive
states share a voter set (a state's ``previous_voters`` are its parent's
``voters``), so a committed state is held by a voter of every later election's
quorum, and the newest accepted state among the votes descends from it.
Epochs rise by one per publication, so a committed state is unique per epoch
and committed states form one chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from legion import cluster_state as cs
from legion.cluster_state import ClusterState
from legion.errors import BadRequest

Version = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Record:
    """What one node persists about consensus; it must survive a crash intact."""

    current_term: int = 0
    accepted: ClusterState | None = None
    committed: ClusterState | None = None


@dataclass(frozen=True, slots=True)
class Vote:
    """A voter's join vote for ``term``: its newest accepted state (None if it has none),
    and the (term, epoch) of the newest state it knows committed."""

    voter: str
    term: int
    accepted: ClusterState | None
    committed: Version = (-1, -1)


def version(state: ClusterState | None) -> Version:
    """How accepted states are ordered: (term, epoch); no state at all is (-1, -1)."""
    return (-1, -1) if state is None else (state.term, state.epoch)


def founding_record(state: ClusterState) -> Record:
    """The record of the node that founds a cluster with ``state``: accepted and committed."""
    return Record(current_term=state.term, accepted=state, committed=state)


# --- quorums ---------------------------------------------------------------------


def majority(acks: Iterable[str], voters: Iterable[str]) -> bool:
    """True if ``acks`` hold more than half of ``voters`` (an empty set needs nothing)."""
    members = set(voters)
    return not members or 2 * len(members & set(acks)) > len(members)


def is_quorum(acks: Iterable[str], state: ClusterState) -> bool:
    """True if ``acks`` hold a majority of ``state``'s voters *and* of its previous voters."""
    acked = set(acks)
    return majority(acked, state.voters) and majority(acked, state.previous_voters)


def electorate(state: ClusterState) -> tuple[str, ...]:
    """Whom a leader or candidate must reach for ``state``: both voter sets."""
    return tuple(sorted(set(state.voters) | set(state.previous_voters)))


# --- election ------------------------------------------------------------------


def start_join(record: Record, term: int, voter: str) -> tuple[Record, Vote | None]:
    """A voter asked to join ``term``: moves there and votes if it is higher than its own, else refuses.

    The new record must be persisted before the vote is sent."""
    if term <= record.current_term:
        return record, None
    moved = replace(record, current_term=term)
    return moved, Vote(voter, term, record.accepted, version(record.committed))


def vote_reply(record: Record, vote: Vote | None) -> dict[str, object]:
    """The answer to a start-join, as JSON: the vote, or a refusal with the voter's term."""
    if vote is None:
        return {"vote": False, "term": record.current_term}
    accepted = None if vote.accepted is None else cs.to_dict(vote.accepted)
    return {"vote": True, "term": vote.term, "accepted": accepted, "committed": list(vote.committed)}


def vote_from_reply(voter: str, term: int, reply: Mapping[str, object]) -> Vote | None:
    """The vote in ``voter``'s answer to a start-join for ``term`` (None if it refused); BadRequest if malformed."""
    if not reply.get("vote"):
        return None
    accepted = reply.get("accepted")
    committed = reply.get("committed", (-1, -1))
    try:
        version = (int(committed[0]), int(committed[1]))  # type: ignore[index]
    except (TypeError, ValueError, IndexError, KeyError):
        raise BadRequest(f"malformed vote from {voter}: committed={committed!r}") from None
    return Vote(voter, term, None if accepted is None else cs.from_dict(accepted), version)


def newest_accepted(votes: Iterable[Vote]) -> ClusterState | None:
    """The newest accepted state among ``votes`` by (term, epoch)."""
    newest: ClusterState | None = None
    for vote in votes:
        if version(vote.accepted) > version(newest):
            newest = vote.accepted
    return newest


def elected(votes: Mapping[str, Vote]) -> ClusterState | None:
    """The state a candidate adopts if ``votes`` (by voter) elect it, else None.

    The votes must hold a majority of the voters of the newest accepted state
    among them and, unless a vote shows that state committed, of its previous
    voters too (once committed, no rival branch of its parent can be; as
    Elasticsearch's last committed and last accepted configurations). That
    state is what the new leader adopts."""
    newest = newest_accepted(votes.values())
    if newest is None or not majority(votes, newest.voters):
        return None
    committed = any(vote.committed == version(newest) for vote in votes.values())
    if not committed and not majority(votes, newest.previous_voters):
        return None
    return newest


def still_to_ask(votes: Mapping[str, Vote], asked: Iterable[str]) -> tuple[str, ...]:
    """Voters of the newest accepted state among ``votes`` that the candidate has not asked yet.

    A candidate whose own state is stale learns newer voter sets from the votes."""
    newest = newest_accepted(votes.values())
    if newest is None:
        return ()
    return tuple(v for v in electorate(newest) if v not in set(asked))


# --- publication -------------------------------------------------------------------


def next_voters(current: tuple[str, ...], wanted: tuple[str, ...]) -> tuple[str, ...]:
    """One step from ``current`` towards ``wanted``: add the lowest missing member, else drop the highest extra."""
    missing = sorted(set(wanted) - set(current))
    if missing:
        return tuple(sorted({*current, missing[0]}))
    extra = sorted(set(current) - set(wanted))
    if extra:
        return tuple(sorted(set(current) - {extra[-1]}))
    return current


def _content(state: ClusterState) -> ClusterState:
    """``state`` without what publication stamps on it, to tell whether a change changes anything."""
    return replace(state, term=0, epoch=0, committed_by="", previous_voters=(), parent_term=0)


def republish(adopted: ClusterState, term: int, leader: str) -> ClusterState:
    """A new leader's first publication: the state it adopted, again, under its own term."""
    return replace(
        adopted,
        term=term,
        epoch=adopted.epoch + 1,
        committed_by=leader,
        previous_voters=adopted.voters,
        parent_term=adopted.term,
    )


def propose(committed: ClusterState, changed: ClusterState, term: int, leader: str) -> ClusterState | None:
    """The next state to publish: ``changed`` (a change applied to ``committed``), built on
    ``committed``, with the voters one step nearer the voting members. None if nothing changes.

    The voters move towards the voting members of ``committed``, not of ``changed``: a member
    becomes a voter one publication after it is up, by which time it holds a committed state."""
    voters = next_voters(committed.voters, cs.voting_members(committed))
    if voters == committed.voters and _content(changed) == _content(committed):
        return None
    return replace(
        changed,
        term=term,
        epoch=committed.epoch + 1,
        committed_by=leader,
        voters=voters,
        previous_voters=committed.voters,
        parent_term=committed.term,
    )


def accept(record: Record, state: ClusterState) -> Record | None:
    """A voter handed a published ``state``: the new record to persist before acknowledging, or None to refuse.

    It accepts a state from its current term or a later one (a leader of that
    term exists, so moving there is safe) that is newer than what it holds."""
    if state.term < record.current_term or version(state) <= version(record.accepted):
        return None
    return replace(record, current_term=state.term, accepted=state)


def learn_commit(record: Record, state: ClusterState) -> Record:
    """The record once it knows ``state`` is committed (from the leader, a commit message or gossip).

    Committed states form one chain, so the newer by epoch wins; the accepted
    state and the term move forward with it, never back."""
    if record.committed is not None and state.epoch <= record.committed.epoch:
        return record
    accepted = state if version(state) > version(record.accepted) else record.accepted
    return Record(max(record.current_term, state.term), accepted, state)


def commit_accepted(record: Record, term: int, epoch: int) -> Record:
    """A commit message for (``term``, ``epoch``): commits the accepted state if it is that one."""
    if record.accepted is None or version(record.accepted) != (term, epoch):
        return record
    return learn_commit(record, record.accepted)
