"""`maet demo`: generated data -> tiny MAE pretrained on CPU -> reconstruction grid + loss curve.

Sized to finish in a few minutes on a 2-core CPU; the same code path as a real run
(`maet pretrain`), only the preset is shrunk. Re-running resumes/reuses what is already there.
"""

from __future__ import annotations

import time
from pathlib import Path

from mae_core.checkpoints import build_mae_from_checkpoint
from mae_core.data import write_synthetic
from mae_core.train.metrics import MetricsLog
from mae_core.train.pretrain import PretrainConfig, pretrain
from mae_core.visualize import load_images, visualize

from .plots import plot_loss_curve

DEMO_IMG_SIZE = 64
# ViT-Tiny width, 6 blocks, 8-px patches (64 patches per 64-px image); the official decoder shape, narrower.
DEMO_MODEL = dict(model="mae_vit_tiny_patch16", model_kwargs={"patch_size": 8, "depth": 6})
DEMO_EPOCHS = 16
DEMO_NUM_TRAIN = 2000


def run_demo(out: Path, epochs: int | None = None, seed: int = 0, num_train: int | None = None) -> dict:
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "imagenet" / "train").is_dir():
        print(f"[1/3] writing generated data to {data}")
        write_synthetic(data, seed=seed, num_train=num_train or DEMO_NUM_TRAIN, num_val=64, img_size=DEMO_IMG_SIZE)
    cfg = PretrainConfig(
        data_path=str(data / "imagenet"), output_dir=str(out / "pretrain"), img_size=DEMO_IMG_SIZE,
        epochs=epochs or DEMO_EPOCHS, warmup_epochs=2, batch_size=64, blr=3e-3, seed=seed, num_workers=1,
        save_every=1, keep_every=0, log_every=5, **DEMO_MODEL)
    print(f"[2/3] pretraining a tiny MAE on CPU ({cfg.epochs} epochs)")
    final = pretrain(cfg)

    print("[3/3] reconstructions and loss curve")
    model, _ = build_mae_from_checkpoint(final)
    grid = visualize(model, load_images(data / "imagenet" / "val", DEMO_IMG_SIZE, limit=8),
                     out / "reconstructions.png", seed=seed)
    records = MetricsLog(out / "pretrain" / "log.jsonl").read()
    curve = plot_loss_curve(records, out / "loss_curve.png")
    epoch_losses = [r["epoch_loss"] for r in records if "epoch_loss" in r]
    print(f"loss: first epoch {epoch_losses[0]:.4f} -> last epoch {epoch_losses[-1]:.4f}")
    print(f"reconstruction grid: {grid}\nloss curve:          {curve}\nweights:             {final}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return {"grid": grid, "loss_curve": curve, "checkpoint": final, "epoch_losses": epoch_losses}
