"""TPC-H Q1, the pricing summary report, as a vectorised job over a `lineitem` dataset.

    SELECT l_returnflag, l_linestatus, sum(l_quantity), sum(l_extendedprice),
           sum(l_extendedprice * (1 - l_discount)), sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)),
           avg(l_quantity), avg(l_extendedprice), avg(l_discount), count(*)
    FROM lineitem WHERE l_shipdate <= date '1998-12-01' - interval '90' day
    GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus

Money is summed exactly, and fast. The decimal columns (two places) are read
as whole cents straight from Arrow's decimal buffers, so the arithmetic runs
on int64 arrays: price × (100 − discount) × (100 + tax) is at most ~1.1e11 per
row, and a sum over 6 million rows stays far below 2^63. The two grouping
columns hold one character each (TPC-H says so), so a group is the pair of
bytes as one integer, and Arrow's hash aggregation over integers does the
summing. The sums go back to decimals at the end; the averages are floats,
as in SQL. The map runs record batch by record batch over memory-mapped
files: nothing is copied but the few columns it reads.
"""

import datetime
import decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KEY = ["l_returnflag", "l_linestatus"]
CUTOFF_DAYS = (datetime.date(1998, 9, 2) - datetime.date(1970, 1, 1)).days
SUMS = ["sum_qty", "sum_base_price", "sum_disc_price", "sum_charge", "sum_disc", "count_order"]
# The scale (decimal places) of each sum before it becomes a decimal again.
SCALES = {"sum_qty": 2, "sum_base_price": 2, "sum_disc_price": 4, "sum_charge": 6, "sum_disc": 2}


def units(array):
    """A decimal128 array (no nulls) as its unscaled int64 values (cents for two places), without a copy."""
    words = np.frombuffer(array.buffers()[1], dtype=np.int64, count=2 * (array.offset + len(array)))
    return words[2 * array.offset :: 2]  # little-endian: the low word holds any value below 2^63


def days(array):
    """A date32 array as int32 days since 1970-01-01, without a copy."""
    return np.frombuffer(array.buffers()[1], dtype=np.int32, count=array.offset + len(array))[array.offset :]


def first_bytes(array):
    """The first byte of each value of a string array (here every value is one character)."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=array.offset + len(array) + 1)[array.offset :]
    if offsets[-1] - offsets[0] != len(array):
        raise ValueError("l_returnflag and l_linestatus must hold one character per row")
    return np.frombuffer(array.buffers()[2], dtype=np.uint8)[offsets[:-1]]


def summarise(batch):
    """One record batch's sums per group, the group being flag byte × 256 + status byte."""
    column = batch.column
    keep = days(column("l_shipdate")) <= CUTOFF_DAYS
    group = (first_bytes(column("l_returnflag")).astype(np.int32) * 256 + first_bytes(column("l_linestatus")))[keep]
    qty, price = units(column("l_quantity"))[keep], units(column("l_extendedprice"))[keep]
    disc, tax = units(column("l_discount"))[keep], units(column("l_tax"))[keep]
    disc_price = price * (100 - disc)
    table = pa.table({"g": group, "sum_qty": qty, "sum_base_price": price, "sum_disc_price": disc_price,
                      "sum_charge": disc_price * (100 + tax), "sum_disc": disc})  # fmt: skip
    aggregations = [(name, "sum") for name in SUMS[:-1]] + [("sum_qty", "count")]
    return table.group_by("g").aggregate(aggregations).rename_columns(["g", *SUMS])


def map(part):
    sums = pa.concat_tables([summarise(batch) for batch in part.to_batches()])
    sums = sums.group_by("g").aggregate([(name, "sum") for name in SUMS]).rename_columns(["g", *SUMS])
    codes = sums["g"].to_pylist()  # a handful of groups: Python is fine here
    keys = {"l_returnflag": pa.array([chr(c // 256) for c in codes]), "l_linestatus": pa.array([chr(c % 256) for c in codes])}
    return pa.table({**keys, **{name: sums[name] for name in SUMS}})


def reduce(t):
    sums = t.group_by(KEY).aggregate([(name, "sum") for name in SUMS])
    return sums.rename_columns(KEY + SUMS)


combine = reduce  # partial sums add up: the map side can pre-aggregate what one task saw


def finalize(t):
    t = t.sort_by([(k, "ascending") for k in KEY])
    count = t["count_order"].cast(pa.float64())
    columns = {k: t[k] for k in KEY}
    for name, scale in SCALES.items():
        columns[name] = _decimal(t[name], scale)
    columns["avg_qty"] = pc.divide(columns["sum_qty"].cast(pa.float64()), count)
    columns["avg_price"] = pc.divide(columns["sum_base_price"].cast(pa.float64()), count)
    columns["avg_disc"] = pc.divide(columns["sum_disc"].cast(pa.float64()), count)
    columns["count_order"] = t["count_order"]
    return pa.table(columns)


def _decimal(column, scale):
    """int64 units with ``scale`` implied places as decimal128(38, scale), exactly (a few rows: Python is fine)."""
    return pa.array([decimal.Decimal(v).scaleb(-scale) for v in column.to_pylist()], pa.decimal128(38, scale))
