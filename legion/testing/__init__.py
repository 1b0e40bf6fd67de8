"""Public testing helpers for Legion and for engine authors.

For engine authors:

- ``convergence``  the convergence kit: one set of operations delivered to
                   several fresh replicas of an engine in shuffled orders,
                   with duplicates, re-batching, a restart and a handoff
                   (fold plus an overlapping log tail), every replica's state
                   compared (``check_convergence``, ``assert_converges``);
- ``cluster``      ``running_cluster``: real node processes on loopback
                   serving the engines under test, with ``kill`` (-9) and
                   ``restart`` of one node;
- ``pytest_plugin`` the ``legion_cluster`` fixture over ``running_cluster``
                   (``pytest_plugins = ["legion.testing.pytest_plugin"]``).

The simulator (pure: nothing below opens a socket, starts a thread or reads
the wall clock):

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

The data-path simulator, on the same kernel (writes with W=2 of N=3, hinted
handoff, anti-entropy, partition handoff; messages lost, duplicated and
reordered, nodes crashed and restarted, the network split):

- ``data_sim``       ``DataSimulation``: 3-5 nodes, clients, a membership
                     oracle; its docstring says what is real (routing,
                     replication, hints, hash_tree, cluster_state) and what is
                     modelled; ``Mutations`` break it on purpose;
- ``data_node``      one node: durable replica and hint store, the coordinator,
                     hint replay, anti-entropy exchanges, pulling and handing
                     over partitions;
- ``data_checkers``  the invariants: durable before acknowledged, hints and
                     copies dropped only once held elsewhere, and after healing
                     identical replicas holding every acknowledged write;
- ``data_scenario``  scenarios generated from a seed, healed, judged, and
                     reported with the command that replays them.

Quickstart::

    from legion.testing import scenario
    scenario.run(scenario.generate(seed=42))   # SimulationFailed (an AssertionError) names the seed

``tests/sim`` runs many seeds; ``pytest tests/sim --seed N`` replays one
(``pytest tests/sim/test_data_path.py --seed N`` a data-path seed).
"""
