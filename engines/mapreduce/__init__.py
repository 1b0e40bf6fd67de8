"""Map/reduce over datasets stored in the partitions, run on Dask workers beside the data.

A *dataset* is rows (from Parquet, CSV or JSON lines) spread over the
cluster's partitions — by the stable hash of a key column, or evenly in row
batches — and stored on every replica as memory-mapped Arrow IPC files. A
*job* is a Python file: ``map`` over one partition's table, ``KEY`` to group
by, optional ``combine``, ``reduce`` per bucket of keys, optional
``finalize`` (or the record form: ``mapper``/``combiner``/``reducer``). Each
node runs a Dask worker beside it; every map task is restricted to the worker
of a live node holding its partitions and reads their files there — the code
travels, the data does not.

Quickstart, on a local cluster (``legion cluster up`` starts its Dask scheduler)::

    legion mr ingest lineitem lineitem.parquet          # progress bar with rows/s
    legion mr run engines/mapreduce/examples/tpch_q1.py --dataset lineitem
    legion mr datasets

or with no cluster at all::

    legion mr run engines/mapreduce/examples/tpch_q1.py --input lineitem.parquet

From Python::

    from legion import Client
    from engines.mapreduce import MRClient

    mr = MRClient(Client.connect(".legion"))
    status, table = mr.run(open("job.py").read(), "lineitem")

Modules: ``rows`` (pure: types, the stable hash, payloads), ``datasets``
(pure: operations and the catalog), ``job_file`` and ``record_form`` (loading
job files — in workers only), ``shuffle`` (pure: the stages on tables),
``planner`` (pure: data-local map tasks), ``report`` (pure: progress and the
job report), ``tasks`` (what workers run), ``job_runner`` (drives Dask),
``dask_adapter`` (the one module importing ``distributed``), ``local_run``
(jobs over files on an embedded Dask cluster), ``partition_files`` and
``catalog_store`` (a node's files), ``ingest`` (rows into batch operations),
``job_service`` (a node's jobs), ``engine`` (the contract), ``handlers``
(HTTP), ``client`` and ``cli``, ``testing`` (TPC-H data and DuckDB's answers),
``examples/`` (job files).
"""

from engines.mapreduce.client import JobError, MRClient

__all__ = ["JobError", "MRClient"]
