"""`maet demo`: the README's main job, the whole suite on generated data on a 2-core CPU.

It runs `pipelines/synthetic.yaml`: data, MAE pretraining, the supervised and scratch baselines, then
fine-tune, linear probe, detection and segmentation for every init, with the comparison tables printed
and written to `results/tables/`; then the MAE's reconstructions and loss curve. The same commands a
user types (`maet pretrain`, `maet detect train`, ...) run as the pipeline's stages, so a killed demo
resumes where it stopped and a second run only redraws the figures.
"""

from __future__ import annotations

import time
from pathlib import Path

from mae_core.checkpoints import build_mae_from_checkpoint
from mae_core.train.metrics import MetricsLog
from mae_core.visualize import load_images, visualize

from .pipeline import data_roots, load_config, run_pipeline, tables_dir
from .plots import plot_loss_curve

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "pipelines" / "synthetic.yaml"


def run_demo(config: str | Path = DEMO_CONFIG, jobs: int | None = None, seed: int = 0,
             seeds: list[int] | None = None) -> dict:
    """Run the pipeline, then draw the pretrained MAE's reconstructions (val images) and its loss curve.
    `seeds`: the downstream seeds (default: the config's one); the pretrained checkpoints are shared."""
    t0 = time.perf_counter()
    stages = run_pipeline(config, jobs=jobs, seeds=seeds)
    cfg = load_config(config)
    out = Path(cfg["output_dir"])
    result: dict = {"stages": stages, "tables": tables_dir(cfg)}
    pretrain = next((s for s in stages if s.task == "pretrain"), None)
    if pretrain is not None:
        model, _ = build_mae_from_checkpoint(pretrain.checkpoint)
        images = load_images(data_roots(cfg, out)["pretrain"] / "val", model.img_size, limit=8)
        result["grid"] = visualize(model, images, out / "reconstructions.png", seed=seed)
        records = MetricsLog(pretrain.folder / "log.jsonl").read()
        result["loss_curve"] = plot_loss_curve(records, out / "loss_curve.png")
        losses = [r["epoch_loss"] for r in records if "epoch_loss" in r]
        print(f"MAE loss: first epoch {losses[0]:.4f} -> last epoch {losses[-1]:.4f}")
        print(f"reconstruction grid: {result['grid']}\nloss curve:          {result['loss_curve']}")
    print(f"tables:              {result['tables']}/ (README.md, CSV, PNG)")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return result
