"""Resumable training state: save it atomically, find it, and restore it exactly.

A `checkpoint-last.pth` is our checkpoint format (`{'model', 'meta'}`, official key names) plus
what a bitwise-exact resume needs: optimizer, loss scaler, the finished epoch and the CPU RNG.
Resuming refuses a checkpoint whose model configuration differs from the run's, because loading
it would either fail deep inside torch or, worse, silently train another model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints import load_file, save_mae_checkpoint
from ..errors import CheckpointFormatError

LAST = "checkpoint-last.pth"
RESUME_KEYS = {"model", "optimizer", "epoch", "meta"}


def find_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """An explicit --resume, else `checkpoint-last.pth` in the output folder if a run left one."""
    if resume:
        return Path(resume)
    last = Path(output_dir) / LAST
    return last if last.exists() else None


def save_training_state(path: str | Path, model, meta: dict, optimizer, scaler, epoch: int) -> Path:
    return save_mae_checkpoint(path, model, meta, optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                               epoch=epoch, rng={"torch": torch.get_rng_state()})


def restore_training_state(path: str | Path, model, optimizer, scaler, model_kwargs: dict,
                           what: str = "pretraining") -> tuple[int, dict]:
    """Load model, optimizer, scaler and RNG from `path`; returns (next epoch, the loaded checkpoint)."""
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
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    if "rng" in state:
        torch.set_rng_state(state["rng"]["torch"])
    return int(state["epoch"]) + 1, state
