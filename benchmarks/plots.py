"""Figures the suite writes (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curve(records: list[dict], path: str | Path, title: str = "MAE pretraining loss") -> Path:
    """Per-step loss (thin) and per-epoch mean (thick) from a pretraining `log.jsonl`."""
    steps = [(r["step"], r["loss"]) for r in records if "step" in r and "loss" in r]
    epochs = [(r["epoch"] + 1, r["epoch_loss"]) for r in records if "epoch_loss" in r]
    steps_per_epoch = max(s for s, _ in steps) / max(e for e, _ in epochs) if steps and epochs else 1
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if steps:
        ax.plot([s for s, _ in steps], [v for _, v in steps], lw=0.8, alpha=0.5, label="logged steps")
    if epochs:
        ax.plot([e * steps_per_epoch for e, _ in epochs], [v for _, v in epochs], "o-", lw=2, label="epoch mean")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (masked patches)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
