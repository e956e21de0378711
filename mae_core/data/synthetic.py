"""Small synthetic datasets written in the real ImageNet, COCO and ADE20K on-disk layouts.

Each scene is a textured background with 1..`max_instances` shapes of `num_classes` kinds (circle,
square, triangle, cross, ring, star), each with its own random colour, texture, size, rotation and
position. Shapes may overlap (later ones occlude earlier ones) and may be cut by the frame. By default
colours and textures are drawn independently of the class, so only the geometry tells classes apart: a
model that learns shapes beats chance, one that does not stays at chance. `textures="class"` gives each
class its own surface pattern (as real categories have a typical look; colours stay random), and
`background="plain"` drops the background's texture: the demo pipeline's scenes, where a CPU-sized
ViT can learn in minutes what a 2-core budget allows (see pipelines/synthetic.yaml).

The same scenes back all three layouts, so their labels agree exactly:
- ImageNet `imagenet/{train,val}/<shape>/<split>_%08d.JPEG`: the class is the image's dominant shape
  (largest visible area, strictly larger than every other instance). Dominant classes are balanced
  per split, so every class has images in both splits.
- COCO `coco/{train2017,val2017}/%012d.jpg` + `coco/annotations/instances_{train,val}2017.json`:
  one annotation per instance with its exact visible mask (after occlusion and clipping) as
  compressed RLE (exact, and the only exact form for rings and occlusion holes: COCO polygons cannot
  express holes). detectron2 reads RLE with `INPUT.MASK_FORMAT="bitmask"` (LazyConfig:
  `dataloader.train.mapper.instance_mask_format = "bitmask"`). Category ids 1..K follow `SHAPE_CLASSES`;
  image ids are 1..N within each split; `bbox` is the visible mask's box as `pycocotools` computes it.
- ADE20K `ade20k/ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_{train,val}_%08d`:
  8-bit PNG labels with ADE20K's convention: 0 = "other"/ignore (mmseg's `reduce_zero_label` turns it
  into 255), 1 = background, 2..K+1 = the shapes in `SHAPE_CLASSES` order; see `ade20k_class_names`.
  By default every pixel is labelled (no 0s); `ade_ignore_boundary=True` sets to 0 every pixel with a
  4-neighbour in a different instance (or the background), a band of one pixel on each side.

Placements that would leave any instance with a visible area below `min_area` pixels or below
`min_visible_frac` of its in-frame area are rejected and redrawn (or that instance is left out), so
every visible shape pixel belongs to an annotated instance. Randomness comes only from
`numpy.random.Generator`s seeded per (seed, split, scene), so a seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import io
import json
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "SHAPE_CLASSES",
    "LAYOUTS",
    "Scene",
    "generate_scene",
    "iter_scenes",
    "ade20k_class_names",
    "write_synthetic",
]

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")
LAYOUTS: tuple[str, ...] = ("imagenet", "coco", "ade20k")
_SPLITS = {"train": 0, "val": 1}
_COCO_SPLIT = {"train": "train2017", "val": "val2017"}
_ADE_SPLIT = {"train": "training", "val": "validation"}
_ADE_PREFIX = {"train": "ADE_train", "val": "ADE_val"}

# Outer radius as a fraction of the image side: the dominant shape is larger than the distractors.
_MAIN_RADIUS = (0.18, 0.32)
_DISTRACTOR_RADIUS = (0.10, 0.22)
_MAX_TRIES = 20
# textures="class": each class's surface pattern (`_pattern` kinds: 0 flat, 1 stripes, 2 checker, 3 noise,
# 4 dots, 5 rings), as real categories have a typical appearance; colours, scales and angles stay random.
_CLASS_TEXTURE = (5, 2, 4, 1, 3, 0)
TEXTURES: tuple[str, ...] = ("random", "class")
BACKGROUNDS: tuple[str, ...] = ("textured", "plain")
_MIN_CONTRAST = 0.35  # RGB distance in [0, 1] units between a shape's colour and the background under it


@dataclass
class Scene:
    """One rendered scene: instances are indexed in paint order (later ones on top)."""

    image: np.ndarray  # (S, S, 3) uint8
    instance_map: np.ndarray  # (S, S) int16: -1 = background, i = instance i
    classes: list[int]  # class index (into SHAPE_CLASSES) of each instance
    label: int  # the dominant class (largest visible area)

    def visible_mask(self, i: int) -> np.ndarray:
        """Exact visible (after occlusion and clipping) mask of instance i, (S, S) bool."""
        return self.instance_map == i

    def ade_labels(self, ignore_boundary: bool = False) -> np.ndarray:
        """ADE20K-style label map: 0 ignore, 1 background, 2 + class index for shapes (uint8)."""
        lab = np.ones(self.instance_map.shape, np.uint8)
        for i, c in enumerate(self.classes):
            lab[self.instance_map == i] = c + 2
        if ignore_boundary:
            inst = self.instance_map
            edge = np.zeros(inst.shape, bool)
            dx = inst[:, 1:] != inst[:, :-1]
            dy = inst[1:, :] != inst[:-1, :]
            edge[:, 1:] |= dx
            edge[:, :-1] |= dx
            edge[1:, :] |= dy
            edge[:-1, :] |= dy
            lab[edge] = 0
        return lab


def ade20k_class_names(num_classes: int = len(SHAPE_CLASSES)) -> list[str]:
    """Names of ADE labels 1..K+1 (0 is 'other'/ignore): mmseg's classes after reduce_zero_label."""
    return ["background", *SHAPE_CLASSES[:num_classes]]


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Inside-test of a shape of outer radius r in its own (rotated, centred) coordinates u, v."""
    if kind == "circle":
        return u * u + v * v <= r * r
    if kind == "square":
        h = 0.8 * r
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if kind == "triangle":  # equilateral, circumradius r: three half-planes at distance r / 2
        m = np.ones(u.shape, bool)
        for k in range(3):
            a = math.pi / 2 + 2 * math.pi * k / 3
            m &= u * math.cos(a) + v * math.sin(a) <= r / 2
        return m
    if kind == "cross":
        w = 0.3 * r
        au, av = np.abs(u), np.abs(v)
        return ((au <= r) & (av <= w)) | ((av <= r) & (au <= w))
    if kind == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if kind == "star":  # five points; fold the angle onto one edge from inner vertex I to outer vertex O
        d = np.sqrt(u * u + v * v)
        a = np.abs(np.mod(np.arctan2(v, u), 2 * math.pi / 5) - math.pi / 5)
        ix, ox, oy = 0.45 * r, r * math.cos(math.pi / 5), r * math.sin(math.pi / 5)
        ex, ey = ox - ix, oy
        side = ex * (d * np.sin(a)) - ey * (d * np.cos(a) - ix)  # cross(O - I, P - I)
        return side >= 0  # the origin's side: cross(O - I, -I) = ey * ix > 0
    raise ValueError(f"unknown shape {kind!r}")


def _place(kind: str, cx: float, cy: float, r: float, theta: float, size: int) -> np.ndarray:
    """Full-frame bool mask of a shape, sampled at pixel centres (computed on its bounding window)."""
    m = np.zeros((size, size), bool)
    x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, size)
    y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, size)
    if x0 >= x1 or y0 >= y1:
        return m
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx += 0.5 - cx
    dy += 0.5 - cy
    c, s = math.cos(theta), math.sin(theta)
    m[y0:y1, x0:x1] = _shape_mask(kind, dx * c + dy * s, -dx * s + dy * c, r)
    return m


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row / column coordinates (read-only, shared between scenes)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _pattern(rng: np.random.Generator, size: int, kind: int | None = None) -> np.ndarray:
    """A texture in [-1, 1]: flat, stripes, checker, noise (drawn when `kind` is None), dots or rings.

    The draws are the same for every kind, so fixing the kind changes no other random number.
    """
    kind = rng.integers(4) if kind is None else kind
    period = rng.uniform(3.0, 9.0) * max(size / 64, 0.5)
    angle = rng.uniform(0, math.pi)
    noise = rng.standard_normal((size, size)).astype(np.float32)
    yy, xx = _grid(size)
    if kind == 0:
        return np.zeros((size, size), np.float32)
    if kind == 1:
        t = xx * math.cos(angle) + yy * math.sin(angle)
        return np.sign(np.sin(2 * math.pi * t / period)).astype(np.float32)
    if kind in (2, 4):
        u = xx * math.cos(angle) + yy * math.sin(angle)
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        wave = np.sin(math.pi * u / period) * np.sin(math.pi * v / period)
        return np.sign(wave if kind == 2 else wave - 0.5).astype(np.float32)
    if kind == 5:  # concentric rings about a point set by the angle draw
        r = np.hypot(xx - size * angle / math.pi, yy - size / 2)
        return np.sign(np.sin(2 * math.pi * r / period)).astype(np.float32)
    return np.clip(noise / 2, -1, 1)


def _background(rng: np.random.Generator, size: int, textured: bool = True) -> np.ndarray:
    """Linear gradient between two random colours, a luminance texture (unless plain) and pixel noise, (S, S, 3)."""
    c0, c1 = rng.uniform(0, 1, (2, 3)).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = _grid(size)
    t = ((xx - size / 2) * math.cos(theta) + (yy - size / 2) * math.sin(theta)) / size + 0.5
    img = c0 + (c1 - c0) * t[..., None]
    amplitude, pattern = rng.uniform(0.03, 0.15), _pattern(rng, size)  # drawn either way: same later draws
    if textured:
        img += amplitude * pattern[..., None]
    img += rng.uniform(0.005, 0.04) * rng.standard_normal((size, size, 3)).astype(np.float32)
    return img


def _paint(masks: Sequence[np.ndarray], size: int) -> np.ndarray:
    inst = np.full((size, size), -1, np.int16)
    for i, m in enumerate(masks):
        inst[m] = i
    return inst


def generate_scene(
    rng: np.random.Generator,
    label: int,
    img_size: int = 64,
    num_classes: int = len(SHAPE_CLASSES),
    max_instances: int = 4,
    min_area: int | None = None,
    min_visible_frac: float = 0.3,
    textures: str = "random",
    background: str = "textured",
    main_radius: tuple[float, float] = _MAIN_RADIUS,
) -> Scene:
    """Render one scene whose dominant shape is of class `label`.

    The dominant instance is drawn first (larger, near the centre); each distractor gets a random
    class, size, position and depth (it may go under or over earlier ones) and is redrawn when it
    would break the visibility thresholds or the strict dominance of `label`.

    `textures`: "random" (every surface draws flat, stripes, checker or noise) or "class" (each shape
    wears its class's pattern, see `_CLASS_TEXTURE`); `background`: "textured" or "plain" (gradient and
    pixel noise only); `main_radius`: the dominant shape's outer radius range, as a fraction of the side.
    """
    _check_scene_options(textures, background, main_radius)
    size = img_size
    if min_area is None:
        min_area = max(16, size * size // 256)
    kinds = SHAPE_CLASSES[:num_classes]
    n_target = int(rng.integers(1, max_instances + 1))
    masks: list[np.ndarray] = []
    classes: list[int] = []
    full_areas: list[int] = []
    main = -1  # depth index of the dominant instance
    for slot in range(n_target):
        is_main = slot == 0
        for _ in range(_MAX_TRIES if not is_main else 10 * _MAX_TRIES):
            cls = label if is_main else int(rng.integers(num_classes))
            lo, hi = main_radius if is_main else _DISTRACTOR_RADIUS
            r = rng.uniform(lo, hi) * size
            cx, cy = rng.uniform(0.25, 0.75, 2) * size if is_main else rng.uniform(0, 1, 2) * size
            theta = rng.uniform(0, 2 * math.pi)
            z = 0 if is_main else int(rng.integers(len(masks) + 1))
            m = _place(kinds[cls], cx, cy, r, theta, size)
            area = int(m.sum())
            if area < min_area:
                continue
            cand_masks = masks[:z] + [m] + masks[z:]
            cand_full = np.array(full_areas[:z] + [area] + full_areas[z:])
            inst = _paint(cand_masks, size).ravel().astype(np.int64)
            vis = np.bincount(inst + 1, minlength=len(cand_masks) + 1)[1:]
            cand_main = 0 if is_main else main + (z <= main)
            others = np.delete(vis, cand_main)
            if (vis < min_area).any() or (vis < min_visible_frac * cand_full).any():
                continue
            if others.size and vis[cand_main] <= others.max():
                continue
            masks, full_areas, main = cand_masks, cand_full.tolist(), cand_main
            classes.insert(z, cls)
            break
        else:
            if is_main:  # pragma: no cover - only with absurd thresholds
                raise RuntimeError(f"cannot place a {kinds[label]} of >= {min_area} px in {size}x{size}")
    inst = _paint(masks, size)

    img = _background(rng, size, textured=background == "textured")
    for i in range(len(masks)):
        vis = inst == i
        under = img[vis].mean(0)
        for _ in range(10):  # a colour that stands out from the background it covers
            colour = rng.uniform(0, 1, 3).astype(np.float32)
            if np.linalg.norm(colour - under) >= _MIN_CONTRAST:
                break
        second = np.clip(colour + rng.uniform(-0.35, 0.35, 3).astype(np.float32), 0, 1)
        kind = _CLASS_TEXTURE[classes[i]] if textures == "class" else None
        t = (_pattern(rng, size, kind)[vis] + 1) / 2  # 0 -> colour, 1 -> second
        img[vis] = colour + (second - colour) * t[:, None]
    img += rng.uniform(0.005, 0.03) * rng.standard_normal(img.shape).astype(np.float32)
    image = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return Scene(image=image, instance_map=inst, classes=classes, label=label)


def _check_scene_options(textures: str, background: str, main_radius: Sequence[float]) -> None:
    if textures not in TEXTURES:
        raise ValueError(f"textures must be one of {TEXTURES}, got {textures!r}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    if len(main_radius) != 2 or not 0 < main_radius[0] <= main_radius[1] <= 0.5:
        raise ValueError(f"main_radius must be (lo, hi) with 0 < lo <= hi <= 0.5 of the side, got {main_radius}")


def iter_scenes(
    seed: int,
    split: str,
    num: int,
    img_size: int = 64,
    num_classes: int = len(SHAPE_CLASSES),
    max_instances: int = 4,
    **scene_options,
) -> Iterator[Scene]:
    """The scenes `write_synthetic` writes for one split, in order, without touching the disk.

    `scene_options` are `generate_scene`'s `textures`, `background` and `main_radius`.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    code = _SPLITS[split]
    # Balanced dominant classes, in a seeded random order. Distinct SeedSequence words
    # ([seed, code, 1] vs [seed, code, 0, i]) keep the streams apart.
    labels = np.random.default_rng([seed, code, 1]).permutation(np.arange(num) % num_classes)
    for i in range(num):
        rng = np.random.default_rng([seed, code, 0, i])
        yield generate_scene(rng, int(labels[i]), img_size, num_classes, max_instances, **scene_options)


def _encode(img: Image.Image, **save_kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, **save_kw)
    return buf.getvalue()


def _coco_annotations(scene: Scene, image_id: int, next_ann_id: int) -> list[dict]:
    from pycocotools import mask as mask_utils  # lazy: mae_core needs it only for this writer

    anns = []
    for i, c in enumerate(scene.classes):
        m = scene.visible_mask(i)
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        ys, xs = np.nonzero(m)
        x0, y0 = int(xs.min()), int(ys.min())
        anns.append(
            {
                "id": next_ann_id + i,
                "image_id": image_id,
                "category_id": c + 1,
                "segmentation": {"size": [int(n) for n in rle["size"]], "counts": rle["counts"].decode()},
                "area": float(m.sum()),
                "bbox": [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)],
                "iscrowd": 0,
            }
        )
    return anns


def write_synthetic(
    out: str | Path,
    seed: int = 0,
    num_train: int = 200,
    num_val: int = 50,
    img_size: int = 64,
    *,
    num_classes: int = len(SHAPE_CLASSES),
    max_instances: int = 4,
    layouts: Sequence[str] = LAYOUTS,
    textures: str = "random",
    background: str = "textured",
    main_radius: Sequence[float] = _MAIN_RADIUS,
    ade_ignore_boundary: bool = False,
    jpeg_quality: int = 95,
    overwrite: bool = False,
) -> dict:
    """Generate the train and val scenes once and write them in the requested layouts under `out`.

    Returns a summary: the root of each layout, counts, and class names (the ImageNet folders are
    the shape names, so ImageNet label indices are their sorted order, not `SHAPE_CLASSES` order).
    Existing non-empty layout folders raise FileExistsError unless `overwrite=True`, which removes
    them first (so files from an earlier, larger write cannot linger).
    """
    if not 2 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"num_classes must be in 2..{len(SHAPE_CLASSES)}, got {num_classes}")
    if min(num_train, num_val) < num_classes:
        raise ValueError(
            f"num_train ({num_train}) and num_val ({num_val}) must each be >= num_classes ({num_classes}) "
            "so that every class has images in both splits"
        )
    if max_instances < 1:
        raise ValueError(f"max_instances must be >= 1, got {max_instances}")
    _check_scene_options(textures, background, main_radius)
    scene_options = dict(textures=textures, background=background, main_radius=tuple(main_radius))
    unknown = set(layouts) - set(LAYOUTS)
    if unknown or not layouts:
        raise ValueError(f"layouts must be a non-empty subset of {LAYOUTS}, got {tuple(layouts)}")

    out = Path(out)
    classes = list(SHAPE_CLASSES[:num_classes])
    roots = {
        "imagenet": out / "imagenet",
        "coco": out / "coco",
        "ade20k": out / "ade20k" / "ADEChallengeData2016",
    }
    for name in layouts:
        top = out / name
        if top.exists() and any(top.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{str(top)!r} is not empty; pass overwrite=True to replace it")
            shutil.rmtree(top)

    summary: dict = {
        "root": str(out),
        "seed": seed,
        "img_size": img_size,
        "classes": classes,
        "counts": {"train": num_train, "val": num_val},
        "scenes": {"max_instances": max_instances, **scene_options},
    }
    if "imagenet" in layouts:
        summary["imagenet"] = {"root": str(roots["imagenet"]), "classes": sorted(classes), "per_class": {}}
    if "coco" in layouts:
        (roots["coco"] / "annotations").mkdir(parents=True, exist_ok=True)
        summary["coco"] = {"root": str(roots["coco"]), "num_annotations": {}}
    if "ade20k" in layouts:
        summary["ade20k"] = {
            "root": str(roots["ade20k"]),
            "classes": ade20k_class_names(num_classes),
            "ignore_label": 0,
            "ignore_boundary": ade_ignore_boundary,
        }
    categories = [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(classes)]

    for split, num in (("train", num_train), ("val", num_val)):
        if "imagenet" in layouts:
            for c in classes:
                (roots["imagenet"] / split / c).mkdir(parents=True, exist_ok=True)
            per_class = dict.fromkeys(classes, 0)
        if "coco" in layouts:
            coco_dir = roots["coco"] / _COCO_SPLIT[split]
            coco_dir.mkdir(parents=True, exist_ok=True)
            images, annotations = [], []
        if "ade20k" in layouts:
            ade_img = roots["ade20k"] / "images" / _ADE_SPLIT[split]
            ade_ann = roots["ade20k"] / "annotations" / _ADE_SPLIT[split]
            ade_img.mkdir(parents=True, exist_ok=True)
            ade_ann.mkdir(parents=True, exist_ok=True)

        for idx, scene in enumerate(iter_scenes(seed, split, num, img_size, num_classes, max_instances,
                                                         **scene_options)):
            image_id = idx + 1
            jpeg = _encode(Image.fromarray(scene.image), format="JPEG", quality=jpeg_quality)
            if "imagenet" in layouts:
                cname = classes[scene.label]
                (roots["imagenet"] / split / cname / f"{split}_{image_id:08d}.JPEG").write_bytes(jpeg)
                per_class[cname] += 1
            if "coco" in layouts:
                file_name = f"{image_id:012d}.jpg"
                (coco_dir / file_name).write_bytes(jpeg)
                images.append({"id": image_id, "file_name": file_name, "width": img_size, "height": img_size})
                annotations += _coco_annotations(scene, image_id, len(annotations) + 1)
            if "ade20k" in layouts:
                stem = f"{_ADE_PREFIX[split]}_{image_id:08d}"
                (ade_img / f"{stem}.jpg").write_bytes(jpeg)
                png = _encode(Image.fromarray(scene.ade_labels(ade_ignore_boundary)), format="PNG")
                (ade_ann / f"{stem}.png").write_bytes(png)

        if "imagenet" in layouts:
            summary["imagenet"]["per_class"][split] = per_class
        if "coco" in layouts:
            ann_file = roots["coco"] / "annotations" / f"instances_{_COCO_SPLIT[split]}.json"
            dataset = {
                "info": {"description": f"mae-transfer synthetic shapes, seed {seed}", "version": "1.0"},
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": categories,
            }
            ann_file.write_text(json.dumps(dataset))
            summary["coco"][f"{split}_json"] = str(ann_file)
            summary["coco"][f"{split}_images"] = str(coco_dir)
            summary["coco"]["num_annotations"][split] = len(annotations)
    return summary
