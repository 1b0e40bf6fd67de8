"""TPC-H Q6, the forecasting revenue change, as a map-only vectorised job over a `lineitem` dataset.

    SELECT sum(l_extendedprice * l_discount) AS revenue FROM lineitem
    WHERE l_shipdate >= date '1994-01-01' AND l_shipdate < date '1995-01-01'
      AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24

No KEY and no reduce: every map task returns its partial sum (one row) and
``finalize`` adds them up. The sum is of exact decimals (four places).
"""

import datetime
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

LOW = pa.scalar(datetime.date(1994, 1, 1), pa.date32())
HIGH = pa.scalar(datetime.date(1995, 1, 1), pa.date32())
MONEY = pa.decimal128(15, 2)


def map(part):
    keep = pc.and_(
        pc.and_(pc.greater_equal(part["l_shipdate"], LOW), pc.less(part["l_shipdate"], HIGH)),
        pc.and_(
            pc.and_(pc.greater_equal(part["l_discount"], pa.scalar(Decimal("0.05"), MONEY)),
                    pc.less_equal(part["l_discount"], pa.scalar(Decimal("0.07"), MONEY))),
            pc.less(part["l_quantity"], pa.scalar(Decimal(24), MONEY)),
        ),
    )
    chosen = part.filter(keep)
    revenue = pc.sum(pc.multiply(chosen["l_extendedprice"], chosen["l_discount"]))
    return pa.table({"revenue": pa.array([revenue.as_py()], pa.decimal128(38, 4))})


def finalize(t):
    return pa.table({"revenue": pa.array([pc.sum(t["revenue"]).as_py()], pa.decimal128(38, 4))})
