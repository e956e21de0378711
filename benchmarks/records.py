"""Run records: one JSON object per line in `results/runs/<task>.jsonl` (the docs/design.md contract).

Tables are computed from records, never typed by hand, so a record carries what a table groups by
(`task`, `dataset`, `init`, `arch`), the numbers (`metrics`, with the evaluator's own sub-metrics)
and what it takes to trust them: `config`, `git_commit`, `versions`, `device`, `seed`, times, and
`checkpoint_sha256`, the sha256 of the checkpoint whose quality is measured (the `--init` of a
fine-tune or linear probe, the evaluated file for `maet eval`; None for scratch). Task `knn` is the
weighted k-NN that `maet linprobe --probe cached` runs on its features (`linprobe_run_id` links them). Extra fields
(e.g. `output` with the produced checkpoint and its sha256; `output_dir`, the run's folder, absolute) may follow.

The folder is `--results-dir`, else `$MAET_RESULTS_DIR`, else `results/runs` under the working
directory. A record is appended with one `write` on an O_APPEND descriptor, so records of runs that
finish at the same time never interleave.
"""

from __future__ import annotations

import json
import math
import os
import uuid
import warnings
from pathlib import Path

from mae_core import provenance

TASKS = ("pretrain", "finetune", "linprobe", "knn", "detection", "segmentation")
FIELDS = ("run_id", "task", "dataset", "init", "arch", "metrics", "config", "git_commit", "checkpoint_sha256",
          "seed", "device", "versions", "started_at", "duration_s")
ENV_DIR = "MAET_RESULTS_DIR"
DEFAULT_DIR = Path("results") / "runs"


def results_dir(directory: str | Path | None = None) -> Path:
    return Path(directory or os.environ.get(ENV_DIR) or DEFAULT_DIR)


def make_record(*, task: str, dataset: str, init: str, arch: str, metrics: dict, config: dict,
                checkpoint_sha256: str | None = None, seed: int | None = None, device: str | None = None,
                started_at: str | None = None, duration_s: float | None = None, run_id: str | None = None,
                git_commit: str | None = None, versions: dict | None = None, **extra) -> dict:
    """A validated record; provenance not given is taken from this process (commit, versions, now)."""
    record = {"run_id": run_id or uuid.uuid4().hex[:12], "task": task, "dataset": dataset, "init": init,
              "arch": arch, "metrics": metrics, "config": config,
              "git_commit": provenance.git_commit() if git_commit is None else git_commit,
              "checkpoint_sha256": checkpoint_sha256, "seed": seed, "device": device,
              "machine": extra.pop("machine", None) or provenance.machine_summary(),
              "versions": provenance.versions() if versions is None else versions,
              "started_at": started_at or provenance.now_iso(), "duration_s": duration_s, **extra}
    validate_record(record)
    return record


def record_from_result(result, *, dataset: str, init: str, **fields) -> dict:
    """The one translation of an engine's `RunResult` (mae_core/result.py) into a run record; `fields` add or
    override record fields (e.g. `maet eval --task`). The only caller of `make_record` in the commands."""
    p = result.provenance
    extra = {"mode": result.mode, "world_size": result.world_size, **result.extra}
    if result.epochs is not None:
        extra["epochs"] = result.epochs
    if result.iterations is not None:
        extra["iteration"] = result.iterations
    if p.get("precision"):
        extra["precision"] = p["precision"]
    named = dict(task=result.task, dataset=dataset, init=init, arch=result.arch, metrics=result.metrics,
                 config=result.config, checkpoint_sha256=result.measured_sha256, seed=result.seed, device=result.device,
                 started_at=result.started_at, duration_s=result.duration_s, run_id=p.get("run_id"),
                 git_commit=p.get("git_commit"), versions=p.get("versions"))
    return make_record(**{**named, **extra, **fields})


def _check_metrics(metrics: dict, where: str = "metrics") -> None:
    for name, value in metrics.items():
        if isinstance(value, dict):
            _check_metrics(value, f"{where}.{name}")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"run record {where}.{name} must be a finite number, got {value!r}")


def validate_record(record: dict) -> None:
    missing = [f for f in FIELDS if f not in record]
    if missing:
        raise ValueError(f"run record lacks {missing} (the contract's fields: {', '.join(FIELDS)})")
    if record["task"] not in TASKS:
        raise ValueError(f"run record task must be one of {', '.join(TASKS)}, got {record['task']!r}")
    if not isinstance(record["metrics"], dict) or not record["metrics"]:
        raise ValueError("run record metrics must be a non-empty dict of numbers")
    _check_metrics(record["metrics"])


def append_record(record: dict, directory: str | Path | None = None) -> Path:
    """Append `record` as one line to `<dir>/<task>.jsonl`; returns the file."""
    validate_record(record)
    line = (json.dumps(record, allow_nan=False, default=str) + "\n").encode()
    path = results_dir(directory) / f"{record['task']}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # the last byte only, not the whole file
            line = b"\n" + line  # a line cut off by a killed writer stays its own (skipped) line, not glued to ours
        written = os.write(fd, line)
    finally:
        os.close(fd)
    if written != len(line):
        raise OSError(f"short write appending a run record to {path} ({written} of {len(line)} bytes)")
    return path


def read_records(directory: str | Path | None = None, task: str | None = None) -> list[dict]:
    """All records (of one task, if given), in file order; an unreadable line is skipped with a warning."""
    root = results_dir(directory)
    files = [root / f"{task}.jsonl"] if task else sorted(root.glob("*.jsonl"))
    records = []
    for path in files:
        if not path.exists():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                warnings.warn(f"{path}:{number}: skipping a line that is not JSON ({e})", stacklevel=2)
    return records
