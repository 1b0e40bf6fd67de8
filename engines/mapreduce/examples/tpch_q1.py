"""TPC-H Q1, the pricing summary report, as a vectorised job over a `lineitem` dataset.

    SELECT l_returnflag, l_linestatus, sum(l_quantity), sum(l_extendedprice),
           sum(l_extendedprice * (1 - l_discount)), sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)),
           avg(l_quantity), avg(l_extendedprice), avg(l_discount), count(*)
    FROM lineitem WHERE l_shipdate <= date '1998-12-01' - interval '90' day
    GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus

Money is summed exactly. The decimal columns (two places) are read as whole
cents straight from Arrow's decimal buffers, so the arithmetic runs on int64
arrays: price × (100 − discount) × (100 + tax) is at most ~1.1e11 per row,
and a sum over 6 million rows stays far below 2^63. The sums go back to
decimals at the end; the averages are floats, as in SQL.
"""

import datetime
import decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KEY = ["l_returnflag", "l_linestatus"]
CUTOFF = pa.scalar(datetime.date(1998, 9, 2), pa.date32())
SUMS = ["sum_qty", "sum_base_price", "sum_disc_price", "sum_charge", "sum_disc", "count_order"]
# The scale (decimal places) of each sum before it becomes a decimal again.
SCALES = {"sum_qty": 2, "sum_base_price": 2, "sum_disc_price": 4, "sum_charge": 6, "sum_disc": 2}


def units(column):
    """A decimal128 column (no nulls) as its unscaled int64 values (cents for two places)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    words = np.frombuffer(array.buffers()[1], dtype=np.int64, count=2 * (array.offset + len(array)))
    return words[2 * array.offset :: 2]  # little-endian: the low word holds any value below 2^63


def map(part):
    keep = pc.less_equal(part["l_shipdate"], CUTOFF).to_numpy(zero_copy_only=False)
    flag = pc.dictionary_encode(part["l_returnflag"]).combine_chunks()
    status = pc.dictionary_encode(part["l_linestatus"]).combine_chunks()
    qty, price = units(part["l_quantity"]), units(part["l_extendedprice"])
    disc, tax = units(part["l_discount"]), units(part["l_tax"])
    disc_price = price * (100 - disc)
    charge = disc_price * (100 + tax)
    group = flag.indices.to_numpy() * len(status.dictionary) + status.indices.to_numpy()
    rows = {name: [] for name in KEY + SUMS}
    for g in np.unique(group[keep]):
        chosen = keep & (group == g)
        rows["l_returnflag"].append(flag.dictionary[g // len(status.dictionary)].as_py())
        rows["l_linestatus"].append(status.dictionary[g % len(status.dictionary)].as_py())
        for name, values in (("sum_qty", qty), ("sum_base_price", price), ("sum_disc_price", disc_price),
                             ("sum_charge", charge), ("sum_disc", disc)):
            rows[name].append(int(values.sum(where=chosen)))
        rows["count_order"].append(int(chosen.sum()))
    return pa.table({name: pa.array(values, pa.int64() if name in SUMS else pa.string()) for name, values in rows.items()})


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
