"""Example job files, one per task, written to be read: TPC-H Q1 and Q6 (vectorised) and a word count (record form).

They are plain job files — ``legion mr run engines/mapreduce/examples/tpch_q1.py --dataset lineitem`` —
and the tests, the demo and the benchmark run them. ``path(name)`` finds one on disk.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).parent


def path(name: str) -> Path:
    """The job file ``name`` (e.g. ``"tpch_q1"``) of this folder."""
    return FOLDER / f"{name}.py"


def source(name: str) -> str:
    return path(name).read_text()
