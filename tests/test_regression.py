"""The regression comparison: what moved beyond its tolerance is named; new and missing metrics show."""

from __future__ import annotations

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
