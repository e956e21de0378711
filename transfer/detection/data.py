"""A COCO-layout folder -> detectron2 datasets, checked up front so bad input fails with a clear message.

The layout is COCO's own: `<root>/annotations/instances_{train,val}2017.json` and the images under
`<root>/{train2017,val2017}/` (the `file_name` of each image entry, relative to that folder). The
datasets are registered with detectron2's `register_coco_instances`, exactly as a detectron2 user
registers a custom COCO-format set; detectron2 reads the JSON lazily, so we read it once first with
pycocotools (the library detectron2 itself uses) and turn what would be a traceback deep inside a
data-loader worker into a `DatasetLayoutError` / `ClassCountMismatchError` that says what to fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from mae_core.errors import ClassCountMismatchError, DatasetLayoutError

SPLITS = {"train": "train2017", "val": "val2017"}


@dataclass
class CocoSplit:
    name: str  # the detectron2 dataset name it is registered under
    json_file: Path
    image_root: Path
    num_images: int
    num_annotations: int
    categories: list[dict]
    uses_rle: bool  # masks stored as RLE (needs detectron2's "bitmask" instance mask format)


def annotation_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{SPLITS[split]}.json"


def read_split(root: str | Path, split: str) -> tuple:
    """(pycocotools COCO, json path, image folder) of one split, or a DatasetLayoutError saying what is wrong."""
    from pycocotools.coco import COCO

    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"COCO root {root} is not a folder; expected <root>/annotations/"
                                 f"instances_{{train,val}}2017.json and <root>/{{train,val}}2017/ images")
    json_file, image_root = annotation_file(root, split), root / SPLITS[split]
    if not json_file.is_file():
        raise DatasetLayoutError(
            f"{json_file} not found: a COCO-layout root holds annotations/instances_{SPLITS[split]}.json next to "
            f"the image folder {SPLITS[split]}/ (as in the official COCO 2017 download, or "
            f"`maet make-data synthetic --out DIR`, whose DIR/coco is such a root)")
    if not image_root.is_dir():
        raise DatasetLayoutError(f"image folder {image_root} not found (the images of {json_file.name})")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(json_file))
    except Exception as e:  # pycocotools raises whatever the JSON provokes (ValueError, KeyError, TypeError...)
        raise DatasetLayoutError(
            f"pycocotools cannot read {json_file}: {type(e).__name__}: {e}. It must be COCO instances JSON: an "
            "object with 'images' (id, file_name, height, width), 'annotations' (id, image_id, category_id, bbox, "
            "segmentation, area, iscrowd) and 'categories' (id, name)") from e
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.dataset.get(key), list) or (key != "annotations" and not coco.dataset[key]):
            raise DatasetLayoutError(f"{json_file}: '{key}' must be a non-empty list in COCO instances JSON")
    return coco, json_file, image_root


def check_split(root: str | Path, split: str, num_classes: int | None = None) -> CocoSplit:
    """Validate one split: readable JSON, every listed image on disk, categories matching the model."""
    coco, json_file, image_root = read_split(root, split)
    images = coco.dataset["images"]
    missing = [im.get("file_name") for im in images if not (image_root / str(im.get("file_name"))).is_file()]
    if missing:
        raise DatasetLayoutError(
            f"{len(missing)} of {len(images)} images listed in {json_file} are not in {image_root}: "
            f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}. Restore them or drop their "
            "entries (and annotations) from the JSON")
    cats = sorted(coco.dataset["categories"], key=lambda c: c["id"])
    used = {a["category_id"] for a in coco.dataset["annotations"]}
    unknown = sorted(used - {c["id"] for c in cats})
    if unknown:
        raise ClassCountMismatchError(f"{json_file}: annotations use category ids {unknown[:10]} that 'categories' "
                                      "does not list")
    if split == "val":  # the evaluated split: pycocotools' COCOeval reads these fields of every ground truth
        bad = [f"id {a.get('id')} {why}" for a in coco.dataset["annotations"] if (why := unevaluable(coco, a))]
        if bad:
            raise DatasetLayoutError(
                f"{json_file}: {len(bad)} annotation(s) that pycocotools' evaluator cannot score: "
                f"{'; '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}. Give each an 'area', 'iscrowd' (0 or 1), "
                "a 4-number 'bbox' and a segmentation (polygons of 3 points or more, or RLE), or drop it")
    uses_rle = any(isinstance(a.get("segmentation"), dict) for a in coco.dataset["annotations"]
                   if not a.get("iscrowd", 0))
    checked = CocoSplit(name=dataset_name(json_file, image_root), json_file=json_file, image_root=image_root,
                        num_images=len(images), num_annotations=len(coco.dataset["annotations"]), categories=cats,
                        uses_rle=uses_rle)
    if num_classes is not None:
        check_class_count(checked, num_classes)
    return checked


def unevaluable(coco, ann: dict) -> str:
    """Why COCOeval would fail on (or misread) this ground-truth annotation, or "" if it can score it."""
    missing = [k for k in ("area", "iscrowd", "bbox", "segmentation") if k not in ann]
    if missing:
        return f"has no {', '.join(map(repr, missing))}"
    if not isinstance(ann["bbox"], list) or len(ann["bbox"]) != 4:
        return "has a bbox that is not [x, y, w, h]"
    segm = ann["segmentation"]
    if isinstance(segm, list) and (not segm or not isinstance(segm[0], list) or len(segm[0]) < 6):
        # pycocotools reads a first polygon of 4 numbers as a box, and fails on fewer
        return "has a first polygon of fewer than 3 points" if segm else "has an empty segmentation"
    try:
        coco.annToRLE(ann)  # what COCOeval does to every ground-truth mask
    except Exception as e:  # pycocotools raises TypeError, IndexError, bare Exception...
        return f"has a segmentation pycocotools cannot read ({type(e).__name__}: {e})"
    return ""


def check_class_count(split: CocoSplit, num_classes: int) -> None:
    """The split's categories against the model's class count (known once the config is loaded)."""
    cats = split.categories
    if len(cats) != num_classes:
        raise ClassCountMismatchError(
            f"{split.json_file} has {len(cats)} categories (ids {[c['id'] for c in cats][:12]}"
            f"{' ...' if len(cats) > 12 else ''}) but the config's model predicts {num_classes} classes. "
            f"Override it: model.roi_heads.num_classes={len(cats)}, or use the matching data set")


def dataset_name(json_file: Path, image_root: Path) -> str:
    """A detectron2 dataset name unique to the files (two roots never share a registration)."""
    key = f"{json_file.resolve()}|{image_root.resolve()}"
    return f"maet_{image_root.name}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def register(split: CocoSplit) -> str:
    """`register_coco_instances` once per name (detectron2's catalog refuses a second registration)."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    if split.name not in DatasetCatalog.list():
        register_coco_instances(split.name, {}, str(split.json_file), str(split.image_root))
    return split.name
