"""ADE20K's on-disk layout, checked before mmseg reads it, so a wrong folder is an error that says what to do.

mmseg lists `images/<split>` and pairs each image with the same stem in `annotations/<split>`; a missing
annotation surfaces deep in a data-loader worker, and a label beyond the class count as an opaque
CUDA assert or "Target out of bounds" inside the loss. ADE20K's labels: 0 = "other" (ignored: mmseg's
`reduce_zero_label` makes it 255), 1..K = the K classes (K - 1 after the reduction), 255 = ignored too.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from mae_core.errors import DatasetLayoutError

ROOT_NAME = "ADEChallengeData2016"
SPLITS = ("training", "validation")
LOOKS_LIKE_IMAGES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")  # for the warning on what mmseg skips
IGNORE = (0, 255)
EXIF_ORIENTATION = 0x0112
logger = logging.getLogger(__name__)


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
                img_suffix: str = ".jpg", seg_suffix: str = ".png") -> int:
    """The images mmseg will read in `split` each have an annotation of their size, and (if `check_labels`)
    every label fits `num_classes`.

    `num_classes` counts classes after `reduce_zero_label`, so raw values 1..num_classes are valid.
    Returns the number of images mmseg reads.
    """
    img_dir, ann_dir = root / "images" / split, root / "annotations" / split
    for folder in (img_dir, ann_dir):
        if not folder.is_dir():
            raise DatasetLayoutError(f"missing folder {folder}: ADE20K keeps images in images/{split} and their "
                                     f"label PNGs in annotations/{split}")
    images = mmseg_images(img_dir, img_suffix)
    if not images:
        raise DatasetLayoutError(f"no *{img_suffix} images in {img_dir} (nor its sub-folders)")
    pairs = [(img_dir / rel, ann_dir / (rel[: -len(img_suffix)] + seg_suffix)) for rel in images]
    missing = [(img.name, ann.name) for img, ann in pairs if not ann.is_file()]
    if missing:
        raise DatasetLayoutError(
            f"{len(missing)} of {len(images)} images in {img_dir} have no annotation in {ann_dir} (e.g. "
            f"{missing[0][0]} needs {missing[0][1]}). Add the label PNGs or remove those images.")
    wrong = [(img, ann, a, b) for img, ann in pairs if (a := displayed_size(img)) != (b := displayed_size(ann))]
    if wrong:
        img, ann, a, b = wrong[0]
        raise DatasetLayoutError(
            f"{len(wrong)} of {len(images)} labels in {ann_dir} differ in size from their images (e.g. {ann.name} "
            f"is {b[0]}x{b[1]}, {img.name} {a[0]}x{a[1]} as decoded, EXIF orientation applied): each label must be "
            "its image's size. Fix the label (or the image's EXIF orientation tag), or remove the pair.")
    if check_labels and num_classes is not None:
        for _, ann in pairs:
            check_labels_of(ann, num_classes)
    return len(images)


def mmseg_images(img_dir: Path, img_suffix: str) -> list[str]:
    """The images mmseg's BaseSegDataset reads, by mmengine's own listing (recursive, hidden files left out,
    the suffix matched as written); image files it would leave out are named in a warning."""
    from mmengine import fileio

    read = sorted(fileio.list_dir_or_file(str(img_dir), list_dir=False, suffix=img_suffix, recursive=True))
    seen = fileio.list_dir_or_file(str(img_dir), list_dir=False, suffix=LOOKS_LIKE_IMAGES, recursive=True)
    left = sorted(set(seen) - set(read))
    if left:
        logger.warning("%d image file(s) in %s are not read: mmseg reads *%s only (e.g. %s); rename them to use them",
                       len(left), img_dir, img_suffix, left[0])
    return read


def displayed_size(path: Path) -> tuple[int, int]:
    """(width, height) as decoded by mmcv/OpenCV, which apply the EXIF orientation (a no-op for PNG labels)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            turned = im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # the four that swap width and height
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise DatasetLayoutError(f"cannot read {path}: {type(e).__name__}: {e}. Replace or remove it.") from e
    return (h, w) if turned else (w, h)


def check_labels_of(path: Path, num_classes: int) -> None:
    """Raw ADE20K values must be 0 (ignore), 1..num_classes, or 255 (ignore), in one channel."""
    try:
        with Image.open(path) as im:
            labels = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetLayoutError(f"cannot read annotation {path}: {type(e).__name__}: {e}. Replace or remove it.") \
            from e
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
