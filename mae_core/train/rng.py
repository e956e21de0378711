"""Seeding for classification training: every random draw is a pure function of (seed, epoch, index).

Fine-tuning draws from three generators: torchvision/timm crops, flips and random erasing use
torch's; timm's RandAugment uses Python's `random` and NumPy's; Mixup/CutMix use NumPy's at batch
level; drop path uses torch's on the training device. Seeding all of them per sample (in the data
pipeline) and per step (in the loop) makes a resumed run bitwise identical to an uninterrupted
one, whatever the number of data-loader workers. The distributions are those of the libraries.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset

from .seeded import sample_seed


@contextmanager
def forked_seed(seed: int):
    """Seed torch (CPU), `random` and NumPy for the block, then put their previous states back."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def seed_step(seed: int, epoch: int, step: int, rank: int = 0) -> None:
    """Seed the generators a training step draws from (mixup in NumPy, drop path in torch, all devices)."""
    s = sample_seed(seed + 7_777 * rank, epoch, step)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


class SeededSampleDataset(Dataset):
    """Wraps an (image, label) dataset so that sample `index` of `epoch` is augmented the same way every time."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with forked_seed(sample_seed(self.seed, self.epoch, index)):
            return self.dataset[index]
