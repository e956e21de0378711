"""What the pretraining stages were given and what they reached, printed under a pipeline's table.

A transfer row is only as good as the init behind it, so the MAE's loss and the supervised baseline's
own top-1 (with its chance level) stand beside the budget each had: epochs, optimiser steps, images
seen and the stage's time. A baseline that learned little then shows as such, next to what it was given.
"""

from __future__ import annotations

import json
from pathlib import Path

from mae_core.data.imagenet import IMG_EXTENSIONS
from mae_core.train.metrics import MetricsLog


def train_images(data_path: str | Path) -> int:
    """The number of training images in an ImageNet-layout root (`train/<class>/<image>`), by the suffixes the
    training dataset reads."""
    return sum(1 for f in (Path(data_path) / "train").glob("*/*") if f.suffix.lower() in IMG_EXTENSIONS)


def budget_row(name: str, folder: Path, seconds: float) -> dict:
    """One pretraining stage (MAE or supervised) from its folder: `config.json`, `log.jsonl`, its time."""
    run = json.loads((folder / "config.json").read_text())
    cfg, log = run["config"], MetricsLog(folder / "log.jsonl").read()
    n = train_images(cfg["data_path"])
    row = {"stage": name, "epochs": cfg["epochs"], "steps": cfg["epochs"] * (n // run["effective_batch"]),
           "images": cfg["epochs"] * n, "seconds": round(seconds), "result": "–"}
    ends = [r for r in log if "epoch_loss" in r or "test_top1" in r]  # one line per finished epoch
    if ends and "test_top1" in ends[-1]:
        last, chance = ends[-1], 100 / len(run["classes"])
        row["result"] = (f"top-1 {last['test_top1']:.1f} % on its own val (best epoch {last['best_top1']:.1f}); "
                         f"chance {chance:.1f} %: {last['test_top1'] / chance:.1f}x")
    elif ends:
        row["result"] = f"loss {ends[0]['epoch_loss']:.4f} -> {ends[-1]['epoch_loss']:.4f} (first -> last epoch)"
    return row


def pretraining_table(title: str, runs: list[tuple[str, Path, float]], out: str | Path | None = None) -> str:
    """Markdown: a row per (stage name, folder, seconds) of the pipeline's pretraining stages; also written to
    `out/<title>__pretraining.md` where `out` is given."""
    lines = [f"## {title}: pretraining", "", "| stage | epochs | optimiser steps | images seen | time (s) | result |",
             "|---|---|---|---|---|---|"]
    for r in (budget_row(*run) for run in runs):
        cells = (r["stage"], r["epochs"], r["steps"], r["images"], r["seconds"], r["result"])
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    text = "\n".join(lines) + "\n"
    if out is not None:
        (Path(out) / f"{title}__pretraining.md").write_text(text)
    return text
