"""Public testing helpers for Legion and for engine authors.

Pure: nothing here opens a socket, starts a thread or reads the wall clock.

- ``sim_kernel``  a discrete-event kernel: fake clock, event heap, generator
                  processes, a network that delays, loses and splits messages;
- ``sim_node``    one simulated node running the runtime's protocol (gossip,
                  claimant duties, handoff, join / remove forwarding) over the
                  same pure core (``cluster_state``, ``membership``, ``placement``);
- ``sim``         ``Simulation``: a seeded cluster of such nodes, the operator's
                  actions (start, join, remove, crash, restart, split, heal) and
                  ``Observer`` hooks;
- ``checkers``    the invariants (valid placements, data safety of handoff,
                  convergence, epoch order, one history), checked as the
                  simulation runs;
- ``scenario``    scenarios generated from a seed, run with a quiet period and
                  reported with the command that replays them.

Quickstart::

    from legion.testing import scenario
    scenario.run(scenario.generate(seed=42))   # SimulationFailed (an AssertionError) names the seed

``tests/sim`` runs many seeds; ``pytest tests/sim --seed N`` replays one.
"""
