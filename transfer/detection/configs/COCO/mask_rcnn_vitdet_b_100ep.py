"""ViTDet Mask R-CNN, ViT-B, 100 epochs: detectron2's projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py.

The only difference: `train.init_checkpoint` is empty, because `maet detect train --init` maps an
MAE encoder of any format into `backbone.net.*` itself (transfer/detection/weights.py) and reports
what was new and what was unused, instead of detectron2's suffix-matching heuristics.
"""

from functools import partial

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..common.coco_loader_lsj import dataloader  # noqa: F401  (part of this config)

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model

# Initialization and trainer settings
train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = ""  # published: mae_pretrain_vit_base.pth?matching_heuristics=True; here: --init
train.seed = 0

# Schedule
# 100 ep = 184375 iters * 64 images/iter / 118000 images/ep
train.max_iter = 184375

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],
        num_updates=train.max_iter,
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

# Optimizer
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
