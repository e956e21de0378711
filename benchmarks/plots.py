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
    return _save(fig, path)


def bar_chart(stats, path: str | Path, title: str) -> Path:
    """Grouped bars: one group per metric column, one bar per init; error bars where std is known."""
    columns, inits = list(dict.fromkeys(stats["column"])), list(dict.fromkeys(stats["init"]))
    width = 0.8 / max(len(inits), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * len(columns), 3.5), dpi=120)
    for i, init in enumerate(inits):
        rows = stats[stats["init"] == init].set_index("column").reindex(columns)
        x = [c + (i - (len(inits) - 1) / 2) * width for c in range(len(columns))]
        ax.bar(x, rows["mean"], width, yerr=rows["std"].fillna(0), capsize=3, label=init)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
