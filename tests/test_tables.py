"""Comparison tables: computed from run records (mean ± std over seeds, Δ to supervised), one protocol each."""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.cli import main
from benchmarks.records import append_record, make_record, read_records
from benchmarks.tables import measured_table, measurements, published_tables, write_tables

PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published"
ARCH = "vit_tiny_patch8"


def record(task, init, metrics, seed=0, protocol="synthetic", dataset="synthetic"):
    return make_record(task=task, dataset=dataset, init=init, arch=ARCH, metrics=metrics, config={}, seed=seed,
                       git_commit="0" * 40, versions={}, protocol=protocol)


@pytest.fixture
def runs(tmp_path):
    folder = tmp_path / "runs"
    for seed, (mae, sup) in enumerate([(70.0, 60.0), (74.0, 62.0)]):
        append_record(record("finetune", "mae", {"top1": mae, "top5": 99.0}, seed), folder)
        append_record(record("finetune", "supervised", {"top1": sup}, seed), folder)
    append_record(record("finetune", "scratch", {"top1": 40.0}), folder)
    append_record(record("detection", "mae", {"bbox_AP": 30.0, "segm_AP": 25.0, "bbox": {"AP50": 50.0}}), folder)
    append_record(record("segmentation", "mae", {"mIoU": 55.5, "mAcc": 60.0}), folder)
    # Another protocol: must land in a table of its own.
    append_record(record("finetune", "mae", {"top1": 10.0}, protocol=None, dataset="other"), folder)
    return folder


def test_seeds_become_mean_and_std_and_delta_to_supervised(runs):
    frame = measurements(read_records(runs))
    table = measured_table(frame[frame["protocol"] == "synthetic"])
    mean, std = statistics.mean([70.0, 74.0]), statistics.stdev([70.0, 74.0])
    assert table.loc["mae", "top-1 (ft)"] == f"{mean:.2f} ± {std:.2f} (2)"
    assert table.loc["mae", "top-1 (ft) Δ sup"] == f"{mean - statistics.mean([60.0, 62.0]):+.2f}"
    assert table.loc["scratch", "top-1 (ft)"] == "40.00"
    assert table.loc["mae", "APbox"] == "30.00" and table.loc["mae", "APmask"] == "25.00"
    assert table.loc["mae", "mIoU"] == "55.50" and table.loc["scratch", "mIoU"] == "–"
    assert list(table.index) == ["scratch", "supervised", "mae"]
    assert [c for c in table.columns if "Δ" not in c] == ["top-1 (ft)", "APbox", "APmask", "mIoU"]
    assert "top-1 (lin)" not in table.columns  # no linear-probe record: no empty column


def test_knn_gets_its_own_column_after_the_linear_probe(tmp_path):
    folder = tmp_path / "runs"
    for init, lin, knn in [("scratch", 21.5, 20.0), ("supervised", 25.0, 24.0), ("mae", 33.0, 30.0)]:
        append_record(record("linprobe", init, {"top1": lin}), folder)
        append_record(record("knn", init, {"top1": knn, "top5": 90.0}), folder)
    append_record(record("detection", "mae", {"bbox_AP": 30.0, "segm_AP": 25.0}), folder)
    table = measured_table(measurements(read_records(folder)))
    assert [c for c in table.columns if "Δ" not in c] == ["top-1 (lin)", "top-1 (kNN)", "APbox", "APmask"]
    assert table.loc["mae", "top-1 (kNN)"] == "30.00" and table.loc["scratch", "top-1 (kNN)"] == "20.00"
    assert table.loc["mae", "top-1 (kNN) Δ sup"] == "+6.00" and table.loc["mae", "top-1 (lin)"] == "33.00"


def test_protocols_never_share_a_table(runs, tmp_path):
    out = tmp_path / "tables"
    report = write_tables(runs, published=PUBLISHED, out=out, plots=True)
    assert "## synthetic (measured)" in report and "## finetune on other (measured)" in report
    other = pd.read_csv(out / "finetune_on_other.csv", index_col="init")
    assert other.loc["mae", "top-1 (ft)"] == 10.0 and len(other) == 1
    synthetic = pd.read_csv(out / "synthetic.csv", index_col="init")
    assert "10.00" not in synthetic.to_string()
    assert {p.name for p in out.glob("synthetic__*.png")} == {
        "synthetic__finetune.png", "synthetic__detection.png", "synthetic__segmentation.png"}
    assert (out / "published__coco_vitdet_mask_rcnn.md").is_file()


def test_published_tables_keep_sources_and_numbers_as_written():
    tables = published_tables(PUBLISHED)
    ade = tables["ADE20K UperNet 512px 160k single-scale"]
    assert ade.loc["mae", "mIoU [ViT-L/16]"] == "53.6"
    assert ade.loc["mae (mmseg re-run)", "mIoU [ViT-B/16]"] == "48.13"
    assert ade.loc["mae (mmseg re-run)", "source"].startswith("S ")
    lin = tables["IN-1K linear probe (BN without affine + LARS)"]
    assert "top-1 (lin) [ViT-H/14]" in lin.columns  # top-1 of a probe is not titled as a fine-tune


def test_maet_table_writes_markdown_and_csv(runs, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["table", "--results-dir", str(runs), "--published", str(PUBLISHED), "--out", str(out),
                 "--no-plots"]) == 0
    assert "| mae |" in capsys.readouterr().out
    assert (out / "synthetic.md").is_file() and not list(out.glob("*.png"))


def test_a_rerun_of_one_seed_replaces_it(tmp_path):
    folder = tmp_path / "runs"
    for value in (50.0, 60.0):  # the same seed twice: the second run replaces the first
        append_record(record("finetune", "mae", {"top1": value}, seed=3), folder)
    table = measured_table(measurements(read_records(folder)))
    assert table.loc["mae", "top-1 (ft)"] == "60.00"


def test_one_backbone_shares_columns_across_tasks(tmp_path):
    from benchmarks.tables import backbone_of

    assert {backbone_of(a) for a in ("vit_custom_w192_d6_patch8", "vit_custom_w192_d6_patch8_vitdet_mask_rcnn",
                                     "vit_w192_d6_patch8_upernet")} == {"vit_w192_d6_patch8"}
    assert backbone_of("vit_base_patch16") == "vit_base_patch16"
    folder = tmp_path / "runs"
    append_record(make_record(task="finetune", dataset="d", init="mae", arch="vit_custom_w192_d6_patch8",
                              metrics={"top1": 50.0}, config={}, git_commit="", versions={}), folder)
    append_record(make_record(task="segmentation", dataset="d", init="mae", arch="vit_w192_d6_patch8_upernet",
                              metrics={"mIoU": 20.0}, config={}, git_commit="", versions={}), folder)
    frame = measurements(read_records(folder))
    frame["protocol"] = "p"
    assert list(measured_table(frame).columns) == ["top-1 (ft)", "mIoU"]


def test_published_numbers_carry_their_recipe_and_scratch_is_the_table_11_one():
    tables = published_tables(PUBLISHED)
    assert all((t["recipe"] != "–").all() and t["recipe"].str.len().gt(0).all() for t in tables.values())
    ft = tables["IN-1K fine-tune 224px (MAE 1600-ep pretraining)"]
    assert ft.loc["scratch", "top-1 (ft) [ViT-B/16]"] == "82.3"
    scratch = ft.loc["scratch", "recipe"]
    assert "from scratch" in scratch and "Table 11" in scratch and "EMA 0.9999" in scratch
    assert "Table 11" not in ft.loc["mae", "recipe"] and "EMA" not in ft.loc["mae", "recipe"]


def test_rows_trained_with_different_recipes_print_their_recipe(tmp_path):
    folder = tmp_path / "runs"
    mae_ft = {"epochs": 100, "blr": 5e-4, "weight_decay": 0.05, "layer_decay": 0.65, "beta2": 0.999,
              "model_ema": False}
    scratch = {"epochs": 300, "blr": 1e-4, "weight_decay": 0.3, "layer_decay": 1.0, "beta2": 0.95,
               "model_ema": True, "model_ema_decay": 0.9999}
    for init, config, top1 in (("mae", mae_ft, 83.0), ("supervised", mae_ft, 81.0), ("scratch", scratch, 82.0)):
        append_record(make_record(task="finetune", dataset="imagenet", init=init, arch=ARCH, metrics={"top1": top1},
                                  config=config, seed=0, git_commit="", versions={}, protocol="p"), folder)
    append_record(make_record(task="linprobe", dataset="imagenet", init="mae", arch=ARCH, metrics={"top1": 60.0},
                              config={"epochs": 90, "blr": 0.1}, seed=0, git_commit="", versions={}, protocol="p"),
                  folder)
    table = measured_table(measurements(read_records(folder)))
    assert table.loc["scratch", "recipe (ft)"] == \
        "300 ep, blr 0.0001, wd 0.3, layer decay 1, β2 0.95, EMA 0.9999 (its top-1)"
    assert table.loc["mae", "recipe (ft)"] == table.loc["supervised", "recipe (ft)"] == \
        "100 ep, blr 0.0005, wd 0.05, layer decay 0.65, β2 0.999"
    assert "recipe (lin)" not in table.columns  # one recipe for every row: nothing to tell apart
    assert list(table.columns)[-1] == "recipe (ft)"
