"""Bad COCO input gives our own errors with a message saying what to fix; detectron2 .pkl files load safely."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess

import pytest

pytest.importorskip("detectron2")

from mae_core.data import write_synthetic  # noqa: E402
from mae_core.errors import CheckpointFormatError, ClassCountMismatchError, DatasetLayoutError  # noqa: E402
from tests.helpers import maet, one_thread_env  # noqa: E402
from transfer.detection.data import check_split, register  # noqa: E402


@pytest.fixture(scope="module")
def coco_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("det_data")
    write_synthetic(root, seed=1, num_train=6, num_val=6, img_size=32, layouts=("coco",))
    return root / "coco"


@pytest.fixture
def coco(coco_src, tmp_path):
    return shutil.copytree(coco_src, tmp_path / "coco")


def _val_json(root):
    return root / "annotations" / "instances_val2017.json"


def test_good_root_passes(coco):
    split = check_split(coco, "val", num_classes=6)
    assert split.num_images == 6 and split.uses_rle and [c["id"] for c in split.categories] == [1, 2, 3, 4, 5, 6]


def test_missing_annotation_file_cli_exit_2(coco, tmp_path):
    _val_json(coco).unlink()
    with pytest.raises(DatasetLayoutError, match="instances_val2017.json not found"):
        check_split(coco, "val")
    # the command line turns it into exit code 2 and the message, before any model is built
    weights = tmp_path / "model.pth"  # exists: the data check comes before the model file is read
    weights.write_bytes(b"")
    proc = subprocess.run(maet("detect", "eval", "--data-path", str(coco), "--checkpoint", str(weights),
                               "--output-dir", str(tmp_path / "out"), "--no-record"),
                          capture_output=True, text=True, env=one_thread_env(), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "instances_val2017.json not found" in proc.stderr


@pytest.mark.parametrize("text", ["{not json", json.dumps({"images": [{"id": 1}], "annotations": [{"id": 1}],
                                                               "categories": [{"id": 1, "name": "a"}]})])
def test_json_pycocotools_rejects(coco, text):
    _val_json(coco).write_text(text)
    with pytest.raises(DatasetLayoutError, match="pycocotools cannot read"):
        check_split(coco, "val")


def test_category_count_mismatch(coco):
    with pytest.raises(ClassCountMismatchError, match=r"6 categories .* predicts 5 classes.*num_classes=6"):
        check_split(coco, "val", num_classes=5)
    data = json.loads(_val_json(coco).read_text())
    data["annotations"][0]["category_id"] = 42
    _val_json(coco).write_text(json.dumps(data))
    with pytest.raises(ClassCountMismatchError, match=r"category ids \[42\]"):
        check_split(coco, "val", num_classes=6)


def test_listed_image_missing(coco):
    first = json.loads(_val_json(coco).read_text())["images"][0]["file_name"]
    (coco / "val2017" / first).unlink()
    with pytest.raises(DatasetLayoutError, match=f"1 of 6 images .* not in .*{first}"):
        check_split(coco, "val")


@pytest.fixture(scope="module")
def real_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("det_real")
    write_synthetic(root, seed=1, num_train=8, num_val=6, img_size=32, layouts=("coco",), coco_style="real")
    return root / "coco"


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_real_coco_quirks_through_detectron2s_loader_and_mapper(real_coco, mask_format):
    """Polygons (cropped by fvcore, with shapely), crowds, id gaps and an empty image, read by detectron2 itself.

    ViTDet's B/L/H protocols keep detectron2's "polygon" mask format on polygon data; the tiny one uses "bitmask".
    """
    from detectron2.config import instantiate
    from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
    from detectron2.structures import BitMasks, PolygonMasks

    from transfer.detection.config import load_config

    split = check_split(real_coco, "train", num_classes=6)  # 6 categories, ids 1..11 with gaps
    assert not split.uses_rle  # crowd RLE does not count: the mapper drops crowds before it builds masks
    name = register(split)
    dicts = DatasetCatalog.get(name)
    assert MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id == {1: 0, 3: 1, 4: 2, 6: 3, 9: 4, 11: 5}
    assert len(dicts) == 8 and sum(not d["annotations"] for d in dicts) == 1  # the empty image is listed
    assert any(a["iscrowd"] for d in dicts for a in d["annotations"])
    kept = get_detection_dataset_dicts([name], filter_empty=True)  # ... and left out of training, as in COCO
    assert 0 < len(kept) < 8 and all(any(not a["iscrowd"] for a in d["annotations"]) for d in kept)
    cfg = load_config("tiny")
    cfg.dataloader.train.mapper.instance_mask_format = mask_format
    mapper = instantiate(cfg.dataloader.train.mapper)  # LSJ: resize, then FixedSizeCrop (shapely for polygons)
    multi_part = 0
    for d in kept:
        things = [a for a in d["annotations"] if not a["iscrowd"]]
        multi_part += any(len(a["segmentation"]) > 1 for a in things)
        instances = mapper(d)["instances"]
        assert isinstance(instances.gt_masks, PolygonMasks if mask_format == "polygon" else BitMasks)
        assert len(instances) <= len(things) and set(instances.gt_classes.tolist()) <= set(range(6))
    assert multi_part


def test_pkl_model_files_load_numpy_only(tmp_path):
    import numpy as np

    from transfer.detection.checkpoint import load_pkl

    good = tmp_path / "model_final.pkl"
    good.write_bytes(pickle.dumps({"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
                                   "__author__": "test"}))
    assert load_pkl(str(good))["model"]["w"].sum() == 15
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {}, "__author__": "x", "hook": print}))
    with pytest.raises(CheckpointFormatError, match="refusing to unpickle builtins.print"):
        load_pkl(str(evil))


def _cocoeval_fails(json_file, good: dict) -> bool:
    """Score the valid ground truth `good` as a detection with pycocotools itself: does COCOeval fail on the file?"""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(json_file))
        dt = gt.loadRes([{k: good[k] for k in ("image_id", "category_id", "bbox", "segmentation")} | {"score": 1.0}])
        try:
            for kind in ("bbox", "segm"):
                ev = COCOeval(gt, dt, kind)
                ev.evaluate()
                ev.accumulate()
        except Exception:
            return True
    return False


def _first(anns):
    return next(a for a in anns if not a["iscrowd"])


@pytest.mark.parametrize("quirk, reason", [
    ("no area", "has no 'area'"), ("no iscrowd", "has no 'iscrowd'"),
    ("2-point polygon", "first polygon of fewer than 3 points"), ("1-point polygon", "first polygon of fewer"),
    ("empty segmentation", "empty segmentation"), ("extra 2-point part", None), ("zero-height box", None)])
def test_the_evaluated_split_is_refused_exactly_when_cocoeval_would_fail(real_coco, tmp_path, quirk, reason):
    """Found by a review: these crashed inside pycocotools after training. Now the check refuses them up front,
    and only them: a valid polygon with an extra 2-point part, or a flat box, pycocotools scores."""
    coco = shutil.copytree(real_coco, tmp_path / "coco")
    data = json.loads(_val_json(coco).read_text())
    anns = data["annotations"]
    a = _first(anns)
    x, y = a["bbox"][:2]
    edits = {"no area": lambda: [b.pop("area") for b in anns],
             "no iscrowd": lambda: [b.pop("iscrowd") for b in anns],
             "2-point polygon": lambda: a.update(segmentation=[[x, y, x + 3, y + 3]]),
             "1-point polygon": lambda: a.update(segmentation=[[x, y]]),
             "empty segmentation": lambda: a.update(segmentation=[]),
             "extra 2-point part": lambda: a.update(segmentation=a["segmentation"] + [[1.0, 1.0, 2.0, 2.0]]),
             "zero-height box": lambda: a.update(bbox=[x, y, 10.0, 0.0], segmentation=[[x, y, x + 5, y, x + 10, y]])}
    good = dict(next(b for b in reversed(anns) if not b["iscrowd"] and b is not a))  # untouched by the edits
    edits[quirk]()
    _val_json(coco).write_text(json.dumps(data))
    assert _cocoeval_fails(_val_json(coco), good) == (reason is not None)
    if reason is None:
        check_split(coco, "val")
    else:
        with pytest.raises(DatasetLayoutError, match=f"cannot score: id {a['id']} .*{reason}"):
            check_split(coco, "val")
