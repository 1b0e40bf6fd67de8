"""Seeds for the simulation tests: ``--seed N`` replays one, ``--sim-seeds K`` sweeps K.

Every test here that takes a ``seed`` argument is run once per seed: the
random sweep over ``range(--sim-seeds)`` (default 300), the hand-written
scenarios over a handful. ``pytest tests/sim --seed N`` runs every such test
with seed N only, which is how a failure reported by the sweep is replayed; a
replay prints the whole trace of the run, not just its tail.
"""

from __future__ import annotations

import pytest

from legion.testing.scenario import TRACE_TAIL_LINES
from tests.sim.support import SimReport

SWEEP_SEEDS_DEFAULT = 300
SCENARIO_SEEDS_DEFAULT = 5
# The data-path simulator runs about 100 seeds a second on one core (tests/sim/test_data_path.py).
DATA_SWEEP_SEEDS_DEFAULT = 2000


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("legion-sim", "Legion simulation")
    group.addoption("--seed", type=int, default=None, help="run the simulation tests with this seed only")
    group.addoption(
        "--sim-seeds",
        type=int,
        default=SWEEP_SEEDS_DEFAULT,
        help=f"how many seeds the random sweep runs (default {SWEEP_SEEDS_DEFAULT})",
    )
    group.addoption(
        "--data-sim-seeds",
        type=int,
        default=DATA_SWEEP_SEEDS_DEFAULT,
        help=f"how many seeds the data-path sweep runs (default {DATA_SWEEP_SEEDS_DEFAULT})",
    )


def replaying(config: pytest.Config) -> bool:
    """True when ``--seed`` picked one seed to replay."""
    return config.getoption("--seed", default=None) is not None


@pytest.fixture
def sim_report(request: pytest.FixtureRequest, seed: int) -> SimReport:
    """``with sim_report(sim):`` makes a failure name the seed and the command that replays it.

    A replay (``--seed``) shows the whole trace; otherwise its last lines."""
    test = request.node.nodeid.split("[", 1)[0]
    replay = f"pytest tests/sim --seed {seed}   (this test alone: pytest {test} --seed {seed})"
    if replaying(request.config):
        return SimReport(replay, trace_lines=None)
    return SimReport(replay, trace_lines=TRACE_TAIL_LINES)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" not in metafunc.fixturenames:
        return
    chosen = metafunc.config.getoption("--seed", default=None)
    if chosen is not None:
        seeds = [chosen]
    elif metafunc.definition.get_closest_marker("sweep"):
        seeds = list(range(metafunc.config.getoption("--sim-seeds", default=SWEEP_SEEDS_DEFAULT)))
    else:
        seeds = list(range(SCENARIO_SEEDS_DEFAULT))
    metafunc.parametrize("seed", seeds)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sweep: runs over range(--sim-seeds) seeds instead of a handful")
