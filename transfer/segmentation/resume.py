"""Resuming a segmentation run: only from its own work dir, and exactly, on every rank.

Safe: mmengine's checkpoints hold Python objects (`HistoryBuffer`, ...) that torch's safe loader refuses.
`SegRunner.resume` loads only a checkpoint inside the run's own work dir, lifting the safe loader for that one
call (docs/install.md); a user's file never goes that way.

Exact: mmengine restores the model, optimizer, schedulers and iteration, and replays the data order by loading
the finished iterations' batches again, so every rank's augmentation draws (NumPy, in the main process or in
loader workers that mmengine seeds per rank) come out as they did. What it leaves out is torch's generator,
which drop path and dropout draw from, and whose state differs from rank to rank. `StepSeedHook` seeds it
before every iteration from (seed, rank, iteration), as the mae_core engines do (`seed_step`): a resumed run
draws what the uninterrupted one drew on every rank, whatever the evaluations or loader restarts between
two iterations drew, and nothing has to be gathered from the ranks into the checkpoint. NumPy is not
reseeded there: the iteration's batch is already loaded when its hooks run, so that would break the replay.

Importing this module registers both with mmseg's registries (engine.py imports it).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmseg.registry import HOOKS, RUNNERS

from mae_core.errors import CheckpointFormatError
from mae_core.train.seeded import sample_seed


def step_seed(seed: int, rank: int, iteration: int) -> int:
    """The torch seed of one rank's iteration (the mae_core engines' `seed_step` formula, one epoch)."""
    return sample_seed(seed + 7_777 * rank, 0, iteration)


@HOOKS.register_module()
class StepSeedHook(Hook):
    """Seed torch's generators (CPU and every GPU) before each training iteration; see the module docstring."""

    priority = "VERY_HIGH"  # before any other hook of the iteration

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        torch.manual_seed(step_seed(runner.seed, get_rank(), runner.iter))


@contextlib.contextmanager
def trusted_pickle_load():
    """Lift torch's safe loader for the calls inside (mmengine's `torch.load` passes no `weights_only`)."""
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


@RUNNERS.register_module()
class SegRunner(Runner):
    """mmengine's Runner whose resume unpickles only checkpoints of its own work dir (docs/install.md)."""

    def resume(self, filename: str, *args, **kwargs) -> None:
        path, work_dir = Path(filename).resolve(), Path(self.work_dir).resolve()
        if work_dir not in path.parents:
            raise CheckpointFormatError(
                f"refusing to resume from {filename}: only checkpoints this run wrote into its work dir "
                f"{work_dir} are resumed (they hold pickled objects). To start from weights, use --init.")
        with trusted_pickle_load():
            super().resume(filename, *args, **kwargs)
