"""`coco_style="real"`: the generator writes real COCO's quirks, and pycocotools reads back the exact masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

pytest.importorskip("cv2")

from mae_core.data import SHAPE_CLASSES, iter_scenes, write_synthetic  # noqa: E402
from mae_core.data.coco import REAL_CATEGORY_IDS, mask_to_polygons, real_view, uncompressed_rle  # noqa: E402

SEED, SIZE, NUM = 2, 40, {"train": 9, "val": 6}


def _rasterise(polygons, h, w) -> np.ndarray:
    """pycocotools' own polygon -> mask path (what COCO's API and detectron2 both use)."""
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))).astype(bool)


def _hand_made_masks() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[0:30, 0:36]
    d2 = (yy - 15) ** 2 + (xx - 18) ** 2
    ring = (d2 <= 12**2) & (d2 >= 6**2)
    island = ring.copy()
    island[13:17, 16:20] = True  # a part inside the ring's hole
    cut = ring.copy()
    cut[14:16, :] = False  # two arcs
    single = np.zeros((8, 9), bool)
    single[0, 0] = True  # one pixel, in the corner
    return {"ring": ring, "island_in_hole": island, "cut_ring": cut, "single_pixel": single,
            "diagonal": np.eye(10, dtype=bool), "noise": np.random.default_rng(0).random((24, 31)) > 0.5}


@pytest.mark.parametrize("name", list(_hand_made_masks()))
def test_polygons_rasterise_back_to_the_exact_mask(name):
    mask = _hand_made_masks()[name]
    polygons = mask_to_polygons(mask)
    assert polygons and all(len(p) % 2 == 0 and len(p) >= 8 for p in polygons)
    np.testing.assert_array_equal(_rasterise(polygons, *mask.shape), mask)
    parts = {"ring": 1, "island_in_hole": 2, "cut_ring": 2, "single_pixel": 1}
    if name in parts:
        assert len(polygons) == parts[name]


def test_uncompressed_rle_is_cocos():
    for mask in (_hand_made_masks()["noise"], _hand_made_masks()["single_pixel"], ~_hand_made_masks()["ring"]):
        rle = uncompressed_rle(mask)
        assert rle["size"] == list(mask.shape) and all(isinstance(c, int) for c in rle["counts"])
        assert sum(rle["counts"]) == mask.size
        np.testing.assert_array_equal(mask_utils.decode(mask_utils.frPyObjects(rle, *mask.shape)).astype(bool), mask)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    summary = write_synthetic(out, seed=SEED, num_train=NUM["train"], num_val=NUM["val"], img_size=SIZE,
                              layouts=("coco",), coco_style="real")
    return out / "coco", summary


def _coco(root: Path, split: str) -> COCO:
    return COCO(str(root / "annotations" / f"instances_{split}2017.json"))


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_quirk_is_written(real, split):
    root, summary = real
    assert summary["coco"]["style"] == "real"
    coco = _coco(root, split)
    data = coco.dataset
    assert [c["id"] for c in data["categories"]] == list(REAL_CATEGORY_IDS) == [1, 3, 4, 6, 9, 11]
    assert [c["name"] for c in data["categories"]] == list(SHAPE_CLASSES)
    assert {a["category_id"] for a in data["annotations"]} <= set(REAL_CATEGORY_IDS)
    crowd = [a for a in data["annotations"] if a["iscrowd"]]
    things = [a for a in data["annotations"] if not a["iscrowd"]]
    assert all(isinstance(a["segmentation"], list) and a["segmentation"] for a in things)  # polygons only
    assert any(len(a["segmentation"]) > 1 for a in things)  # a multi-part object
    assert crowd and all(set(a["segmentation"]) == {"counts", "size"} and isinstance(a["segmentation"]["counts"], list)
                         for a in crowd)  # uncompressed RLE, as COCO's crowds
    empty = [im["id"] for im in data["images"] if not coco.getAnnIds(imgIds=im["id"], iscrowd=None)]
    assert empty == [2]  # scene index 1
    sizes = [(im["width"], im["height"]) for im in data["images"]]
    assert all(w != h and min(w, h) >= SIZE for w, h in sizes) and len(set(sizes)) > 1
    for im in data["images"]:
        with Image.open(root / f"{split}2017" / im["file_name"]) as f:
            assert f.format == "JPEG" and f.size == (im["width"], im["height"])
    for a in data["annotations"]:  # area and bbox agree with the mask the segmentation encodes
        im = coco.imgs[a["image_id"]]
        m = coco.annToMask(a).astype(bool)
        assert m.shape == (im["height"], im["width"]) and a["area"] == m.sum() > 0
        ys, xs = np.nonzero(m)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        if a["iscrowd"]:
            assert a["segmentation"]["size"] == [im["height"], im["width"]]


@pytest.mark.parametrize("split", ["train", "val"])
def test_polygons_match_the_scenes_exact_masks(real, split):
    """The JSON's polygons, rasterised by pycocotools, against the writer's exact masks (IoU) and, independently,
    against the scene itself sampled at its pixel centres (equal, except where a pole covers an object)."""
    root, _ = real
    coco = _coco(root, split)
    classes = tuple(SHAPE_CLASSES)
    ious, poles = [], 0
    for idx, scene in enumerate(iter_scenes(SEED, split, NUM[split], img_size=SIZE)):
        im = coco.imgs[idx + 1]
        h, w = im["height"], im["width"]
        rng = np.random.default_rng([SEED, {"train": 0, "val": 1}[split], 2, idx])
        _, objects = real_view(scene, idx, rng, classes)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=idx + 1, iscrowd=False))
        assert len(anns) == sum(not crowd for *_, crowd in objects)
        rows = ((np.arange(SIZE) + 0.5) * h / SIZE).astype(int)  # the stretched pixel over each scene pixel centre
        cols = ((np.arange(SIZE) + 0.5) * w / SIZE).astype(int)
        scene_masks = [scene.visible_mask(i) for i in range(len(scene.classes))]
        largest = max(scene_masks, key=np.sum)
        for ann, (c, exact, _) in zip(anns, objects):
            assert ann["category_id"] == REAL_CATEGORY_IDS[c]
            got = _rasterise(ann["segmentation"], h, w)
            ious.append((got & exact).sum() / (got | exact).sum())
            at_centres = got[rows][:, cols]
            source = next(m for m in scene_masks if (m & at_centres).any())  # the scene instance it came from
            if idx % 3:  # no pole: the scene's mask exactly
                np.testing.assert_array_equal(at_centres, source)
            else:  # a pole: a subset; what is missing fills whole rows or whole columns of the scene
                assert not (at_centres & ~source).any()
                missing = source & ~at_centres
                band_rows, band_cols = np.nonzero(missing.any(1))[0], np.nonzero(missing.any(0))[0]
                assert missing.sum() == 0 or len(band_rows) <= SIZE // 16 + 1 or len(band_cols) <= SIZE // 16 + 1
                if source is largest:  # the pole cuts the largest object in two (or more)
                    assert missing.any() and len(ann["segmentation"]) >= 2
                    poles += 1
    assert min(ious) > 0.99 and poles == len(range(0, NUM[split], 3))  # scenes 0, 3, 6, ...


def test_real_style_changes_the_coco_layout_only(tmp_path):
    kw = dict(seed=1, num_train=6, num_val=6, img_size=32)
    write_synthetic(tmp_path / "exact", **kw)
    write_synthetic(tmp_path / "real", **kw, coco_style="real")

    def files(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    for layout in ("imagenet", "ade20k"):
        assert files(tmp_path / "exact" / layout) == files(tmp_path / "real" / layout)
    a, b = (json.loads((tmp_path / style / "coco" / "annotations" / "instances_val2017.json").read_text())
            for style in ("exact", "real"))
    assert all(isinstance(x["segmentation"], dict) for x in a["annotations"])  # the default: compressed RLE
    assert [c["id"] for c in a["categories"]] == [1, 2, 3, 4, 5, 6] and a != b
    with pytest.raises(ValueError, match="coco_style"):
        write_synthetic(tmp_path / "bad", **kw, coco_style="polygons")
