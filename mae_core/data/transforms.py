"""The image transforms of the official MAE code, so our numbers are comparable with the paper's.

Pretraining uses a wide-scale random crop (0.2-1.0) and a flip only: MAE needs no colour jitter.
Evaluation resizes the shorter side by 1/0.875 (256 for 224) and centre-crops, as in DeiT/MAE.
"""

from __future__ import annotations

import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms
from torchvision.transforms import InterpolationMode

__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "EVAL_CROP_PCT",
    "build_pretrain_transform",
    "build_eval_transform",
    "denormalize",
]

EVAL_CROP_PCT = 0.875  # 224 / 256


def build_pretrain_transform(img_size: int) -> transforms.Compose:
    """The transform of `main_pretrain.py` in the official MAE repository."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(img_size, scale=(0.2, 1.0), interpolation=InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD),
        ]
    )


def build_eval_transform(img_size: int) -> transforms.Compose:
    """The eval transform of the official fine-tuning / linear-probe code (resize 256, crop 224).

    As there, images above 224 px (e.g. ViT-H@448) are resized to the crop size (crop_pct 1.0).
    """
    resize = int(img_size / EVAL_CROP_PCT) if img_size <= 224 else img_size
    return transforms.Compose(
        [
            transforms.Resize(resize, interpolation=InterpolationMode.BICUBIC),  # shorter side
            transforms.CenterCrop(img_size),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD),
        ]
    )


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo `Normalize(IMAGENET_DEFAULT_MEAN, STD)` on (3,H,W) or (N,3,H,W), for showing images."""
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected a (3,H,W) or (N,3,H,W) tensor, got shape {tuple(x.shape)}")
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return x * std + mean
