"""The parts of a training step that every engine shares: the global loss check and the optimiser update."""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import torch

from ..errors import NonFiniteLossError
from .distributed import DistInfo, all_reduce_mean


def global_loss(loss: torch.Tensor, info: DistInfo, epoch: int, step: int, last_good: Path | None,
                hint: str = "") -> float:
    """The loss averaged over processes; NaN/Inf stops every rank together with a message, not a hang."""
    value = all_reduce_mean(loss.item(), info)
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"loss is {value} at epoch {epoch + 1}, step {step}; stopping. The last good checkpoint is "
            f"{last_good or 'not written yet'}. Try a lower --blr, --precision bf16 instead of fp16, "
            f"{hint}or check the input images.")
    return value


def backward_and_update(model, loss: torch.Tensor, optimizer, scaler, step: int, accum_iter: int, info: DistInfo,
                        clip_grad: float | None = None) -> bool:
    """Backward with gradient accumulation (no DDP all-reduce until the last micro-batch), then the
    (grad-scaled, optionally clipped) optimiser step every `accum_iter` micro-batches, as the official code.
    Returns whether this micro-batch ended with an optimiser step (an EMA updates after it).

    Gradients are zeroed at each epoch's first step (`step` counts from 0 every epoch), as the official engines
    do: when `accum_iter` does not divide the epoch, its leftover micro-batches are dropped rather than carried
    into the next epoch's first update, which a run resumed from the epoch's checkpoint could not reproduce."""
    if step == 0:
        optimizer.zero_grad(set_to_none=True)
    update = (step + 1) % accum_iter == 0
    with model.no_sync() if (info.enabled and not update) else nullcontext():
        scaler.scale(loss / accum_iter).backward()
    if update:
        if clip_grad:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    return update
