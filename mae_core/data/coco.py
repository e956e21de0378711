"""The COCO layout of the generated scenes: exact RLE masks (the default), or real COCO's quirks.

`coco_style="exact"`: each image is the scene as the other layouts hold it (same JPEG bytes), each
instance's exact visible mask is a compressed RLE, category ids are 1..K in `SHAPE_CLASSES` order.
detectron2 reads RLE with `instance_mask_format="bitmask"`.

`coco_style="real"`: what a real COCO instances file holds, so detection is tested on what it meets there
(the scenes and the other layouts are unchanged; the COCO copy of a scene differs):
- masks are polygons `[[x1, y1, x2, y2, ...], ...]` traced from the exact mask (`mask_to_polygons`);
  pycocotools rasterises them back to that mask exactly. detectron2 reads them with either mask format
  ("polygon", ViTDet's default, or "bitmask"); its LSJ crop cuts them with shapely (through fvcore);
- every third scene (0, 3, 6, ...) has an unannotated pole across it (a bar in front of everything, as a
  lamp post in front of a person) that cuts its largest instance in two: multi-part polygons;
- scenes 2, 6, 10, ... hold a crowd: a cluster of small shapes of one class behind the instances,
  annotated once with `iscrowd: 1` and an uncompressed RLE (`{"counts": [ints], "size": [h, w]}`),
  as real COCO stores crowds (detectron2 drops them from training; COCOeval ignores what matches them);
- category ids have gaps (`REAL_CATEGORY_IDS`), as COCO's 80 classes use ids 1..90;
- scenes 1, 21, 41, ... are background only: listed in `images`, no annotation;
- each image is stretched to its own non-square size (W, H in S..7S/4; masks nearest-neighbour, so exact).
`area` and `bbox` are pycocotools' `area` / `toBbox` of the mask the segmentation encodes, in both styles.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from .shapes import place, render_background

__all__ = ["COCO_STYLES", "REAL_CATEGORY_IDS", "CocoSplitWriter", "mask_to_polygons", "real_view", "uncompressed_rle"]

COCO_STYLES: tuple[str, ...] = ("exact", "real")
REAL_CATEGORY_IDS: tuple[int, ...] = (1, 3, 4, 6, 9, 11)  # of SHAPE_CLASSES, in order
_POLE_EVERY, _CROWD_EVERY, _EMPTY_EVERY = 3, 4, 20  # which scenes get which quirk: index % N == 0, 2, 1
_MAX_STRETCH = 1.75


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons of a bool mask: one per connected part (8-connected), holes joined by a zero-width cut.

    OpenCV traces the mask upsampled 2x, so each outline runs a quarter pixel inside the outer edges
    of the boundary pixels: every mask pixel's centre is inside, every other pixel's centre outside,
    and pycocotools' `frPyObjects` + `merge` + `decode` give the mask back exactly. A hole is spliced
    into its part's outline from the nearest vertex (out along the cut, around the hole, back): the
    cut's two edges coincide, so pycocotools' even-odd fill leaves its pixels in the mask.
    """
    import cv2  # lazy: only this writer needs OpenCV (installed with the det extra)

    up = np.kron(mask.astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for k, contour in enumerate(contours):
        if hierarchy[0][k][3] != -1:  # a hole: spliced into its parent below
            continue
        ring = contour[:, 0, :].astype(np.float64)
        child = hierarchy[0][k][2]
        while child != -1:
            hole = contours[child][:, 0, :].astype(np.float64)
            i, j = np.unravel_index(((ring[:, None] - hole[None]) ** 2).sum(-1).argmin(), (len(ring), len(hole)))
            ring = np.concatenate([ring[: i + 1], hole[j:], hole[: j + 1], ring[i:]])
            child = hierarchy[0][child][0]
        polygons.append([float(v) for v in ((ring + 0.5) / 2).ravel()])
    return polygons


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (crowd regions): run lengths of the column-major mask, starting with 0s."""
    flat = mask.ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _annotation(mask: np.ndarray, segmentation, category_id: int, iscrowd: int = 0) -> dict:
    from pycocotools import mask as mask_utils  # lazy: mae_core needs it only for this writer

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "category_id": category_id,
        "segmentation": segmentation,
        "area": float(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": iscrowd,
    }


def _exact_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(n) for n in rle["size"]], "counts": rle["counts"].decode()}


def _stretch(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize by index (no resampling arithmetic: every source pixel survives an upscale)."""
    rows = (np.arange(height) + 0.5) * a.shape[0] // height
    cols = (np.arange(width) + 0.5) * a.shape[1] // width
    return a[rows.astype(int)][:, cols.astype(int)]


def _crowd(inst: np.ndarray, rng: np.random.Generator, classes: tuple[str, ...]) -> tuple[int, np.ndarray] | None:
    """A cluster of 6-11 small shapes of one class on the background (behind every instance), or None."""
    size = inst.shape[0]
    for _ in range(10):
        cls = int(rng.integers(len(classes)))
        cx, cy = rng.uniform(0.2, 0.8, 2) * size
        m = np.zeros(inst.shape, bool)
        for _ in range(int(rng.integers(6, 12))):
            dx, dy = rng.uniform(-0.12, 0.12, 2) * size
            r, theta = rng.uniform(0.04, 0.07) * size, rng.uniform(0, 2 * math.pi)
            m |= place(classes[cls], cx + dx, cy + dy, r, theta, size)
        m &= inst == -1
        if m.sum() >= max(16, size * size // 256):
            return cls, m
    return None


def _pole(inst: np.ndarray) -> np.ndarray:
    """A bar across the whole scene through the middle of its largest instance, across that one's longer side."""
    largest = np.bincount(inst.ravel().astype(np.int64) + 1)[1:].argmax()
    ys, xs = np.nonzero(inst == largest)
    width = max(2, inst.shape[0] // 16)
    bar = np.zeros(inst.shape, bool)
    if xs.max() - xs.min() >= ys.max() - ys.min():
        c = (xs.min() + xs.max() + 1) // 2 - width // 2
        bar[:, c : c + width] = True
    else:
        c = (ys.min() + ys.max() + 1) // 2 - width // 2
        bar[c : c + width, :] = True
    return bar


def real_view(scene, index: int, rng: np.random.Generator, classes: tuple[str, ...]) -> tuple[np.ndarray, list]:
    """The COCO copy of a scene with real COCO's quirks: (H x W x 3 image, [(class, mask, iscrowd), ...])."""
    size = scene.image.shape[0]
    height, width = (int(v) for v in np.rint(size * rng.uniform(1.0, _MAX_STRETCH, 2)))
    width += width == height  # never square
    if index % _EMPTY_EVERY == 1:
        image = np.clip(np.rint(render_background(rng, size) * 255), 0, 255).astype(np.uint8)
        return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR)), []
    img, inst = scene.image.astype(np.float32) / 255, scene.instance_map.copy()
    crowd = _crowd(inst, rng, classes) if index % _CROWD_EVERY == 2 else None
    if crowd is not None:
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        img[crowd[1]] = colour + rng.uniform(0.005, 0.03) * rng.standard_normal((int(crowd[1].sum()), 3))
    if index % _POLE_EVERY == 0:
        bar = _pole(inst)
        img[bar] = rng.uniform(0, 1, 3).astype(np.float32)
        inst[bar] = -1
        if crowd is not None:
            crowd = (crowd[0], crowd[1] & ~bar)
    image = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    inst = _stretch(inst, height, width)
    objects = [(c, inst == i, 0) for i, c in enumerate(scene.classes) if (inst == i).any()]
    if crowd is not None and crowd[1].any():
        objects.append((crowd[0], _stretch(crowd[1], height, width), 1))
    return image, objects


class CocoSplitWriter:
    """One split of the COCO layout: each scene's image into `<root>/<split>2017/`, the JSON on `close()`."""

    def __init__(self, root: Path, split_dir: str, classes: tuple[str, ...], style: str = "exact", *,
                 description: str = "", jpeg_quality: int = 95):
        if style not in COCO_STYLES:
            raise ValueError(f"coco_style must be one of {COCO_STYLES}, got {style!r}")
        self.root, self.split_dir, self.classes, self.style = Path(root), split_dir, tuple(classes), style
        self.image_dir = self.root / split_dir
        self.image_dir.mkdir(parents=True, exist_ok=True)
        ids = range(1, len(classes) + 1) if style == "exact" else REAL_CATEGORY_IDS
        self.category_ids = list(ids)[: len(classes)]
        self.description, self.jpeg_quality = description, jpeg_quality
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add(self, scene, index: int, jpeg: bytes, rng: np.random.Generator | None = None) -> None:
        """Scene `index` (0-based): `jpeg` is its encoding in the other layouts; `rng` draws the real-style quirks."""
        image_id = index + 1
        file_name = f"{image_id:012d}.jpg"
        if self.style == "exact":
            height, width = scene.image.shape[:2]
            objects = [(c, scene.visible_mask(i), 0) for i, c in enumerate(scene.classes)]
        else:
            image, objects = real_view(scene, index, rng, self.classes)
            height, width = image.shape[:2]
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="JPEG", quality=self.jpeg_quality)
            jpeg = buf.getvalue()
        (self.image_dir / file_name).write_bytes(jpeg)
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for c, mask, crowd in objects:
            if crowd:
                segmentation = uncompressed_rle(mask)
            else:
                segmentation = _exact_rle(mask) if self.style == "exact" else mask_to_polygons(mask)
            ann = _annotation(mask, segmentation, self.category_ids[c], crowd)
            self.annotations.append({"id": len(self.annotations) + 1, "image_id": image_id, **ann})

    def close(self) -> Path:
        """Write `annotations/instances_<split>2017.json`; returns its path."""
        ann_file = self.root / "annotations" / f"instances_{self.split_dir}.json"
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        categories = [{"id": i, "name": c, "supercategory": "shape"} for i, c in zip(self.category_ids, self.classes)]
        dataset = {
            "info": {"description": self.description, "version": "1.0"},
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": categories,
        }
        ann_file.write_text(json.dumps(dataset))
        return ann_file
