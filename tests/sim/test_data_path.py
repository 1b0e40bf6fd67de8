"""The data path in simulation: writes, hints, anti-entropy and handoff converge and lose no acknowledged write.

``legion.testing.data_sim`` runs 3-5 nodes with W=2, N=3 under message loss,
duplication and reordering, crashes and restarts, network splits, joins and
leaves; ``legion.testing.data_checkers`` checks every acknowledgement, dropped
hint and dropped copy as it happens, and after healing that every replica of
every partition is identical and holds each key's last acknowledged write.

- the sweep runs ``--data-sim-seeds`` generated scenarios (default 2000, about
  20 s; sweep 10000 after changing the data path);
  ``pytest tests/sim/test_data_path.py --seed N`` replays one with its whole trace;
- each ``Mutations`` bug is found by a sweep of at most ``MUTATION_SEEDS_MAX`` seeds;
- hand-written scenarios pin the paths one at a time (hinted handoff reaching
  a restarted node; a join whose new owner misses writes behind a split).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import pytest

from legion.keyspace import partition_of
from legion.testing import data_scenario
from legion.testing.data_checkers import DataChecker, check_acknowledged, last_acknowledged
from legion.testing.data_scenario import DataScenario, DataSimulationFailed, settle
from legion.testing.data_sim import DataSimulation, Mutations
from legion.testing.scenario import Action

MUTATION_SEEDS_MAX = 400
FAILURES_SHOWN_MAX = 10
SWEEP_WORKERS_MAX = 4
KEYS = tuple(f"k{i}".encode() for i in range(8))


def sweep(seeds: list[int], trace_lines: int | None) -> tuple[list[tuple[int, str]], Counter[str]]:
    """Run the scenarios of ``seeds``: the failures (seed, report) and the paths they took, counted."""
    failures: list[tuple[int, str]] = []
    exercised: Counter[str] = Counter()
    for seed in seeds:
        try:
            sim = data_scenario.run(data_scenario.generate(seed), trace_lines=trace_lines)
        except DataSimulationFailed as failure:
            failures.append((seed, str(failure)))
            continue
        exercised.update(sim.stats)
        exercised["messages duplicated"] += sim.kernel.duplicated
    return failures, exercised


def test_generated_schedules_converge_with_every_acknowledged_write(request: pytest.FixtureRequest) -> None:
    chosen = request.config.getoption("--seed", default=None)
    seeds = [chosen] if chosen is not None else list(range(request.config.getoption("--data-sim-seeds")))
    trace_lines = None if chosen is not None else data_scenario.TRACE_TAIL_LINES
    started = time.perf_counter()
    # Seeds are independent: a sweep uses every core (the rest of the suite runs on one).
    workers = min(os.cpu_count() or 1, SWEEP_WORKERS_MAX, len(seeds))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(sweep, [seeds[i::workers] for i in range(workers)], [trace_lines] * workers))
    failures = sorted(failure for part_failures, _ in parts for failure in part_failures)
    exercised: Counter[str] = sum((part for _, part in parts), Counter())
    elapsed = time.perf_counter() - started
    print(f"\ndata-path sweep: {len(seeds)} seeds in {elapsed:.1f} s ({len(seeds) / elapsed:.0f}/s, {workers} processes); {dict(exercised)}")
    if failures:
        seeds_failed = [seed for seed, _ in failures]
        pytest.fail(
            f"{len(failures)} of {len(seeds)} seeds failed: {seeds_failed[:FAILURES_SHOWN_MAX]}; the first:\n{failures[0][1]}",
            pytrace=False,
        )
    if chosen is None:
        # A sweep that never took a path proves nothing about it.
        paths = ("hints delivered", "hints readdressed", "anti-entropy repairs", "partitions pulled",
                 "partitions handed over", "writes forwarded", "crashes", "removes", "messages duplicated")
        for path in paths:
            assert exercised[path] > 0, f"the sweep never exercised {path}: {dict(exercised)}"


@pytest.mark.parametrize(
    ("mutation", "symptom"),
    [
        ("drop_hint_before_ack", "hint dropped before its owner acknowledged it"),
        ("aae_one_direction", "replicas differ"),
        ("ack_before_durable", "durable before acknowledged"),
        # What the runtime did before AntiEntropy.hand_over (dropped right after the commit): a write that
        # a coordinator with an older state sent to the old owner counts towards W, then its copy goes.
        ("drop_at_commit", "durable before acknowledged|fewer than W copies|acknowledged write lost"),
        # A hint whose owner no longer owns the partition is refused, kept and retried for ever.
        ("no_readdress", r"still keeps \d+ hints"),
    ],
)
def test_the_sweep_finds_each_broken_rule(mutation: str, symptom: str) -> None:
    mutations = Mutations(**{mutation: True})
    for seed in range(MUTATION_SEEDS_MAX):
        try:
            data_scenario.run(data_scenario.generate(seed), mutations)
        except DataSimulationFailed as failure:
            assert re.search(symptom, str(failure.error)), str(failure)
            return
    pytest.fail(f"{MUTATION_SEEDS_MAX} seeds with {mutation} found nothing: the checkers have no teeth for it")


def _seeds(request: pytest.FixtureRequest, count: int = 5) -> list[int]:
    chosen = request.config.getoption("--seed", default=None)
    return [chosen] if chosen is not None else list(range(count))


def _simulation(seed: int, *, anti_entropy: bool = True) -> DataSimulation:
    return DataSimulation(
        seed, nodes=("n1", "n2", "n3"), partitions=4, loss=0.02, duplicate=0.02,
        observers=[DataChecker()], anti_entropy=anti_entropy,
    )


def test_writes_made_while_a_node_is_down_reach_it_through_hints(request: pytest.FixtureRequest) -> None:
    for seed in _seeds(request):
        # No anti-entropy: what n3 holds after its restart came from hints alone.
        sim = _simulation(seed, anti_entropy=False)
        sim.crash("n3")
        sim.write(writers=2, until_ms=1_000, keys=KEYS)
        sim.run_until(1_500)
        acknowledged = last_acknowledged(sim)
        assert acknowledged, f"seed {seed}: no write was acknowledged with n3 down"
        assert sim.stats["hints kept"] > 0, f"seed {seed}: nobody kept a hint for n3"
        sim.restart("n3")
        sim.run_until(sim.now_ms + 2_000)
        n3 = sim.nodes["n3"]
        missing = [op for op in acknowledged.values() if not n3.holds(op)]
        assert not missing, f"seed {seed}: n3 lacks {len(missing)} acknowledged writes, e.g. {missing[0]}"
        assert not any(n.hints for n in sim.nodes.values()), f"seed {seed}: hints are left after delivery"


def test_a_join_whose_new_owner_misses_writes_converges(request: pytest.FixtureRequest) -> None:
    """Issue 7 defect 2's shape: the new owner is cut off while writes go to the old owners."""
    for seed in _seeds(request):
        sim = _simulation(seed)
        sim.write(writers=3, until_ms=2_000, keys=KEYS)
        sim.run_until(200)
        sim.join("n4")
        sim.run_until(260)
        sim.split(["n4"])
        sim.run_until(1_200)
        sim.heal()
        sim.run_until(2_000)
        settle(sim)
        check_acknowledged(sim)
        assert sim.committed.member("n4").status == "up"
        assert any("n4" in owners for owners in sim.committed.placement)


def test_a_seed_replays_the_same_run() -> None:
    scenario = data_scenario.generate(11)
    first, second = data_scenario.run(scenario), data_scenario.run(scenario)
    assert first.trace == second.trace
    assert first.acknowledged == second.acknowledged


def test_a_failure_names_its_seed_and_replay_command() -> None:
    scenario = DataScenario(
        seed=3, nodes=("n1", "n2", "n3"), partitions=4, loss=0.0, duplicate=0.0, writers=2, keys=KEYS,
        actions=(Action(300, "crash", "n2"), Action(900, "restart", "n2")),
    )
    with pytest.raises(DataSimulationFailed) as caught:
        data_scenario.run(scenario, Mutations(ack_before_durable=True))
    message = str(caught.value)
    assert message.startswith("seed 3, t=")
    assert "replay: pytest tests/sim/test_data_path.py --seed 3" in message
    assert "durable before acknowledged" in message


def test_a_hint_for_a_removed_owner_keeps_its_copy() -> None:
    """A coordinator that has not heard of a removal yet picks a fallback for the removed owner and counts it
    towards W; the fallback, which has heard, must not simply drop the hint (``hints.replay_owners`` calls it
    orphaned): with the other copies failed, it is one of the two the acknowledgement promised."""
    for mutations, fails in ((Mutations(drop_orphaned_hints=True), True), (Mutations(), False)):
        sim = DataSimulation(0, nodes=("n1", "n2", "n3", "n4", "n5"), partitions=4, observers=[DataChecker()],
                             mutations=mutations)
        a, b, c = sim.committed.placement[0]
        sim.crash(c)
        sim.remove(c)
        sim.run_until(2_000)
        assert sim.committed.member(c).status == "removed", "the removal has not committed"
        stale = next(s for s in sim.history.values() if s.pending is not None)
        [gainer] = [n for n in stale.pending[0] if n not in stale.placement[0]]
        [fallback] = [n for n in sim.nodes if n not in (a, b, c, gainer)]
        sim.crash(b)
        sim.crash(gainer)
        coordinator = sim.nodes[a]
        coordinator.state = stale  # it has not heard of the commit yet
        coordinator.suspects[c] = sim.now_ms + 60_000
        key = next(k for k in (f"k{i}".encode() for i in range(100)) if partition_of(k, 4) == 0)
        sim.write_through(a, key, b"v")
        if fails:
            with pytest.raises(AssertionError, match="fewer than W copies left: .* dropped its hint .* for removed"):
                sim.run_until(sim.now_ms + 1_000)
            continue
        sim.run_until(sim.now_ms + 1_000)
        assert [op.key for op in sim.acknowledged] == [key], "the write was not acknowledged"
        assert sim.stats["hints readdressed"] > 0
        coordinator.adopt(sim.committed)  # gossip catches up
        settle(sim)
        check_acknowledged(sim)
