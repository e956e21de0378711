"""Evaluator plumbing: ground truth fed back as predictions scores AP 100, shuffled boxes far lower.

pycocotools does the arithmetic; these tests check what we put around it: dataset registration,
category-id mapping, RLE masks, and that all 12 COCO numbers reach the run record's metrics.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402

from mae_core.data import write_synthetic  # noqa: E402
from transfer.detection.data import check_split, register  # noqa: E402
from transfer.detection.evaluator import STATS, record_metrics  # noqa: E402

# COCOeval.summarize()'s order of `stats`, written out here (not taken from the code under test)
COCOEVAL_ORDER = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@pytest.fixture(scope="module")
def val_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("det_eval")
    write_synthetic(root, seed=2, num_train=6, num_val=12, img_size=96, layouts=("coco",))
    split = check_split(root / "coco", "val", num_classes=6)
    from detectron2.data import DatasetCatalog

    DatasetCatalog.get(register(split))  # loading the dicts fills the metadata (class names, id mapping)
    return split


def _predictions(split, shuffle_boxes: bool = False):
    """Per image, the ground-truth instances as detectron2 model outputs (score 1)."""
    from detectron2.data import MetadataCatalog
    from detectron2.structures import Boxes, Instances
    from pycocotools import mask as mask_util

    data = json.loads(split.json_file.read_text())
    to_contiguous = MetadataCatalog.get(split.name).thing_dataset_id_to_contiguous_id
    by_image = {im["id"]: (im, []) for im in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]][1].append(ann)
    all_boxes = [a["bbox"] for a in data["annotations"]]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(all_boxes))
    inputs, outputs, k = [], [], 0
    for image_id, (im, anns) in by_image.items():
        inst = Instances((im["height"], im["width"]))
        boxes = []
        for a in anns:
            x, y, w, h = all_boxes[order[k]] if shuffle_boxes else a["bbox"]
            boxes.append([x, y, x + w, y + h])
            k += 1
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.tensor([to_contiguous[a["category_id"]] for a in anns], dtype=torch.int64)
        masks = [mask_util.decode(a["segmentation"]) for a in anns]
        inst.pred_masks = torch.from_numpy(np.stack(masks).astype(bool)) if masks else torch.zeros(
            0, im["height"], im["width"], dtype=torch.bool)
        inputs.append({"image_id": image_id})
        outputs.append({"instances": inst})
    return inputs, outputs


def _evaluate(split, tmp_path, **kw):
    from transfer.detection.evaluator import COCOEvaluator12

    evaluator = COCOEvaluator12(split.name, output_dir=str(tmp_path), distributed=False)
    evaluator.reset()
    evaluator.process(*_predictions(split, **kw))
    return evaluator.evaluate()


def test_ground_truth_gives_ap_100(val_split, tmp_path):
    results = _evaluate(val_split, tmp_path)
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == pytest.approx(100.0), (task, results[task])
        assert results[task]["AP50"] == pytest.approx(100.0) and results[task]["AR100"] == pytest.approx(100.0)
        assert set(STATS) <= set(results[task])  # all 12 COCO numbers
    metrics, dropped = record_metrics(results)
    assert metrics["bbox_AP"] == pytest.approx(100.0) and metrics["segm_AP"] == pytest.approx(100.0)
    assert all(math.isfinite(v) for t in ("bbox", "segm") for v in metrics[t].values())
    # every stat is either kept or named as dropped (e.g. APl: no large objects in 96-px images)
    for task in ("bbox", "segm"):
        assert {s for s in STATS if f"{task}.{s}" not in dropped} == {s for s in STATS if s in metrics[task]}


def test_shuffled_boxes_score_far_lower(val_split, tmp_path):
    results = _evaluate(val_split, tmp_path, shuffle_boxes=True)
    assert results["bbox"]["AP"] < 30.0, results["bbox"]
    assert results["segm"]["AP"] == pytest.approx(100.0)  # masks were not shuffled: the boxes are what broke
    # all 12 numbers under their names: pycocotools run by hand on the predictions the evaluator wrote
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(val_split.json_file))
        dt = gt.loadRes(str(tmp_path / "coco_instances_results.json"))
        for task in ("bbox", "segm"):
            ev = COCOeval(gt, dt, task)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            expected = {name: v * 100 if v >= 0 else float("nan") for name, v in zip(COCOEVAL_ORDER, ev.stats)}
            assert {k: results[task][k] for k in COCOEVAL_ORDER} == pytest.approx(expected, nan_ok=True), task
