"""The transfer stack is really installed: a broken detectron2 / mmcv / mmseg install fails CI loudly here."""

import importlib


def test_detectron2_vitdet_pieces_import():
    from detectron2.modeling import SimpleFeaturePyramid, ViT
    from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

    assert callable(get_vit_lr_decay_rate) and ViT.__init__ and SimpleFeaturePyramid.__init__


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
    """Imports point one way: mae_core works without detectron2 / mmseg / pandas (DESIGN.md)."""
    import subprocess
    import sys

    code = ("import sys, mae_core.mae, mae_core.checkpoints, mae_core.train.pretrain, mae_core.visualize;"
            "bad = [m for m in ('detectron2', 'mmseg', 'mmcv', 'pandas') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
