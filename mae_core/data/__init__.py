"""Datasets in the real on-disk layouts, the official MAE transforms, and the synthetic writers."""

from .imagenet import IMG_EXTENSIONS, ImageFolderDataset, pil_rgb_loader
from .synthetic import (
    LAYOUTS,
    OTHER_SHAPE_CLASSES,
    SHAPE_CLASSES,
    SHAPE_SETS,
    Scene,
    ade20k_class_names,
    generate_scene,
    iter_scenes,
    write_synthetic,
)
from .transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    build_eval_transform,
    build_pretrain_transform,
    denormalize,
)

__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "IMG_EXTENSIONS",
    "LAYOUTS",
    "OTHER_SHAPE_CLASSES",
    "SHAPE_CLASSES",
    "SHAPE_SETS",
    "ImageFolderDataset",
    "Scene",
    "ade20k_class_names",
    "build_eval_transform",
    "build_pretrain_transform",
    "denormalize",
    "generate_scene",
    "iter_scenes",
    "pil_rgb_loader",
    "write_synthetic",
]
