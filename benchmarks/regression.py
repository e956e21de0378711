"""`maet regression`: run a pipeline with fixed seeds and compare its metrics with committed expected values.

The expected values live in `results/baselines/<pipeline>.json`: for each (task, init, metric) the
mean over several downstream seeds, their spread, and a tolerance taken from that spread,
max(3 x std, a floor of one point): a metric that moves more than three standard deviations of its
own seed-to-seed noise has moved, not wobbled. The floor stands for what the small val sets cannot
resolve (one image of 200 is 0.5 top-1 points) and for other CPUs' summation order. `--update`
needs at least two seeds per metric (`--seeds 0,1,2`), so every tolerance is measured; commit the
new baseline with the change that moved the numbers, saying why. A failure prints a table of every
metric with its expected value, the measured one and the tolerance, the moved ones marked.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from mae_core.errors import MAETransferError
from mae_core.provenance import machine_summary

from .pipeline import load_config, run_pipeline
from .records import read_records
from .tables import HEADLINE, latest_per_seed, to_markdown

STD_FACTOR = 3.0
FLOOR = 1.0  # points, for every headline metric


class RegressionError(MAETransferError):
    """Metrics moved beyond their tolerance, or a baseline cannot be written from these records."""


def per_seed(records: list[dict], protocol: str) -> dict[str, dict[int, float]]:
    """'task/init/metric' -> {seed: value} for the pipeline's downstream records (the latest of each seed)."""
    values: dict[str, dict[int, float]] = {}
    for r in latest_per_seed([r for r in records if r.get("protocol") == protocol]):
        for (task, key) in HEADLINE:
            if r["task"] == task and key in r["metrics"]:
                values.setdefault(f"{task}/{r['init']}/{key}", {})[r.get("seed")] = float(r["metrics"][key])
    return dict(sorted(values.items()))


def seed_means(values: dict[str, dict[int, float]]) -> dict[str, float]:
    return {k: statistics.fmean(v.values()) for k, v in values.items()}


def measured(records: list[dict], protocol: str) -> dict[str, float]:
    """'task/init/metric' -> value (mean over seeds) for the pipeline's downstream records."""
    return seed_means(per_seed(records, protocol))


def tolerance(values: list[float]) -> float:
    return round(max(STD_FACTOR * statistics.stdev(values), FLOOR), 3)


def compare(baseline: dict, current: dict[str, float]) -> pd.DataFrame:
    rows = []
    for name, expected in baseline["metrics"].items():
        value = current.get(name)
        moved = value is None or abs(value - expected["value"]) > expected["tolerance"]
        rows.append({"metric": name, "expected": expected["value"], "std": expected.get("std"), "measured": value,
                     "tolerance": expected["tolerance"], "moved": "MOVED" if moved else ""})
    for name in sorted(set(current) - set(baseline["metrics"])):
        rows.append({"metric": name, "expected": None, "std": None, "measured": current[name], "tolerance": None,
                     "moved": "new (not in the baseline)"})
    return pd.DataFrame(rows).set_index("metric")


def make_baseline(config: dict, values: dict[str, dict[int, float]], machine: str = "",
                  others: dict[str, dict[str, dict[int, float]]] | None = None) -> dict:
    """Mean, spread and tolerance of each metric from its per-seed values (two seeds at least).

    `others`: per pipeline that repeats this one with another pretraining (seed), its per-seed values. They join
    the pool of the metrics they have, so those tolerances hold the pretraining's spread as well as the
    downstream seeds': another CPU or kernel changes pretraining at float level, which moves the pretrained
    rows as much as another seed does (README)."""
    few = [k for k, v in values.items() if len(v) < 2]
    if few:
        raise RegressionError(f"a baseline needs at least two seeds per metric to measure its spread; "
                              f"{', '.join(few)} has one. Run the pipeline with --seeds 0,1,2 first.")
    metrics = {}
    for k, by_seed in values.items():
        extra = {name: o[k] for name, o in (others or {}).items() if k in o}
        v = list(by_seed.values()) + [x for o in extra.values() for x in o.values()]
        metrics[k] = {"value": round(statistics.fmean(v), 3), "std": round(statistics.stdev(v), 3),
                      "seeds": {str(s): x for s, x in sorted(by_seed.items())}, "tolerance": tolerance(v)}
        if extra:
            metrics[k]["other_pretrainings"] = {name: {str(s): x for s, x in sorted(o.items())}
                                                for name, o in extra.items()}
    spread = "seeds and other pretrainings" if others else "seeds"
    return {"pipeline": config["name"], "rule": f"tolerance = max({STD_FACTOR:g} x std over {spread}, {FLOOR:g})",
            "machine": machine, "metrics": metrics}


def run_regression(config_path: str | Path, baseline_path: str | Path, update: bool = False,
                   work_dir: str | Path | None = None, records: str | Path | None = None,
                   seeds: list[int] | None = None, other_pretrainings: list[str] = ()) -> pd.DataFrame:
    """Run the pipeline into a fresh folder (nothing cached from earlier runs) and compare, or `update`.

    `records`: compare the pipeline's records in that folder (a run that already happened, e.g. the demo's)
    instead of running it again. `other_pretrainings` (with `update` and `records`): names of pipelines in
    that folder that repeat this one with another pretraining; see `make_baseline`.
    """
    if other_pretrainings and not (update and records is not None):
        raise RegressionError("--other-pretrainings widens the tolerances of a new baseline: it needs --update "
                              "and --records (the folder that holds those pipelines' records)")
    cfg = load_config(config_path)
    if seeds:
        cfg["seeds"] = list(seeds)
    held = read_records(records) if records is not None else []  # read once: this pipeline's and the others'
    if records is not None:
        values = per_seed(held, cfg["name"])
        if seeds:  # the seeds asked for, not every seed the folder holds
            values = {k: kept for k, v in values.items() if (kept := {s: x for s, x in v.items() if s in seeds})}
        if not values:
            raise RegressionError(f"{records} holds no records of pipeline '{cfg['name']}'"
                                  f"{f' for seeds {seeds}' if seeds else ''}; run it first")
    else:
        with tempfile.TemporaryDirectory(prefix="maet-regression-") as tmp:
            work = Path(work_dir or tmp)
            cfg.update(output_dir=str(work / "out"), results_dir=str(work / "runs"), tables_dir=str(work / "tables"))
            fresh = work / "pipeline.yaml"
            fresh.write_text(yaml.safe_dump(cfg))
            run_pipeline(fresh, tables=False)
            values = per_seed(read_records(work / "runs"), cfg["name"])
    current = seed_means(values)
    baseline_path = Path(baseline_path)
    if update:
        others = {name: per_seed(held, name) for name in other_pretrainings}
        empty = [name for name, o in others.items() if not o]
        if empty:
            raise RegressionError(f"{records} holds no records of pipeline(s) {', '.join(empty)}; run "
                                  f"pipelines/<name>.yaml first (e.g. pipelines/synthetic_pseed1.yaml)")
        baseline = make_baseline(cfg, values, machine=machine_summary(), others=others)
        baseline_path.parent.mkdir(parents=True, exist_ok=True)
        baseline_path.write_text(json.dumps(baseline, indent=2) + "\n")
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
