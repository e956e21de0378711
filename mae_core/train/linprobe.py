"""Linear probing as the official `main_linprobe.py`: what a frozen MAE encoder knows, linearly.

The encoder is frozen; the feature is the cls token after the final norm (`--feature cls`);
the head is `BatchNorm1d(affine=False, eps=1e-6)` then a linear layer (trunc-normal std 0.01): the
BN normalises features whose scale differs from encoder to encoder, and still folds into one linear
map at inference (MoCo v3, paper appendix A.2). The official optimiser and schedule: LARS
(`lars.py`) at blr 0.1 x effective batch / 256, no weight decay, 10 warm-up epochs then cosine, 90
epochs, batch 512 per process (the paper's 16384 in total); weak augmentation: the official
TF-style RandomResizedCrop (bicubic) + flip.

`--probe cached` (cached_probe.py) is the other probe: the same head on features computed once,
fitted to convergence, with weighted k-NN beside it; `--feature` picks the feature for both
(features.py: `auto` reads each checkpoint on the feature it was trained to give).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from ..data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from ..models_vit import init_head
from ..result import RunResult
from .cached_probe import cached_linprobe
from .classification import Recipe, train_classifier
from .configs import PROBES, LinprobeConfig  # noqa: F401  (public names)
from .distributed import DistInfo
from .features import probe_classifier
from .lars import LARS


class RandomResizedCropTF(transforms.RandomResizedCrop):
    """The official `util/crop.py`: one draw of area and log-aspect, clamped to the image (BYOL's TF
    crop), instead of torchvision's up-to-10 rejection-sampling tries."""

    @staticmethod
    def get_params(img, scale, ratio):
        width, height = F.get_image_size(img)
        target_area = height * width * torch.empty(1).uniform_(scale[0], scale[1]).item()
        log_ratio = torch.log(torch.tensor(ratio))
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = min(int(round(math.sqrt(target_area * aspect))), width)
        h = min(int(round(math.sqrt(target_area / aspect))), height)
        i = torch.randint(0, height - h + 1, size=(1,)).item()
        j = torch.randint(0, width - w + 1, size=(1,)).item()
        return i, j, h, w


def build_train_transform(img_size: int) -> transforms.Compose:
    return transforms.Compose([
        RandomResizedCropTF(img_size, interpolation=InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD),
    ])


def freeze_all_but_head(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad = False
    for p in model.head.parameters():
        p.requires_grad = True


def make_recipe(cfg: LinprobeConfig):
    def recipe(num_classes: int, info: DistInfo, lr: float) -> Recipe:
        model, kwargs, report, feature = probe_classifier(cfg.model, cfg.model_kwargs, cfg.img_size, num_classes,
                                                          cfg.init, cfg.feature, cfg.seed)
        init_head(model, std=0.01)  # MoCo v3's linear-classifier init
        freeze_all_but_head(model)
        model.to(info.device)
        optimizer = LARS(model.head.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        return Recipe(model=model, model_kwargs=kwargs, optimizer=optimizer, criterion=nn.CrossEntropyLoss(),
                      init_report=report, feature=feature.as_dict())
    return recipe


def linprobe(cfg: LinprobeConfig) -> RunResult:
    """Train (or resume) a linear probe on a frozen encoder; returns the final checkpoint and its metrics
    (`--probe cached`: with the k-NN result on the same features in `related`)."""
    if cfg.probe == "cached":
        return cached_linprobe(cfg)
    return train_classifier(cfg, "linprobe", build_train_transform(cfg.img_size), make_recipe(cfg))
