"""Job files: the user's Python that a map/reduce job runs, and how it is loaded.

Executes user code: ``load_job`` runs the job file's source text in a fresh
module namespace. It is called **only in Dask workers** (and in the process
of ``legion mr run --input``, which is the user's own process) — never in a
Legion node, where user code would share the node's GIL, memory and token.
A node only checks that a job's source is text of a bounded size.

A job file takes one of two forms:

**Vectorised** (the fast path; each function receives and returns a
``pyarrow.Table``)::

    KEY = ["l_returnflag", "l_linestatus"]   # the columns the shuffle groups by

    def map(part):        # once per partition (one task may hand it several partitions)
        ...
    def combine(t):       # optional: on each map task's output, before the shuffle
        ...
    def reduce(t):        # once per reduce bucket, with every row of its keys
        ...
    def finalize(t):      # optional: once, on all reduce outputs concatenated
        ...

Without ``KEY`` and ``reduce`` the job is map-only: the map outputs are
concatenated (then ``finalize``d). ``REDUCERS = 4`` sets the default number
of reduce buckets.

**Record form** (quick jobs, mrjob-like; Python per row, so slower)::

    def mapper(row):              # a dict per row; yields (key, value) pairs
        for word in row["line"].split():
            yield word, 1
    def combiner(key, values):    # optional, on the map side; returns one value
        return sum(values)
    def reducer(key, values):     # returns the key's value
        return sum(values)

Its result is a table with columns ``key`` and ``value``.
"""

from __future__ import annotations

import hashlib
import linecache
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from legion.errors import BadRequest

JOB_SOURCE_BYTES_MAX = 1024 * 1024
# Job code is compiled under "<job:…>" names (one per source text), registered with linecache
# so that the user's traceback shows their lines.
JOB_FILE_PREFIX = "<job"
FORM_VECTORISED = "vectorised"
FORM_RECORDS = "records"
VECTORISED_NAMES = ("map", "combine", "reduce", "finalize")
RECORD_NAMES = ("mapper", "combiner", "reducer")
REDUCERS_MAX = 1024


class JobCodeError(Exception):
    """The user's code failed: ``stage`` names where, ``user_traceback`` is their traceback as text.

    Carried back as text, never as the user's exception object: its class may
    exist only in the job file, which the node never imports."""

    def __init__(self, stage: str, message: str, user_traceback: str = "") -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message
        self.user_traceback = user_traceback


@dataclass(frozen=True, slots=True)
class Job:
    """A loaded job: its form, its functions, and the shuffle key (empty for a map-only job)."""

    form: str
    key: tuple[str, ...]
    reducers: int | None
    map: Callable[..., Any]
    combine: Callable[..., Any] | None = None
    reduce: Callable[..., Any] | None = None
    finalize: Callable[..., Any] | None = None

    @property
    def map_only(self) -> bool:
        return self.reduce is None


def check_source(source: bytes | str) -> str:
    """The job source as text; BadRequest if it is empty, too large or not UTF-8. Executes nothing."""
    raw = source.encode("utf-8") if isinstance(source, str) else source
    if not raw.strip():
        raise BadRequest("the job file is empty")
    if len(raw) > JOB_SOURCE_BYTES_MAX:
        raise BadRequest(f"the job file is {len(raw)} bytes; the limit is {JOB_SOURCE_BYTES_MAX}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the job file is not UTF-8 text") from None


def user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` from the first frame of the job file on: the user's own code, not ours."""
    frames = traceback.extract_tb(exc.__traceback__)
    first = next((i for i, frame in enumerate(frames) if frame.filename.startswith(JOB_FILE_PREFIX)), 0)
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames[first:])]
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def load_job(source: str) -> Job:
    """Run the job file's source and pick out its functions; JobCodeError if it fails or is malformed."""
    module = types.ModuleType("legion_job")
    filename = f"<job:{hashlib.sha256(source.encode()).hexdigest()[:12]}>"
    module.__file__ = filename
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    # Job files run in a worker on purpose: this is where user code is executed.
    try:
        code = compile(source, filename, "exec")
        exec(code, module.__dict__)  # noqa: S102
    except SyntaxError as exc:
        raise JobCodeError("load", f"syntax error: {exc.msg} (line {exc.lineno})", user_traceback(exc)) from None
    except Exception as exc:  # deliberate: the user's module body may raise anything; it is reported, not hidden
        raise JobCodeError("load", f"{type(exc).__name__}: {exc}", user_traceback(exc)) from None
    return job_of(vars(module))


def job_of(namespace: dict[str, Any]) -> Job:
    """The job a job file's namespace defines; JobCodeError naming what is wrong."""
    vectorised = [n for n in VECTORISED_NAMES if callable(namespace.get(n))]
    records = [n for n in RECORD_NAMES if callable(namespace.get(n))]
    if vectorised and records:
        raise JobCodeError("load", f"a job file is vectorised ({', '.join(vectorised)}) or record form ({', '.join(records)}), not both")
    reducers = _reducers(namespace.get("REDUCERS"))
    if records:
        from engines.mapreduce import record_form  # the adapter that turns the record form into tables

        return record_form.job(namespace, reducers)
    if not callable(namespace.get("map")):
        raise JobCodeError(
            "load", "a job file defines map(part) (vectorised) or mapper(row) (record form); this one defines neither"
        )
    key = _key(namespace.get("KEY"))
    reduce = namespace.get("reduce")
    if key and not callable(reduce):
        raise JobCodeError("load", "the job sets KEY but defines no reduce(t)")
    if callable(reduce) and not key:
        raise JobCodeError("load", "the job defines reduce(t) but no KEY = [columns to group by]")
    combine = namespace.get("combine")
    if callable(combine) and not key:
        raise JobCodeError("load", "combine(t) runs before the shuffle; a map-only job (no KEY) has none")
    return Job(
        form=FORM_VECTORISED,
        key=key,
        reducers=reducers,
        map=namespace["map"],
        combine=combine if callable(combine) else None,
        reduce=reduce if callable(reduce) else None,
        finalize=namespace.get("finalize") if callable(namespace.get("finalize")) else None,
    )


def _key(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise JobCodeError("load", f"KEY must be a column name or a non-empty list of column names, got {value!r}")
    return tuple(value)


def _reducers(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= REDUCERS_MAX:
        raise JobCodeError("load", f"REDUCERS must be an integer from 1 to {REDUCERS_MAX}, got {value!r}")
    return value
