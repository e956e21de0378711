"""Resumable training state: save it atomically, find it, and restore it exactly.

A `checkpoint-last.pth` is our checkpoint format (`{'model', 'meta'}`, official key names) plus
what a bitwise-exact resume needs: optimizer, loss scaler, the finished epoch, the CPU RNG and,
when the run keeps one, the EMA of the weights (`ema`, a state dict with the model's key names).
Resuming refuses a checkpoint whose model configuration differs from the run's, because loading
it would either fail deep inside torch or, worse, silently train another model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints import save_mae_checkpoint
from ..ckpt_io import load_file
from ..errors import CheckpointFormatError

LAST = "checkpoint-last.pth"
RESUME_KEYS = {"model", "optimizer", "epoch", "meta"}


def find_resume(resume_from: str | None, output_dir: str | Path, resume: bool = True) -> Path | None:
    """An explicit --resume-from, else (unless --no-resume) `checkpoint-last.pth` in the output folder if a run
    left one."""
    if resume_from:
        return Path(resume_from)
    last = Path(output_dir) / LAST
    return last if resume and last.exists() else None


def save_training_state(path: str | Path, model, meta: dict, optimizer, scaler, epoch: int, ema=None) -> Path:
    extra = {"ema": ema.module.state_dict()} if ema is not None else {}
    return save_mae_checkpoint(path, model, meta, optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                               epoch=epoch, rng={"torch": torch.get_rng_state()}, **extra)


def restore_training_state(path: str | Path, model, optimizer, scaler, model_kwargs: dict,
                           what: str = "pretraining", ema=None) -> tuple[int, dict]:
    """Load model, optimizer, scaler, RNG (and the EMA, if the run keeps one) from `path`; returns
    (next epoch, the loaded checkpoint)."""
    state = load_file(path)
    if not RESUME_KEYS <= set(state):
        raise CheckpointFormatError(f"{path} is not a resumable {what} checkpoint (it lacks optimizer/epoch); "
                                    "to start from its weights instead, use it as an init, not --resume")
    saved_kwargs = state["meta"].get("model_kwargs", {})
    if saved_kwargs != model_kwargs:
        diff = {k: (saved_kwargs.get(k), model_kwargs.get(k)) for k in set(saved_kwargs) | set(model_kwargs)
                if saved_kwargs.get(k) != model_kwargs.get(k)}
        raise CheckpointFormatError(f"cannot resume from {path}: it was trained with another model "
                                    f"configuration (checkpoint vs now: {diff}); use a new --output-dir")
    if ema is not None and "ema" not in state:
        raise CheckpointFormatError(f"cannot resume from {path} with --model-ema: that run kept no EMA of its "
                                    "weights; resume it without --model-ema, or start over in a new --output-dir")
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.module.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    if "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    if "rng" in state:
        torch.set_rng_state(state["rng"]["torch"])
    return int(state["epoch"]) + 1, state
