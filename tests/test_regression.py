"""The regression comparison: what moved beyond its tolerance is named; new and missing metrics show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.records import make_record
from benchmarks.regression import RegressionError, compare, make_baseline, measured


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


def test_tolerance_is_three_std_of_the_seeds_or_the_floor():
    import statistics

    wide, narrow = [60.0, 64.0, 68.0], [20.0, 20.1, 20.2]
    baseline = make_baseline({"name": "synthetic"}, {"finetune/mae/top1": dict(enumerate(wide)),
                                                     "finetune/scratch/top1": dict(enumerate(narrow))})
    m = baseline["metrics"]
    assert m["finetune/mae/top1"]["value"] == 64.0
    assert m["finetune/mae/top1"]["tolerance"] == pytest.approx(3 * statistics.stdev(wide), abs=1e-3)  # 12.0
    assert m["finetune/scratch/top1"]["tolerance"] == 1.0  # 3 x 0.1 is below the floor
    assert m["finetune/mae/top1"]["seeds"] == {"0": 60.0, "1": 64.0, "2": 68.0}
    with pytest.raises(RegressionError, match="at least two seeds.*finetune/mae/top1"):
        make_baseline({"name": "synthetic"}, {"finetune/mae/top1": {0: 60.0}})


def test_compare_marks_what_moved_and_what_is_missing():
    baseline = make_baseline({"name": "synthetic"},
                             {"finetune/mae/top1": {0: 64.0, 1: 66.0}, "segmentation/mae/mIoU": {0: 40.0, 1: 40.2},
                              "linprobe/mae/top1": {0: 30.0, 1: 30.0}, "knn/mae/top1": {0: 20.0, 1: 20.0}})
    tol = baseline["metrics"]["finetune/mae/top1"]["tolerance"]  # 3 x 1.414
    table = compare(baseline, {"finetune/mae/top1": 65.0 + tol - 0.1, "segmentation/mae/mIoU": 38.9,
                               "knn/mae/top1": 21.1, "detection/mae/bbox_AP": 2.0})
    assert table.loc["finetune/mae/top1", "moved"] == ""  # within 3 std
    assert table.loc["segmentation/mae/mIoU", "moved"] == "MOVED"  # 1.2 below, beyond the 1-point floor
    assert table.loc["knn/mae/top1", "moved"] == "MOVED"  # 1.1 above: a rise is a change too (new float order?)
    assert compare(baseline, {"finetune/mae/top1": 65.0 - tol + 0.1})["moved"]["finetune/mae/top1"] == ""
    assert table.loc["linprobe/mae/top1", "moved"] == "MOVED"  # gone from the run
    assert table.loc["detection/mae/bbox_AP", "moved"].startswith("new")


def test_records_of_a_finished_run_write_and_then_pass_the_baseline(tmp_path):
    from benchmarks.records import append_record
    from benchmarks.regression import run_regression

    pipeline = Path(__file__).resolve().parents[1] / "pipelines" / "synthetic.yaml"
    runs, baseline = tmp_path / "runs", tmp_path / "baseline.json"
    with pytest.raises(RegressionError, match="no records of pipeline 'synthetic'"):
        run_regression(pipeline, baseline, records=runs)
    append_record(rec("finetune", "mae", {"top1": 25.0}), runs)
    with pytest.raises(RegressionError, match="at least two seeds"):
        run_regression(pipeline, baseline, update=True, records=runs)
    append_record(rec("finetune", "mae", {"top1": 27.0}, seed=1), runs)
    append_record(rec("detection", "scratch", {"bbox_AP": 0.7, "segm_AP": 0.2}), runs)
    append_record(rec("detection", "scratch", {"bbox_AP": 0.9, "segm_AP": 0.2}, seed=1), runs)
    run_regression(pipeline, baseline, update=True, records=runs)
    written = json.loads(baseline.read_text())
    assert written["metrics"]["finetune/mae/top1"]["value"] == 26.0
    assert written["metrics"]["finetune/mae/top1"]["tolerance"] == pytest.approx(3 * 2 ** 0.5, abs=1e-3)
    assert "cores" in written["machine"]
    append_record(rec("finetune", "mae", {"top1": 15.0}, seed=1), runs)  # the latest record of a seed counts
    with pytest.raises(RegressionError, match="1 metric.*finetune/mae/top1"):
        run_regression(pipeline, baseline, records=runs)
    run_regression(pipeline, baseline, records=runs, seeds=[0])  # seed 0 alone: 25.0, within 3 x 1.41 of 26.0
    with pytest.raises(RegressionError, match="no records of pipeline 'synthetic' for seeds \\[7\\]"):
        run_regression(pipeline, baseline, records=runs, seeds=[7])


def test_other_pretrainings_join_the_spread_of_the_metrics_they_have(tmp_path):
    import statistics

    from benchmarks.records import append_record
    from benchmarks.regression import run_regression

    main, other = [29.0, 30.0, 30.0], 36.0  # a second MAE pretraining moves the probe beyond 3 x 0.58
    baseline = make_baseline({"name": "synthetic"},
                             {"linprobe/mae/top1": dict(enumerate(main)), "linprobe/scratch/top1": {0: 20.0, 1: 21.0}},
                             others={"synthetic_pseed1": {"linprobe/mae/top1": {0: other}}})
    m = baseline["metrics"]
    assert m["linprobe/mae/top1"]["value"] == pytest.approx(statistics.fmean(main + [other]), abs=1e-3)
    assert m["linprobe/mae/top1"]["tolerance"] == pytest.approx(3 * statistics.stdev(main + [other]), abs=1e-3)
    assert m["linprobe/mae/top1"]["other_pretrainings"] == {"synthetic_pseed1": {"0": 36.0}}
    assert m["linprobe/scratch/top1"]["tolerance"] == pytest.approx(3 * statistics.stdev([20.0, 21.0]), abs=1e-3)
    assert "other_pretrainings" not in m["linprobe/scratch/top1"] and "other pretrainings" in baseline["rule"]
    assert compare(baseline, {"linprobe/mae/top1": other}).loc["linprobe/mae/top1", "moved"] == ""  # seed 1 passes

    pipeline = Path(__file__).resolve().parents[1] / "pipelines" / "synthetic.yaml"
    runs, path = tmp_path / "runs", tmp_path / "baseline.json"
    for seed, value in enumerate(main):
        append_record(rec("linprobe", "mae", {"top1": value}, seed=seed), runs)
    with pytest.raises(RegressionError, match="needs --update and --records"):
        run_regression(pipeline, path, other_pretrainings=["synthetic_pseed1"])
    with pytest.raises(RegressionError, match="no records of pipeline.*synthetic_pseed1"):
        run_regression(pipeline, path, update=True, records=runs, other_pretrainings=["synthetic_pseed1"])
    append_record(rec("linprobe", "mae", {"top1": other}, protocol="synthetic_pseed1"), runs)
    run_regression(pipeline, path, update=True, records=runs, other_pretrainings=["synthetic_pseed1"])
    assert json.loads(path.read_text())["metrics"]["linprobe/mae/top1"] == m["linprobe/mae/top1"]
