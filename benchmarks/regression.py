"""`maet regression`: run a pipeline with fixed seeds and compare its metrics with committed expected values.

The expected values live in `results/baselines/<pipeline>.json`: for each (task, init) the headline
metrics with a tolerance each. Tolerances are per metric because the runs differ in how much they
move between machines and library versions (summation order on other CPUs, a BLAS update): a few
tenths of a point for top-1 on a large val set, more for AP on a small one. A failure prints a
table of every metric with its expected value, the measured one and the tolerance, the moved ones
marked; `--update` rewrites the baseline from the current run (commit it with the change that
moved the numbers, saying why).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from mae_core.errors import MAETransferError

from .pipeline import load_config, run_pipeline
from .records import read_records
from .tables import HEADLINE, latest_per_seed, to_markdown

DEFAULT_TOLERANCE = {"top1": 3.0, "bbox_AP": 3.0, "segm_AP": 3.0, "mIoU": 3.0}


class RegressionError(MAETransferError):
    """Metrics moved beyond their tolerance."""


def measured(records: list[dict], protocol: str) -> dict[str, float]:
    """'task/init/metric' -> value (mean over seeds) for the pipeline's downstream records."""
    values: dict[str, list[float]] = {}
    for r in latest_per_seed([r for r in records if r.get("protocol") == protocol]):
        for (task, key) in HEADLINE:
            if r["task"] == task and key in r["metrics"]:
                values.setdefault(f"{task}/{r['init']}/{key}", []).append(float(r["metrics"][key]))
    return {k: sum(v) / len(v) for k, v in sorted(values.items())}


def compare(baseline: dict, current: dict[str, float]) -> pd.DataFrame:
    rows = []
    for name, expected in baseline["metrics"].items():
        value = current.get(name)
        moved = value is None or abs(value - expected["value"]) > expected["tolerance"]
        rows.append({"metric": name, "expected": expected["value"], "measured": value,
                     "tolerance": expected["tolerance"], "moved": "MOVED" if moved else ""})
    for name in sorted(set(current) - set(baseline["metrics"])):
        rows.append({"metric": name, "expected": None, "measured": current[name], "tolerance": None,
                     "moved": "new (not in the baseline)"})
    return pd.DataFrame(rows).set_index("metric")


def make_baseline(config: dict, current: dict[str, float], tolerances: dict | None = None) -> dict:
    tolerances = {**DEFAULT_TOLERANCE, **(tolerances or {})}
    return {"pipeline": config["name"], "seeds": config["seeds"],
            "metrics": {k: {"value": round(v, 3), "tolerance": tolerances[k.rsplit("/", 1)[1]]}
                        for k, v in current.items()}}


def run_regression(config_path: str | Path, baseline_path: str | Path, update: bool = False,
                   work_dir: str | Path | None = None, records: str | Path | None = None) -> pd.DataFrame:
    """Run the pipeline into a fresh folder (nothing cached from earlier runs) and compare, or `update`.

    `records`: compare the pipeline's records in that folder (a run that already happened, e.g. the demo's)
    instead of running it again.
    """
    cfg = load_config(config_path)
    if records is not None:
        current = measured(read_records(records), cfg["name"])
        if not current:
            raise RegressionError(f"{records} holds no records of pipeline '{cfg['name']}'; run it first")
    else:
        with tempfile.TemporaryDirectory(prefix="maet-regression-") as tmp:
            work = Path(work_dir or tmp)
            cfg.update(output_dir=str(work / "out"), results_dir=str(work / "runs"), tables_dir=str(work / "tables"))
            fresh = work / "pipeline.yaml"
            fresh.write_text(yaml.safe_dump(cfg))
            run_pipeline(fresh, tables=False)
            current = measured(read_records(work / "runs"), cfg["name"])
    baseline_path = Path(baseline_path)
    if update:
        old = json.loads(baseline_path.read_text()) if baseline_path.is_file() else {"metrics": {}}
        tolerances = {k.rsplit("/", 1)[1]: v["tolerance"] for k, v in old["metrics"].items()}
        baseline_path.parent.mkdir(parents=True, exist_ok=True)
        baseline_path.write_text(json.dumps(make_baseline(cfg, current, tolerances), indent=2) + "\n")
        print(f"baseline written: {baseline_path}")
    if not baseline_path.is_file():
        raise RegressionError(f"no baseline at {baseline_path}: run with --update once to write it")
    table = compare(json.loads(baseline_path.read_text()), current)
    print(to_markdown(table.fillna("–")))
    moved = table[table["moved"] == "MOVED"]
    if len(moved):
        raise RegressionError(f"{len(moved)} metric(s) moved beyond their tolerance: "
                              + ", ".join(moved.index) + " (table above). If the change is intended, "
                              "rerun with --update and commit the new baseline with the reason.")
    return table
