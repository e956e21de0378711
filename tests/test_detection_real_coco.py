"""`maet detect` trains and evaluates on real COCO's quirks: polygon masks, multi-part objects, crowd regions as
uncompressed RLE, category ids with gaps, an image without annotations, non-square images of varied sizes.

The data comes from `maet make-data synthetic --coco-style real`, as a user would write it; the generator's own
tests (test_synthetic_coco.py) check each quirk. A tiny ViT (width 64, depth 2) at 64 px, a few iterations.
"""

from __future__ import annotations

import json
import math
import subprocess

import pytest

pytest.importorskip("detectron2")

from mae_core.data.coco import REAL_CATEGORY_IDS  # noqa: E402
from tests.helpers import maet, one_thread_env  # noqa: E402
from tests.test_detection_weights import TEST_ARCH  # noqa: E402

pytestmark = pytest.mark.slow
EVAL = ["model.roi_heads.box_predictor.test_score_thresh=0.0"]  # keep every detection of a 4-iteration model


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=one_thread_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_train_then_eval_on_polygons_crowds_and_id_gaps(tmp_path):
    data, out, records = tmp_path / "data", tmp_path / "run", tmp_path / "records"
    _run(maet("make-data", "synthetic", "--out", str(data), "--coco-style", "real", "--seed", "0",
              "--num-train", "12", "--num-val", "6", "--img-size", "64"))
    coco = data / "coco"
    val = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
    assert any(isinstance(a["segmentation"], list) and len(a["segmentation"]) > 1 for a in val["annotations"])
    assert any(a["iscrowd"] for a in val["annotations"])
    assert all(im["width"] != im["height"] for im in val["images"])
    empty = {im["id"] for im in val["images"]} - {a["image_id"] for a in val["annotations"]}
    assert empty

    _run(maet("detect", "train", "--config", "tiny", "--data-path", str(coco), "--init", "scratch",
              "--output-dir", str(out), "--max-iters", "4", "--results-dir", str(records), "--seed", "0",
              "--cfg-options", *TEST_ARCH, *EVAL))
    _run(maet("detect", "eval", "--config", "tiny", "--data-path", str(coco),
              "--checkpoint", str(out / "model_final.pth"),
              "--output-dir", str(tmp_path / "eval"), "--results-dir", str(records), "--cfg-options",
              *TEST_ARCH, *EVAL))

    train_rec, eval_rec = [json.loads(line) for line in (records / "detection.jsonl").read_text().splitlines()]
    assert (train_rec["mode"], train_rec["iteration"], eval_rec["mode"]) == ("train", 4, "eval")
    for rec in (train_rec, eval_rec):
        assert math.isfinite(rec["metrics"]["bbox_AP"]) and math.isfinite(rec["metrics"]["segm_AP"])
    assert eval_rec["metrics"] == train_rec["metrics"]
    # detectron2 trained on contiguous classes 0..5 and mapped its predictions back to the file's ids
    preds = json.loads((tmp_path / "eval" / "inference" / "coco_instances_results.json").read_text())
    assert {p["category_id"] for p in preds} <= set(REAL_CATEGORY_IDS)
    assert {p["category_id"] for p in preds} - {1, 2, 3, 4, 5, 6}  # ids beyond 6: the mapping, not 1..K
    assert empty <= {p["image_id"] for p in preds}  # the empty image was evaluated too
