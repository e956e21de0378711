"""An exponential moving average of the weights (the paper's supervised-from-scratch recipe, P Table 11).

timm's `ModelEmaV3`, used as timm's own `train.py` uses it: built from the model on its device
before the DDP wrapper, `update(model, step=n)` after each optimiser step (after gradient
accumulation), where `n` counts the optimiser steps from 1. With `step` given, timm's first update
copies the model (decay 0 at step 1), so the average starts from the weights after one step, not
from the random init. Every rank applies the same update to the same weights, so the EMA needs no
synchronisation. The official MAE fine-tune has no EMA; the paper's scratch baselines (82.3 / 82.6 /
83.1) are the EMA's numbers, so with an EMA the EMA's top-1 is the headline (`summarise`).
"""

from __future__ import annotations

import torch.nn as nn
from timm.utils import ModelEmaV3

# The metrics an evaluation gives that get an `_ema` / `_raw` twin.
EVAL_KEYS = ("top1", "top5", "loss")


def build_model_ema(model: nn.Module, decay: float, warmup: bool) -> ModelEmaV3:
    """The EMA of `model` (on its device). `warmup`: timm's decay warm-up, 1 - n^(-2/3) at step n capped at
    `decay`, for runs too short for a fixed 0.9999 (whose average spans ~10k steps)."""
    return ModelEmaV3(model, decay=decay, use_warmup=warmup)


def update_count(epoch: int, step: int, steps_per_epoch: int, accum_iter: int) -> int:
    """The number of optimiser steps taken once micro-batch `step` of `epoch` stepped (1 for the first):
    an epoch of `steps_per_epoch` micro-batches makes `steps_per_epoch // accum_iter` optimiser steps."""
    return epoch * (steps_per_epoch // accum_iter) + (step + 1) // accum_iter


def summarise(raw: dict, ema: dict | None) -> dict:
    """An evaluation's headline numbers. Without an EMA, the model's. With one, the EMA's (`top1`, `top5`,
    `loss`, also under `*_ema`), and the trained model's under `*_raw`."""
    if ema is None:
        return {k: raw[k] for k in EVAL_KEYS}
    return {**{k: ema[k] for k in EVAL_KEYS}, **{f"{k}_ema": ema[k] for k in EVAL_KEYS},
            **{f"{k}_raw": raw[k] for k in EVAL_KEYS}}
