"""A job's progress and its report: tasks, locality, retries, rows, bytes, time per stage.

Pure: plain values the job runner fills in and the HTTP API, the client and
the CLI read (``to_json``/``from_json`` round trip). Hadoop's job counters,
reduced to what a user asks after a run: did it use every node's own data,
did anything fail and get retried, how much crossed the network, and where
did the time go.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STATE_QUEUED = "queued"
STATE_RUNNING = "running"
STATE_SUCCEEDED = "succeeded"
STATE_FAILED = "failed"
FINAL_STATES = frozenset({STATE_SUCCEEDED, STATE_FAILED})


@dataclass
class Progress:
    """Where a running job is: its stage and tasks done out of planned."""

    stage: str = "queued"
    map_done: int = 0
    map_total: int = 0
    reduce_done: int = 0
    reduce_total: int = 0


@dataclass
class JobReport:
    """What a finished (or failed) job did."""

    map_tasks: int = 0
    map_tasks_local: int = 0
    reduce_tasks: int = 0
    retries: int = 0
    partitions: int = 0
    rows_in: int = 0
    rows_map_out: int = 0
    rows_out: int = 0
    bytes_shuffled: int = 0
    bytes_out: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    nodes: dict[str, int] = field(default_factory=dict)  # map tasks run per node

    @property
    def data_local_percent(self) -> float:
        return 100.0 * self.map_tasks_local / self.map_tasks if self.map_tasks else 100.0

    def add_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] = round(self.stage_seconds.get(stage, 0.0) + seconds, 6)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["data_local_percent"] = round(self.data_local_percent, 2)
        return out

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> JobReport:
        known = {k: v for k, v in value.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class JobStatus:
    """One job as the API shows it: identity, state, progress, report, and the error if it failed."""

    job_id: str
    dataset: str
    state: str = STATE_QUEUED
    node: str = ""
    submitted_ms: int = 0
    finished_ms: int = 0
    reducers: int = 0
    into: str = ""
    progress: Progress = field(default_factory=Progress)
    report: JobReport = field(default_factory=JobReport)
    error: dict[str, str] | None = None
    result_rows: int = 0
    result_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["report"] = self.report.to_json()
        return out

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> JobStatus:
        known = {k: v for k, v in value.items() if k in cls.__dataclass_fields__}
        known["progress"] = Progress(**value.get("progress", {}))
        known["report"] = JobReport.from_json(value.get("report", {}))
        return cls(**known)
