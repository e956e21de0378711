"""What every engine hands back: one `RunResult` (pretraining, classification, evaluation, detection, segmentation).

The engines measure; the command line files the measurement (benchmarks/records.py `record_from_result`
turns a result into a run record), so no engine calls back into the CLI and the record's shape is decided
in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class RunResult:
    task: str  # pretrain | finetune | linprobe | knn | detection | segmentation
    metrics: dict  # the headline numbers (and the evaluator's sub-metrics)
    arch: str
    config: dict  # the run's configuration, as the record keeps it
    checkpoint: str | None = None  # the file the run wrote (training) or measured (evaluation)
    seed: int | None = None
    duration_s: float | None = None
    epochs: int | None = None
    iterations: int | None = None
    is_main: bool = True  # rank 0 (or a single process): the one that writes records
    mode: str = "train"  # train | eval
    measured_sha256: str | None = None  # sha256 of the weights whose quality the metrics measure (init or file)
    device: str | None = None
    world_size: int = 1
    started_at: str | None = None
    provenance: dict = field(default_factory=dict)  # run_id, git_commit, versions, precision: when the engine knows
    extra: dict = field(default_factory=dict)  # task-specific record fields (history, init_report, evaluations...)
    related: list[RunResult] = field(default_factory=list)  # more results of the same run, a record each (k-NN)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunResult:
        return cls(**{**d, "related": [cls.from_dict(r) for r in d.get("related", [])]})
