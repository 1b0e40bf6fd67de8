"""Helpers for tests, the demo and the benchmark: TPC-H lineitem data and DuckDB's reference answers.

I/O: runs the ``tpchgen-cli`` command (a test dependency: it generates TPC-H
tables locally, nothing is downloaded) and DuckDB on the same Parquet file.
Public, like ``bytewax.testing``: a user's own tests can check their jobs the
same way.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from legion.errors import ConfigError

TPCHGEN_TIMEOUT_S = 600.0
Q1_SQL = """
SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty, sum(l_extendedprice) AS sum_base_price,
       sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
       sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
       avg(l_quantity) AS avg_qty, avg(l_extendedprice) AS avg_price, avg(l_discount) AS avg_disc,
       count(*) AS count_order
FROM read_parquet(?) WHERE l_shipdate <= DATE '1998-09-02'
GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus
"""
Q6_SQL = """
SELECT sum(l_extendedprice * l_discount) AS revenue FROM read_parquet(?)
WHERE l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01'
  AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24
"""
Q1_EXACT = ("l_returnflag", "l_linestatus", "sum_qty", "sum_base_price", "sum_disc_price", "sum_charge", "count_order")
Q1_FLOATS = ("avg_qty", "avg_price", "avg_disc")


def lineitem_parquet(directory: Path, scale: float) -> Path:
    """Generate TPC-H ``lineitem`` at ``scale`` as one Parquet file under ``directory`` (reused if there)."""
    target = Path(directory) / f"sf{scale:g}" / "lineitem.parquet"
    if target.exists():
        return target
    executable = shutil.which("tpchgen-cli") or str(Path(sys.executable).parent / "tpchgen-cli")
    if not Path(executable).exists():
        raise ConfigError("tpchgen-cli is not installed: pip install tpchgen-cli (it is in the test extras)")
    target.parent.mkdir(parents=True, exist_ok=True)
    argv = [executable, "parquet", "-s", f"{scale:g}", "--tables=lineitem", f"--output-dir={target.parent}"]
    subprocess.run(argv, check=True, capture_output=True, timeout=TPCHGEN_TIMEOUT_S)
    return target


def duckdb_rows(sql: str, parquet: Path) -> list[dict[str, Any]]:
    import duckdb  # a test dependency, the reference engine

    with duckdb.connect() as con:
        cursor = con.execute(sql, [str(parquet)])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]


def q1_reference(parquet: Path) -> list[dict[str, Any]]:
    return duckdb_rows(Q1_SQL, parquet)


def q6_reference(parquet: Path) -> list[dict[str, Any]]:
    return duckdb_rows(Q6_SQL, parquet)


def q1_differences(result: pa.Table, reference: list[dict[str, Any]]) -> list[str]:
    """How a Q1 result differs from DuckDB's: sums and counts must be equal to the cent, averages to 1e-9."""
    got = result.to_pylist()
    if len(got) != len(reference):
        return [f"{len(got)} groups, DuckDB has {len(reference)}"]
    problems = []
    for mine, theirs in zip(got, reference):
        for name in Q1_EXACT:
            exact = (lambda v: v) if name in ("l_returnflag", "l_linestatus") else (lambda v: Decimal(str(v)))
            if exact(mine[name]) != exact(theirs[name]):
                problems.append(f"{mine['l_returnflag']}{mine['l_linestatus']} {name}: {mine[name]} != {theirs[name]}")
        for name in Q1_FLOATS:
            if abs(float(mine[name]) - float(theirs[name])) > 1e-9 * max(1.0, abs(float(theirs[name]))):
                problems.append(f"{mine['l_returnflag']}{mine['l_linestatus']} {name}: {mine[name]} != {theirs[name]}")
    return problems


def word_lines(count: int, seed: int = 7) -> list[str]:
    """``count`` lines of words drawn from a small vocabulary with a skewed distribution (deterministic)."""
    import random

    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(300)] + ["the", "a", "legion", "map", "reduce", "Dask", "ÆØÅ"]
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
    return [" ".join(rng.choices(vocabulary, weights, k=rng.randint(0, 12))) for _ in range(count)]
