"""The one piece the tiny protocol needs that detectron2 has no constructor argument for."""

from __future__ import annotations


def last_level_max_pool(in_feature: str = "p5"):
    """detectron2's `LastLevelMaxPool` (the p6 max-pool of ViTDet) reading from `in_feature`.

    `LastLevelMaxPool` hard-codes `in_feature = "p5"`; with patch 8 the pyramid's last level is p4.
    """
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool

    block = LastLevelMaxPool()
    block.in_feature = in_feature
    return block
