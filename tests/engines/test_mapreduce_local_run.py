"""Jobs over files on an embedded Dask cluster (``legion mr run --input``): TPC-H against DuckDB, word count, errors."""

from __future__ import annotations

import collections
import json
from decimal import Decimal

import pyarrow.parquet as pq
import pytest

from engines.mapreduce.examples import path as example, source
from engines.mapreduce.job_runner import JobFailed
from engines.mapreduce.local_run import run_local
from engines.mapreduce.testing import lineitem_parquet, q1_differences, q1_reference, q6_reference, word_lines

SCALE = 0.01


@pytest.fixture(scope="module")
def lineitem(tmp_path_factory):
    return lineitem_parquet(tmp_path_factory.mktemp("tpch"), SCALE)


def test_q1_and_q6_over_a_parquet_file_equal_duckdb_to_the_cent(lineitem):
    q1, report = run_local(source("tpch_q1"), [lineitem], threads=2)
    assert q1_differences(q1, q1_reference(lineitem)) == []
    assert report.rows_in == pq.ParquetFile(lineitem).metadata.num_rows and report.rows_out == 4
    q6, _ = run_local(source("tpch_q6"), [lineitem], threads=2)
    assert q6["revenue"].to_pylist() == [Decimal(str(q6_reference(lineitem)[0]["revenue"]))]


def test_word_count_over_json_lines_equals_a_counter(tmp_path):
    lines = word_lines(3_000)
    data = tmp_path / "lines.jsonl"
    data.write_text("".join(json.dumps({"line": line}) + "\n" for line in lines))
    result, report = run_local(source("word_count"), [data], reducers=3)
    assert dict(zip(result["key"].to_pylist(), result["value"].to_pylist())) == collections.Counter(
        word for line in lines for word in line.lower().split()
    )
    assert (report.rows_in, report.reduce_tasks) == (3_000, 3)


def test_a_raising_job_returns_the_user_s_traceback(lineitem):
    code = "def map(part):\n    return explode(part)\n\ndef explode(part):\n    raise KeyError('no such column')\n"
    with pytest.raises(JobFailed) as raised:
        run_local(code, [lineitem])
    failure = raised.value.failure
    assert failure.stage == "map" and "KeyError" in failure.message
    assert "explode(part)" in failure.traceback and "raise KeyError('no such column')" in failure.traceback


def test_the_cli_runs_a_job_over_files_without_a_cluster(legion_cli, lineitem, tmp_path):
    out = tmp_path / "q1.parquet"
    run = legion_cli("mr", "run", str(example("tpch_q1")), "--input", str(lineitem), "--out", str(out), "--json")
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["result_rows"] == 4 and answer["report"]["data_local_percent"] == 100.0
    import pyarrow.parquet as pq

    assert q1_differences(pq.read_table(out), q1_reference(lineitem)) == []
    failed = legion_cli("mr", "run", str(tmp_path / "missing.py"), "--input", str(lineitem))
    assert failed.returncode == 1 and "cannot read the job file" in failed.stderr
