"""Mutation tests: each deliberate bug in consensus is found by the random sweep.

Each test injects one bug into the simulated cluster — in the simulator's shell
(``SimNode``) or in the core it calls (``legion.consensus``, patched through
the module, so every simulated node runs the broken variant) — and sweeps the
generated scenarios of ``legion.testing.scenario`` until one fails. A checker
that stayed silent under these bugs would prove nothing when it stays silent
on the real code. The bugs exist only here, never in a code path users can hit.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from legion import consensus as cn
from legion.testing import scenario
from legion.testing.scenario import SimulationFailed
from legion.testing.sim_node import SimNode

# The sweep stops at the first failing seed; a bug it misses for this many seeds fails the test.
SEEDS_MAX = 300
# A disk write without fsync lands this long after the answer was sent (and is lost in a crash).
LAZY_WRITE_MS = 40


def first_violation() -> tuple[int, str]:
    """The first seed whose scenario breaks an invariant, and the checker's message."""
    for seed in range(SEEDS_MAX):
        try:
            scenario.run(scenario.generate(seed), trace_lines=0)
        except SimulationFailed as failure:
            return seed, str(failure.error)
    raise AssertionError(f"no violation in {SEEDS_MAX} seeds: the checkers did not notice the bug")


def test_acknowledging_before_persisting_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    def lazy_persist(self: SimNode) -> None:
        record, incarnation = self.record, self.incarnation

        def write() -> None:
            if self.incarnation == incarnation and cn.version(record.accepted) >= cn.version(self.disk.accepted):
                self.disk = record

        self.sim.kernel.at(self.now_ms + LAZY_WRITE_MS, write)

    monkeypatch.setattr(SimNode, "persist", lazy_persist)
    _seed, message = first_violation()
    assert "on disk" in message or "went back" in message, message


def test_forgetting_the_term_on_a_crash_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    real_forget = SimNode.forget

    def forgetful(self: SimNode) -> None:
        real_forget(self)
        accepted = self.record.accepted
        if accepted is not None:
            self.record = replace(self.record, current_term=accepted.term)

    monkeypatch.setattr(SimNode, "forget", forgetful)
    _seed, message = first_violation()
    assert "term went back" in message or "two leaders" in message, message


def test_skipping_the_adoption_of_the_newest_accepted_state_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    real_elected = cn.elected

    def own_state(votes: dict[str, cn.Vote]) -> object:
        adopted = real_elected(votes)
        # The candidate's own vote comes first: it keeps its own state instead of the newest.
        return None if adopted is None else next(iter(votes.values())).accepted

    monkeypatch.setattr(cn, "elected", own_state)
    _seed, message = first_violation()
    assert "fork: " in message or "build on" in message or "acknowledged" in message, message


def test_a_quorum_over_one_voter_set_only_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    def one_set_elected(votes: dict[str, cn.Vote]) -> object:
        newest = cn.newest_accepted(votes.values())
        return newest if newest is not None and cn.majority(votes, newest.voters) else None

    monkeypatch.setattr(cn, "is_quorum", lambda acks, state: cn.majority(acks, state.voters))
    monkeypatch.setattr(cn, "elected", one_set_elected)
    _seed, message = first_violation()
    assert "no majority" in message or "build on" in message or "acknowledged" in message, message
