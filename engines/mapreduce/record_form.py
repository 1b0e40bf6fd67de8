"""The record form of a job (``mapper``/``combiner``/``reducer``) as a vectorised job.

Pure: turns the user's per-row functions into the table functions the
shuffle runs, so one code path runs both forms. Calls the user's functions
(inside a Dask worker, see ``job_file``). Python runs per row here — that is
the record form's price for its convenience; the vectorised form avoids it.

A map output is a table ``{key, value}``; ``combiner`` and ``reducer`` see
each key's values as a list, in the order they arrived.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa

from engines.mapreduce.job_file import FORM_RECORDS, Job, JobCodeError

KEY_COLUMN = "key"
VALUE_COLUMN = "value"


def job(namespace: dict[str, Any], reducers: int | None) -> Job:
    """The vectorised ``Job`` equivalent to a record-form job file's functions."""
    mapper = namespace.get("mapper")
    if not callable(mapper):
        raise JobCodeError("load", "a record-form job defines mapper(row)")
    combiner, reducer = namespace.get("combiner"), namespace.get("reducer")
    if callable(combiner) and not callable(reducer):
        raise JobCodeError("load", "a record-form job with a combiner needs a reducer")
    return Job(
        form=FORM_RECORDS,
        key=(KEY_COLUMN,) if callable(reducer) else (),
        reducers=reducers,
        map=_map(mapper),
        combine=_grouped(combiner) if callable(combiner) else None,
        reduce=_grouped(reducer) if callable(reducer) else None,
    )


def _map(mapper: Callable[[dict[str, Any]], Iterable[Any] | None]) -> Callable[[pa.Table], pa.Table]:
    def run(part: pa.Table) -> pa.Table:
        keys: list[Any] = []
        values: list[Any] = []
        for row in part.to_pylist():
            for pair in mapper(row) or ():
                if not isinstance(pair, tuple) or len(pair) != 2:
                    raise TypeError(f"mapper must yield (key, value) pairs, it yielded {pair!r}")
                keys.append(pair[0])
                values.append(pair[1])
        return _table(keys, values)

    return run


def _grouped(function: Callable[[Any, list[Any]], Any]) -> Callable[[pa.Table], pa.Table]:
    """A table function that calls ``function(key, values)`` once per key, in first-seen order."""

    def run(table: pa.Table) -> pa.Table:
        groups: dict[Any, list[Any]] = {}
        for key, value in zip(table.column(KEY_COLUMN).to_pylist(), table.column(VALUE_COLUMN).to_pylist()):
            groups.setdefault(key, []).append(value)
        keys = list(groups)
        return _table(keys, [function(key, groups[key]) for key in keys])

    return run


def _table(keys: list[Any], values: list[Any]) -> pa.Table:
    try:
        key_array = pa.array(keys)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise TypeError(f"record-form keys must all be of one simple type (str, int, float, bytes, date): {exc}") from None
    try:
        value_array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise TypeError(f"record-form values must be of types Arrow can hold in one column: {exc}") from None
    return pa.table({KEY_COLUMN: key_array, VALUE_COLUMN: value_array})
