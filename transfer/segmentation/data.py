"""ADE20K's on-disk layout, checked before mmseg reads it, so a wrong folder is an error that says what to do.

mmseg lists `images/<split>` and pairs each image with the same stem in `annotations/<split>`; a missing
annotation surfaces deep in a data-loader worker, and a label beyond the class count as an opaque
CUDA assert or "Target out of bounds" inside the loss. ADE20K's labels: 0 = "other" (ignored: mmseg's
`reduce_zero_label` makes it 255), 1..K = the K classes (K - 1 after the reduction), 255 = ignored too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mae_core.errors import DatasetLayoutError

ROOT_NAME = "ADEChallengeData2016"
SPLITS = ("training", "validation")
IMG_SUFFIXES = (".jpg", ".jpeg", ".png")
IGNORE = (0, 255)


class LabelRangeError(DatasetLayoutError):
    """An annotation with label values the configured classes cannot hold."""


def find_root(path: str | Path) -> Path:
    """The `ADEChallengeData2016` folder: `path` itself, or `path/ADEChallengeData2016` (e.g. `.../ade20k`)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DatasetLayoutError(f"ADE20K root {path} is not a folder. Pass the ADEChallengeData2016 folder (or "
                                 "its parent); `maet make-data synthetic --out DIR` writes DIR/ade20k/" + ROOT_NAME)
    for candidate in (path, path / ROOT_NAME):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    found = sorted(p.name for p in path.iterdir())[:10]
    raise DatasetLayoutError(
        f"{path} is not in ADE20K's layout: expected {ROOT_NAME}/images/{{training,validation}}/*.jpg and "
        f"{ROOT_NAME}/annotations/{{training,validation}}/*.png (same stems), found {found or 'an empty folder'}")


def check_split(root: Path, split: str, num_classes: int | None = None, check_labels: bool = True,
                seg_suffix: str = ".png") -> int:
    """Every image of `split` has its annotation, and (if `check_labels`) every label fits `num_classes`.

    `num_classes` counts classes after `reduce_zero_label`, so raw values 1..num_classes are valid.
    Returns the number of images.
    """
    img_dir, ann_dir = root / "images" / split, root / "annotations" / split
    for folder in (img_dir, ann_dir):
        if not folder.is_dir():
            raise DatasetLayoutError(f"missing folder {folder}: ADE20K keeps images in images/{split} and their "
                                     f"label PNGs in annotations/{split}")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMG_SUFFIXES)
    if not images:
        raise DatasetLayoutError(f"no images ({', '.join(IMG_SUFFIXES)}) in {img_dir}")
    missing = [p.name for p in images if not (ann_dir / (p.stem + seg_suffix)).is_file()]
    if missing:
        raise DatasetLayoutError(
            f"{len(missing)} of {len(images)} images in {img_dir} have no annotation in {ann_dir} (e.g. "
            f"{missing[0]} needs {Path(missing[0]).stem + seg_suffix}). Add the label PNGs or remove those images.")
    if check_labels and num_classes is not None:
        for p in images:
            check_labels_of(ann_dir / (p.stem + seg_suffix), num_classes)
    return len(images)


def check_labels_of(path: Path, num_classes: int) -> None:
    """Raw ADE20K values must be 0 (ignore), 1..num_classes, or 255 (ignore), in one channel."""
    with Image.open(path) as im:
        labels = np.asarray(im)
    if labels.ndim != 2:
        raise LabelRangeError(f"{path} has {labels.shape[-1]} channels: ADE20K annotations are single-channel "
                              "PNGs of class indices, not colour images")
    bad = labels[(labels > num_classes) & (labels != 255)]
    if bad.size:
        values = sorted(int(v) for v in np.unique(bad))
        raise LabelRangeError(
            f"{path} holds label values {values[:8]} beyond the class count: the config has {num_classes} classes, "
            f"so raw ADE20K labels must be 1..{num_classes} (0 and 255 = ignore). Pass --num-classes "
            f"{max(values)} if the data has more classes, or fix the annotation.")


def check_ade20k(path: str | Path, num_classes: int | None = None, splits=SPLITS, check_labels: bool = True) -> dict:
    """Check the layout (and labels) of the splits a run reads; returns {'root': ..., split: image count}."""
    root = find_root(path)
    return {"root": root, **{s: check_split(root, s, num_classes, check_labels) for s in splits}}
