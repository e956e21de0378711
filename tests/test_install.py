"""The transfer stack is really installed: a broken detectron2 / mmcv / mmseg install fails CI loudly here."""

import importlib


def test_detectron2_vitdet_pieces_import():
    from detectron2.modeling import SimpleFeaturePyramid, ViT
    from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

    assert callable(get_vit_lr_decay_rate) and ViT.__init__ and SimpleFeaturePyramid.__init__


def test_detectron2_crops_polygons():
    """fvcore's CropTransform (detectron2's LSJ crop) cuts polygon masks, real COCO's, with shapely."""
    import numpy as np
    from detectron2.data.transforms import CropTransform

    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], dtype=np.float64)
    (cut,) = CropTransform(x0=5, y0=5, w=10, h=10).apply_polygons([square])
    x, y = cut[:, 0], cut[:, 1]
    assert cut.min() == 0 and cut.max() == 5
    assert abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2 == 25  # shoelace: the 5x5 corner


def test_mmcv_compiled_ops_and_mmseg_import():
    import mmcv
    import torch
    from mmcv.ops import point_sample
    from mmseg.models import EncoderDecoder

    assert mmcv.__version__ == "2.1.0"
    out = point_sample(torch.arange(16.0).view(1, 1, 4, 4), torch.full((1, 1, 2), 0.5))
    assert out.shape == (1, 1, 1) and EncoderDecoder is not None
    assert importlib.import_module("mmcv._ext") is not None  # the compiled extension, not mmcv-lite


def test_mae_core_does_not_import_transfer_stacks():
    """Imports point one way: mae_core works without detectron2 / mmseg / pandas (docs/design.md)."""
    import subprocess
    import sys

    code = ("import sys, mae_core.mae, mae_core.checkpoints, mae_core.train.pretrain, mae_core.visualize;"
            "bad = [m for m in ('detectron2', 'mmseg', 'mmcv', 'pandas') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
