"""Exact resume: what detectron2's checkpoint lacks to continue a killed run as if it had never stopped.

detectron2's `DetectionCheckpointer` with `trainer=` already stores the model, optimizer, iteration,
lr scheduler and AMP grad scaler. Two things still differ after a restart: the random number
generators (drop path, RPN / ROI sampling, augmentation draws) and the data order, because
`TrainingSampler` starts its seeded stream from the beginning again. `ResumeState` is a trainer hook
whose `state_dict` goes into every checkpoint detectron2 writes (trainer hooks with state are saved
by `TrainerBase.state_dict`); on resume it puts the generators back and fast-forwards the sampler by
the images the finished iterations used. Every value is a tensor or a plain number, so the file
loads with `torch.load(weights_only=True)`.

Only rank 0 writes checkpoints, so under DDP every rank's generators are gathered to it at each
iteration that the `PeriodicCheckpointer` (the next hook) saves, and each rank takes its own back; a run
resumed on another number of processes keeps its seeds (a warning says so). Exact (bit-identical
weights, tested in one process and in two) with `num_workers=0` and `aspect_ratio_grouping=False`, as in
the tiny protocol. With worker processes the augmentation draws happen in the workers, and with
aspect-ratio grouping images wait in buckets, so there the run resumes at the right position in the
data stream but not bit-identically.
"""

from __future__ import annotations

import itertools
import logging
import random

import numpy as np
import torch
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import HookBase
from detectron2.utils import comm

logger = logging.getLogger(__name__)


class ResumableTrainingSampler(TrainingSampler):
    """detectron2's `TrainingSampler` that can skip the first `skip` indices of this rank's stream."""

    skip = 0

    def __iter__(self):
        start = self._rank + self.skip * self._world_size
        yield from itertools.islice(self._infinite_indices(), start, None, self._world_size)


def rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class ResumeState(HookBase):
    """Saves and restores the RNG states and the sampler position; see the module docstring."""

    def __init__(self, sampler: ResumableTrainingSampler, images_per_rank: int, period: int):
        self.sampler, self.images_per_rank, self.period = sampler, images_per_rank, period
        self._loaded: dict | None = None
        self._gathered: tuple[int, list[dict]] | None = None  # (iteration, every rank's generators)

    def after_step(self):
        it = self.trainer.iter  # the PeriodicCheckpointer's condition to save; it runs right after this hook
        if comm.get_world_size() > 1 and ((it + 1) % self.period == 0 or it >= self.trainer.max_iter - 1):
            self._gathered = (it, comm.all_gather(rng_state()))

    def state_dict(self) -> dict:
        state = {"rng": rng_state(), "sampler_seed": int(self.sampler._seed)}
        if self._gathered is not None and self._gathered[0] == self.trainer.iter:
            state["rng_per_rank"] = self._gathered[1]
        return state

    def load_state_dict(self, state: dict) -> None:
        self._loaded = state

    def before_train(self):
        start = self.trainer.start_iter
        if self._loaded is not None:
            self.sampler._seed = self._loaded["sampler_seed"]
            self.sampler.skip = start * self.images_per_rank
        # Create the loader iterator here in every run (fresh or resumed), so that its creation never sits
        # between a restored RNG state and the next training step.
        self.trainer._data_loader_iter  # noqa: B018  (a lazily created property)
        if self._loaded is None:
            return
        world, per_rank = comm.get_world_size(), self._loaded.get("rng_per_rank")
        if world == 1:
            set_rng_state(self._loaded["rng"])
        elif per_rank is not None and len(per_rank) == world:
            set_rng_state(per_rank[comm.get_rank()])
        elif comm.is_main_process():
            logger.warning(f"the checkpoint holds the generators of {len(per_rank or [0])} process(es), this run has "
                           f"{world}: they restart from their seeds, so the resumed run is not bit-identical")
