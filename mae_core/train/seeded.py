"""Make every random draw of a sample a pure function of (seed, epoch, sample index).

Augmentation and the masking noise are drawn from generators seeded per sample, so they do not
depend on the number of processes, data-loader workers, or where a run was resumed. That is what
makes a resumed run bitwise identical to an uninterrupted one, and 2 DDP processes equal to one
process at the same global batch. The distributions are unchanged: uniform noise, the usual
torchvision / timm augmentations.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset


def sample_seed(seed: int, epoch: int, index: int) -> int:
    # Large odd multipliers keep (seed, epoch, index) triples from colliding in practice.
    return (seed * 1_000_003 + epoch * 7_919_993 + index * 2_654_435_761) % (2**63 - 1)


@contextmanager
def seeded_cpu_rngs(seed: int):
    """Seed torch's CPU generator, `random` and NumPy for the block, then put their states back.

    torchvision transforms draw from torch's generator, timm's RandAugment from `random` and NumPy.
    (Saving the states by hand is ~50x cheaper than `torch.random.fork_rng` + `torch.manual_seed`,
    which matters at one call per sample.)
    """
    torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


class SeededSampleDataset(Dataset):
    """Wraps an (image, label) dataset so that sample `index` of `epoch` is augmented the same way every time."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with seeded_cpu_rngs(sample_seed(self.seed, self.epoch, index)):
            return self.dataset[index]


class SeededMaskingDataset(SeededSampleDataset):
    """Also returns the MAE masking noise of the sample: (image, label, noise ~ U(0,1)^num_patches)."""

    def __init__(self, dataset: Dataset, num_patches: int, seed: int):
        super().__init__(dataset, seed)
        self.num_patches = num_patches

    def __getitem__(self, index: int):
        img, label = super().__getitem__(index)
        s = sample_seed(self.seed, self.epoch, index)
        noise = torch.rand(self.num_patches, generator=torch.Generator().manual_seed(s + 1))
        return img, label, noise


def seed_step(seed: int, epoch: int, step: int, rank: int = 0) -> None:
    """Seed what a training step itself draws (Mixup/CutMix in NumPy, drop path in torch on every device)."""
    s = sample_seed(seed + 7_777 * rank, epoch, step)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)
