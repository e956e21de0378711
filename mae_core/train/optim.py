"""Optimiser parameter groups and the per-iteration learning-rate schedule of the official MAE code."""

from __future__ import annotations

import math

import torch.nn as nn
from timm.optim import param_groups_weight_decay as timm_param_groups_weight_decay

# Parameters that are embeddings, not weights: never decayed (timm's `no_weight_decay` convention).
NO_DECAY_NAMES = {"pos_embed", "decoder_pos_embed", "cls_token", "mask_token", "dist_token"}


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weight matrices, and undecayed biases, norms, pos-embeds and tokens.

    timm's own grouping; the names above (top-level or inside a submodule) are the only addition.
    """
    names = [*NO_DECAY_NAMES, *(f"*.{n}" for n in NO_DECAY_NAMES)]
    return timm_param_groups_weight_decay(model, weight_decay, no_weight_decay_list=names)


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """The linear scaling rule of the paper: lr = blr x effective batch / 256."""
    return base_lr * effective_batch / 256


def lr_at(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """Linear warm-up then half-cycle cosine, evaluated at a fractional epoch (per iteration)."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
