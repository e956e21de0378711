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
from transfer.detection.data import check_split  # noqa: E402


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
    proc = subprocess.run(maet("detect", "eval", "--data-root", str(coco), "--weights", "none.pth",
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
