"""Small synthetic datasets written in the real ImageNet, COCO and ADE20K on-disk layouts.

Each scene is a textured background with 1..`max_instances` shapes of `num_classes` kinds (circle,
square, triangle, cross, ring, star), each with its own random colour, texture, size, rotation and
position. Shapes may overlap (later ones occlude earlier ones) and may be cut by the frame. By default
colours and textures are drawn independently of the class, so only the geometry tells classes apart: a
model that learns shapes beats chance, one that does not stays at chance. `textures="class"` gives each
class its own surface pattern (as real categories have a typical look; colours stay random), and
`background="plain"` drops the background's texture: the demo pipeline's scenes, where a CPU-sized
ViT can learn in minutes what a 2-core budget allows (see pipelines/synthetic.yaml). `shapes="other"`
draws from a second vocabulary of six other shapes (pentagon, hexagon, crescent, arrow, diamond,
half-disc): the demo's labelled pretraining set, so its supervised baseline transfers to new classes.

The same scenes back all three layouts, so their labels agree exactly:
- ImageNet `imagenet/{train,val}/<shape>/<split>_%08d.JPEG`: the class is the image's dominant shape
  (largest visible area, strictly larger than every other instance). Dominant classes are balanced
  per split, so every class has images in both splits.
- COCO `coco/{train2017,val2017}/%012d.jpg` + `coco/annotations/instances_{train,val}2017.json`:
  one annotation per instance with its exact visible mask (after occlusion and clipping) as
  compressed RLE; category ids 1..K follow `SHAPE_CLASSES`; image ids are 1..N within each split.
  `coco_style="real"` writes real COCO's quirks instead (polygons, multi-part objects, crowd RLE, id
  gaps, empty and non-square images): see `coco.py`, which writes this layout.
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

import io
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .coco import COCO_STYLES, CocoSplitWriter
from .shapes import pattern, place, render_background

__all__ = [
    "SHAPE_CLASSES",
    "OTHER_SHAPE_CLASSES",
    "SHAPE_SETS",
    "LAYOUTS",
    "Scene",
    "generate_scene",
    "iter_scenes",
    "ade20k_class_names",
    "write_synthetic",
]

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")
# A second vocabulary of as many shapes, none of them in SHAPE_CLASSES: labelled pretraining on these and
# downstream tasks on SHAPE_CLASSES is a transfer to new categories, as ImageNet classes -> COCO objects.
OTHER_SHAPE_CLASSES: tuple[str, ...] = ("pentagon", "hexagon", "crescent", "arrow", "diamond", "half-disc")
SHAPE_SETS = {"base": SHAPE_CLASSES, "other": OTHER_SHAPE_CLASSES}
LAYOUTS: tuple[str, ...] = ("imagenet", "coco", "ade20k")
_SPLITS = {"train": 0, "val": 1}
_COCO_SPLIT = {"train": "train2017", "val": "val2017"}
_ADE_SPLIT = {"train": "training", "val": "validation"}
_ADE_PREFIX = {"train": "ADE_train", "val": "ADE_val"}

# Outer radius as a fraction of the image side: the dominant shape is larger than the distractors.
_MAIN_RADIUS = (0.18, 0.32)
_DISTRACTOR_RADIUS = (0.10, 0.22)
_MAX_TRIES = 20
# textures="class": each class's surface pattern (`pattern` kinds: 0 flat, 1 stripes, 2 checker, 3 noise,
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


def ade20k_class_names(num_classes: int = len(SHAPE_CLASSES), shapes: str = "base") -> list[str]:
    """Names of ADE labels 1..K+1 (0 is 'other'/ignore): mmseg's classes after reduce_zero_label."""
    return ["background", *SHAPE_SETS[shapes][:num_classes]]


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
    shapes: str = "base",
) -> Scene:
    """Render one scene whose dominant shape is of class `label`.

    The dominant instance is drawn first (larger, near the centre); each distractor gets a random
    class, size, position and depth (it may go under or over earlier ones) and is redrawn when it
    would break the visibility thresholds or the strict dominance of `label`.

    `textures`: "random" (every surface draws flat, stripes, checker or noise) or "class" (each shape
    wears its class's pattern, see `_CLASS_TEXTURE`); `background`: "textured" or "plain" (gradient and
    pixel noise only); `main_radius`: the dominant shape's outer radius range, as a fraction of the side;
    `shapes`: the vocabulary, "base" (`SHAPE_CLASSES`) or "other" (`OTHER_SHAPE_CLASSES`).
    """
    _check_scene_options(textures, background, main_radius, shapes)
    size = img_size
    if min_area is None:
        min_area = max(16, size * size // 256)
    kinds = SHAPE_SETS[shapes][:num_classes]
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
            m = place(kinds[cls], cx, cy, r, theta, size)
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

    img = render_background(rng, size, textured=background == "textured")
    for i in range(len(masks)):
        vis = inst == i
        under = img[vis].mean(0)
        for _ in range(10):  # a colour that stands out from the background it covers
            colour = rng.uniform(0, 1, 3).astype(np.float32)
            if np.linalg.norm(colour - under) >= _MIN_CONTRAST:
                break
        second = np.clip(colour + rng.uniform(-0.35, 0.35, 3).astype(np.float32), 0, 1)
        kind = _CLASS_TEXTURE[classes[i]] if textures == "class" else None
        t = (pattern(rng, size, kind)[vis] + 1) / 2  # 0 -> colour, 1 -> second
        img[vis] = colour + (second - colour) * t[:, None]
    img += rng.uniform(0.005, 0.03) * rng.standard_normal(img.shape).astype(np.float32)
    image = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return Scene(image=image, instance_map=inst, classes=classes, label=label)


def _check_scene_options(textures: str, background: str, main_radius: Sequence[float], shapes: str) -> None:
    if shapes not in SHAPE_SETS:
        raise ValueError(f"shapes must be one of {tuple(SHAPE_SETS)}, got {shapes!r}")
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
    coco_style: str = "exact",
    shapes: str = "base",
    jpeg_quality: int = 95,
    overwrite: bool = False,
) -> dict:
    """Generate the train and val scenes once and write them in the requested layouts under `out`.

    Returns a summary: the root of each layout, counts, and class names (the ImageNet folders are
    the shape names, so ImageNet label indices are their sorted order, not `SHAPE_CLASSES` order).
    Existing non-empty layout folders raise FileExistsError unless `overwrite=True`, which removes
    them first (so files from an earlier, larger write cannot linger). `coco_style`: "exact" (RLE of the
    exact masks) or "real" (real COCO's quirks, `coco.py`); it changes the COCO layout only.
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
    if coco_style not in COCO_STYLES:
        raise ValueError(f"coco_style must be one of {COCO_STYLES}, got {coco_style!r}")
    _check_scene_options(textures, background, main_radius, shapes)
    scene_options = dict(textures=textures, background=background, main_radius=tuple(main_radius), shapes=shapes)
    unknown = set(layouts) - set(LAYOUTS)
    if unknown or not layouts:
        raise ValueError(f"layouts must be a non-empty subset of {LAYOUTS}, got {tuple(layouts)}")

    out = Path(out)
    classes = list(SHAPE_SETS[shapes][:num_classes])
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
        summary["coco"] = {"root": str(roots["coco"]), "style": coco_style, "num_annotations": {}}
    if "ade20k" in layouts:
        summary["ade20k"] = {
            "root": str(roots["ade20k"]),
            "classes": ade20k_class_names(num_classes, shapes),
            "ignore_label": 0,
            "ignore_boundary": ade_ignore_boundary,
        }
    for split, num in (("train", num_train), ("val", num_val)):
        if "imagenet" in layouts:
            for c in classes:
                (roots["imagenet"] / split / c).mkdir(parents=True, exist_ok=True)
            per_class = dict.fromkeys(classes, 0)
        if "coco" in layouts:
            coco = CocoSplitWriter(roots["coco"], _COCO_SPLIT[split], tuple(classes), coco_style,
                                   description=f"mae-transfer synthetic shapes, seed {seed}", jpeg_quality=jpeg_quality)
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
            if "coco" in layouts:  # the real style's own draws: a stream apart from the scene's [seed, code, 0, i]
                coco.add(scene, idx, jpeg, np.random.default_rng([seed, _SPLITS[split], 2, idx]))
            if "ade20k" in layouts:
                stem = f"{_ADE_PREFIX[split]}_{image_id:08d}"
                (ade_img / f"{stem}.jpg").write_bytes(jpeg)
                png = _encode(Image.fromarray(scene.ade_labels(ade_ignore_boundary)), format="PNG")
                (ade_ann / f"{stem}.png").write_bytes(png)

        if "imagenet" in layouts:
            summary["imagenet"]["per_class"][split] = per_class
        if "coco" in layouts:
            summary["coco"][f"{split}_json"] = str(coco.close())
            summary["coco"][f"{split}_images"] = str(coco.image_dir)
            summary["coco"]["num_annotations"][split] = len(coco.annotations)
    return summary
