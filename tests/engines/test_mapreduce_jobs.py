"""Job files and the shuffle, in process: both forms, every stage, the user's traceback (no Dask, no files)."""

from __future__ import annotations

import collections

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.mapreduce import job_file, shuffle
from engines.mapreduce.examples import source
from engines.mapreduce.job_file import JobCodeError
from engines.mapreduce.testing import word_lines
from legion.errors import BadRequest


def run_in_process(job: job_file.Job, parts: list[pa.Table], tasks: int, reducers: int) -> pa.Table:
    """The stages as the runner chains them, without Dask: maps over groups of parts, buckets, reduces."""
    groups = [parts[i::tasks] for i in range(tasks)]
    outputs = [shuffle.run_map(job, group, reducers) for group in groups]
    if job.map_only:
        return shuffle.run_finalize(job, [b for o in outputs for b in o.buckets])
    reduced = [shuffle.run_reduce(job, [o.buckets[r] for o in outputs]) for r in range(reducers)]
    return shuffle.run_finalize(job, reduced)


def test_word_count_in_record_form_equals_a_counter_whatever_the_tasks_and_reducers():
    lines = word_lines(2_000)
    expected = collections.Counter(word for line in lines for word in line.lower().split())
    parts = [pa.table({"line": lines[i : i + 300]}) for i in range(0, len(lines), 300)]
    job = job_file.load_job(source("word_count"))
    assert job.form == job_file.FORM_RECORDS and job.key == ("key",)
    for tasks, reducers in ((1, 1), (3, 4), (7, 13)):
        result = run_in_process(job, parts, tasks, reducers)
        assert dict(zip(result["key"].to_pylist(), result["value"].to_pylist())) == expected


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.tuples(st.sampled_from(["a", "b", "c", None]), st.integers(-1000, 1000)), max_size=80),
    tasks=st.integers(1, 4),
    reducers=st.integers(1, 5),
)
def test_a_vectorised_group_sum_equals_one_group_by_over_all_rows(values, tasks, reducers):
    code = """
KEY = ["k"]
def map(part):
    return part
def combine(t):
    return t.group_by("k").aggregate([("v", "sum")]).rename_columns(["k", "v"])
def reduce(t):
    return t.group_by("k").aggregate([("v", "sum")]).rename_columns(["k", "v"])
def finalize(t):
    return t.sort_by([("k", "ascending")])
"""
    table = pa.table({"k": pa.array([k for k, _ in values], pa.string()), "v": pa.array([v for _, v in values], pa.int64())})
    parts = [table.slice(i, 10) for i in range(0, len(values), 10)]
    result = run_in_process(job_file.load_job(code), parts, tasks, reducers)
    expected = table.group_by("k").aggregate([("v", "sum")]).rename_columns(["k", "v"]).sort_by([("k", "ascending")])
    if values:
        assert result.to_pylist() == expected.to_pylist()
    else:
        assert result.num_rows == 0


def test_a_map_only_job_concatenates_every_map_output():
    job = job_file.load_job("import pyarrow.compute as pc\ndef map(part):\n    return part.filter(pc.greater(part['x'], 2))\n")
    assert job.map_only
    parts = [pa.table({"x": [1, 2, 3]}), pa.table({"x": [4, 5]})]
    assert sorted(run_in_process(job, parts, 2, 1)["x"].to_pylist()) == [3, 4, 5]


@pytest.mark.parametrize(
    "code, stage, fragment",
    [
        ("def map(part):\n    return 1 / 0\n", "map", "ZeroDivisionError"),
        ("import json\nKEY = 'k'\ndef map(p):\n    return p\ndef reduce(t):\n    raise ValueError('bad reduce')\n", "reduce", "bad reduce"),
        ("def map(p):\n    return [1, 2]\n", "map", "must return a pyarrow.Table"),
        ("KEY = ['nope']\ndef map(p):\n    return p\ndef reduce(t):\n    return t\n", "map", "KEY column"),
        ("def mapper(row):\n    yield row['k'], undefined_name\ndef reducer(k, vs):\n    return 0\n", "map", "NameError"),
    ],
)
def test_user_errors_name_the_stage_and_carry_the_user_s_traceback(code, stage, fragment):
    job = job_file.load_job(code)
    with pytest.raises(JobCodeError) as raised:
        run_in_process(job, [pa.table({"k": ["a"], "v": [1]})], 1, 2)
    assert raised.value.stage == stage
    assert fragment in raised.value.message
    if "Error" in fragment:
        assert 'File "<job:' in raised.value.user_traceback
        assert "shuffle.py" not in raised.value.user_traceback  # their frames, not ours


@pytest.mark.parametrize(
    "code, fragment",
    [
        ("x = (", "syntax error"),
        ("raise RuntimeError('at import')", "RuntimeError: at import"),
        ("KEY = ['k']\ndef map(p):\n    return p\n", "no reduce"),
        ("def map(p):\n    return p\ndef reduce(t):\n    return t\n", "no KEY"),
        ("def map(p):\n    return p\ndef mapper(r):\n    yield 1, 1\n", "not both"),
        ("X = 1\n", "neither"),
        ("REDUCERS = 0\ndef map(p):\n    return p\n", "REDUCERS"),
    ],
)
def test_malformed_job_files_are_refused_at_load(code, fragment):
    with pytest.raises(JobCodeError) as raised:
        job_file.load_job(code)
    assert raised.value.stage == "load" and fragment in raised.value.message


def test_a_node_checks_a_job_s_source_without_running_it():
    assert job_file.check_source(b"raise SystemExit(1)\n") == "raise SystemExit(1)\n"  # not executed
    for bad in (b"", b"  \n", b"\xff\xfe", b"x" * (job_file.JOB_SOURCE_BYTES_MAX + 1)):
        with pytest.raises(BadRequest):
            job_file.check_source(bad)


def test_bucketing_sends_equal_keys_to_one_bucket():
    table = pa.table({"k": ["a", "b", "a", "c", "b", "a"], "n": [1, 2, 3, 4, 5, 6]})
    buckets = shuffle.bucketize(table, ["k"], 3)
    homes = {}
    for index, bucket in enumerate(buckets):
        for key in (bucket["k"].to_pylist() if bucket is not None else []):
            assert homes.setdefault(key, index) == index
    assert sum(b.num_rows for b in buckets if b is not None) == 6
    assert pc.sum(pa.concat_tables([b for b in buckets if b is not None])["n"]).as_py() == 21
