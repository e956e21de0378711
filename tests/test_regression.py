"""The regression comparison: what moved beyond its tolerance is named; new and missing metrics show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.records import make_record
from benchmarks.regression import compare, make_baseline, measured


def rec(task, init, metrics, seed=0, protocol="synthetic"):
    return make_record(task=task, dataset="d", init=init, arch="a", metrics=metrics, config={}, seed=seed,
                       git_commit="", versions={}, protocol=protocol)


def test_measured_averages_seeds_of_one_protocol():
    records = [rec("finetune", "mae", {"top1": 60.0, "top5": 90.0}, seed=0),
               rec("finetune", "mae", {"top1": 70.0}, seed=1),
               rec("detection", "scratch", {"bbox_AP": 5.0, "segm_AP": 4.0}),
               rec("finetune", "mae", {"top1": 1.0}, protocol="other")]
    assert measured(records, "synthetic") == {"detection/scratch/bbox_AP": 5.0, "detection/scratch/segm_AP": 4.0,
                                              "finetune/mae/top1": 65.0}


def test_compare_marks_what_moved_and_what_is_missing():
    baseline = make_baseline({"name": "synthetic", "seeds": [0]},
                             {"finetune/mae/top1": 65.0, "segmentation/mae/mIoU": 40.0, "linprobe/mae/top1": 30.0},
                             tolerances={"top1": 1.0})
    table = compare(baseline, {"finetune/mae/top1": 65.9, "segmentation/mae/mIoU": 33.0,
                               "detection/mae/bbox_AP": 2.0})
    assert table.loc["finetune/mae/top1", "moved"] == ""  # 0.9 within 1.0
    assert table.loc["segmentation/mae/mIoU", "moved"] == "MOVED"  # 7 beyond the default 3
    assert table.loc["linprobe/mae/top1", "moved"] == "MOVED"  # gone from the run
    assert table.loc["detection/mae/bbox_AP", "moved"].startswith("new")


def test_records_of_a_finished_run_write_and_then_pass_the_baseline(tmp_path):
    from benchmarks.records import append_record
    from benchmarks.regression import RegressionError, run_regression

    pipeline = Path(__file__).resolve().parents[1] / "pipelines" / "synthetic.yaml"
    runs, baseline = tmp_path / "runs", tmp_path / "baseline.json"
    with pytest.raises(RegressionError, match="no records of pipeline 'synthetic'"):
        run_regression(pipeline, baseline, records=runs)
    append_record(rec("finetune", "mae", {"top1": 25.0}), runs)
    append_record(rec("detection", "scratch", {"bbox_AP": 0.7, "segm_AP": 0.2}), runs)
    run_regression(pipeline, baseline, update=True, records=runs)
    written = json.loads(baseline.read_text())
    assert written["metrics"]["finetune/mae/top1"] == {"value": 25.0, "tolerance": 3.0}
    append_record(rec("finetune", "mae", {"top1": 20.0}), runs)  # the latest record of a seed counts
    with pytest.raises(RegressionError, match="1 metric.*finetune/mae/top1"):
        run_regression(pipeline, baseline, records=runs)
