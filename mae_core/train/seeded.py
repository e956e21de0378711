"""Make every random draw of a sample a pure function of (seed, epoch, sample index).

Augmentation and the masking noise are drawn from a generator seeded per sample, so they do not
depend on the number of processes, data-loader workers, or where a run was resumed. That is what
makes a resumed run bitwise identical to an uninterrupted one, and 2 DDP processes equal to one
process at the same global batch. The distribution is unchanged: uniform noise, the usual
torchvision augmentations.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


def sample_seed(seed: int, epoch: int, index: int) -> int:
    # Large odd multipliers keep (seed, epoch, index) triples from colliding in practice.
    return (seed * 1_000_003 + epoch * 7_919_993 + index * 2_654_435_761) % (2**63 - 1)


class SeededMaskingDataset(Dataset):
    """Wraps an (image, label) dataset; returns (image, label, noise) with noise ~ U(0,1)^num_patches."""

    def __init__(self, dataset: Dataset, num_patches: int, seed: int):
        self.dataset, self.num_patches, self.seed = dataset, num_patches, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        s = sample_seed(self.seed, self.epoch, index)
        with torch.random.fork_rng(devices=[]):  # torchvision transforms draw from the global CPU RNG
            torch.manual_seed(s)
            img, label = self.dataset[index]
        noise = torch.rand(self.num_patches, generator=torch.Generator().manual_seed(s + 1))
        return img, label, noise
