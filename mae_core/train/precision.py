"""Mixed precision shared by every training and evaluation loop: one rule for what `auto` means.

`auto` is fp16 autocast with a grad scaler on CUDA (the official recipe) and fp32 on CPU, where
fp16 autocast has no scaler; bf16 works on both and needs no scaler.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..errors import OptionError
from .options import PRECISIONS


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise OptionError("fp16 autocast with a grad scaler needs CUDA; on CPU use --precision bf16 or fp32")
    if precision not in PRECISIONS:
        raise OptionError(f"--precision must be one of auto, fp32, fp16, bf16; got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context of a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler that is active only for fp16 (a pass-through otherwise, so loops need no branches)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
