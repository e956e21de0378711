"""ViTDet Mask R-CNN, ViT-L, 100 epochs: detectron2's projects/ViTDet/configs/COCO/mask_rcnn_vitdet_l_100ep.py."""

from functools import partial

from .mask_rcnn_vitdet_b_100ep import (  # noqa: F401  (re-exported: a LazyConfig is its module's globals)
    dataloader,
    get_vit_lr_decay_rate,
    lr_multiplier,
    model,
    optimizer,
    train,
)

train.init_checkpoint = ""  # published: mae_pretrain_vit_large.pth; here: --init

model.backbone.net.embed_dim = 1024
model.backbone.net.depth = 24
model.backbone.net.num_heads = 16
model.backbone.net.drop_path_rate = 0.4
# 5, 11, 17, 23 for global attention
model.backbone.net.window_block_indexes = (
    list(range(0, 5)) + list(range(6, 11)) + list(range(12, 17)) + list(range(18, 23))
)

optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, lr_decay_rate=0.8, num_layers=24)
