"""The README's main job: `maet demo` runs pipelines/synthetic.yaml; here the same config, shrunk."""

from pathlib import Path

import pytest
import yaml
from PIL import Image

from benchmarks.demo import DEMO_CONFIG, run_demo
from benchmarks.pipeline import data_roots, load_config, plan


def test_shipped_demo_config_plans_the_whole_suite(tmp_path):
    cfg = load_config(DEMO_CONFIG)
    stages = plan(cfg, data_roots(cfg, tmp_path), tmp_path)
    names = [s.name for s in stages]
    # every init (mae, supervised, scratch) on every task (finetune, linprobe + k-NN, detection, segmentation)
    assert names[:2] == ["pretrain", "supervised"] and len(names) == 2 + 4 * 3
    assert {s.task for s in stages} == {"pretrain", "supervised", "finetune", "linprobe", "detection", "segmentation"}
    for task in ("finetune", "linprobe", "detection", "segmentation"):
        assert {s.name.split("/")[1] for s in stages if s.task == task} == {"mae", "supervised", "scratch"}
    gen = cfg["data"]["generate"]
    # many more unlabelled scenes than labelled ones, as in practice
    assert gen["pretrain"]["num_train"] >= 10 * gen["downstream"]["num_train"]
    # a transfer, not a label leak: the supervised labels are other shapes than the downstream classes
    assert gen["pretrain"]["shapes"] == "other" and gen["downstream"].get("shapes", "base") == "base"


def shrunk_demo_config(tmp_path: Path) -> Path:
    """The shipped config at a size a test affords: fewer scenes and steps, classification tasks only."""
    cfg = yaml.safe_load(DEMO_CONFIG.read_text())
    cfg.update(output_dir=str(tmp_path / "out"), results_dir=str(tmp_path / "runs"),
               tables_dir=str(tmp_path / "tables"), inits=["mae", "scratch"])
    gen = cfg["data"]["generate"]
    gen["pretrain"].update(num_train=64, num_val=8)
    gen["downstream"].update(num_train=24, num_val=12, layouts=["imagenet"])
    cfg["pretrain"].update(epochs=1, warmup_epochs=0, batch_size=16, num_workers=0)
    for task in ("finetune", "linprobe"):
        cfg[task].update(epochs=1, warmup_epochs=0, batch_size=8, num_workers=0)
    for task in ("supervised", "detection", "segmentation"):
        del cfg[task]
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_demo_runs_the_pipeline_in_parallel_and_draws_tables_and_figures(tmp_path, capsys):
    result = run_demo(shrunk_demo_config(tmp_path), jobs=2)
    out = capsys.readouterr().out
    # two stages at a time: the scratch stages need no checkpoint, so they start beside the pretraining
    assert "pretrain: maet pretrain" in out and out.index("finetune/scratch/seed0: maet") < out.index(
        "pretrain: finished")
    assert all(s.done and (s.folder / "stage.log").stat().st_size > 0 for s in result["stages"])
    table = (tmp_path / "tables" / "synthetic.md").read_text()
    assert "| mae |" in table and "| scratch |" in table
    grid = Image.open(result["grid"])
    assert grid.size == (4 * 164 + 4, 18 + 8 * 164 + 4)  # 4 panels of 160 px + 4 px padding, 8 rows, titles
    assert Image.open(result["loss_curve"]).size[0] > 0
