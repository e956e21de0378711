"""The tiny protocol: ViTDet Mask R-CNN scaled down for a CPU on the synthetic COCO set (mae_core.data).

Same code path as ViT-B (it starts from mask_rcnn_vitdet_b_100ep.py and overrides sizes only): a
ViT of the demo's pretraining shape (width 192, depth 6, 3 heads, patch 8, pretrained at 64 px),
window attention with global blocks 2 and 5, zero-initialised relative position, the same simple
feature pyramid (LN convs, max-pool top level) and 4conv1fc LN box head at smaller widths, fewer
sampled regions (the scenes hold 1-4 objects; the heads are most of the CPU time), LSJ at 64 px,
AdamW with layer decay 0.7. Patch 8 halves ViTDet's strides, so the pyramid scales are 2, 1, 0.5
(+ max-pool): strides 4..32 and levels p2..p5, ViT-B's first four, with anchors 16..128 px. Data:
`maet make-data synthetic --img-size 64 --num-train 800 --num-val 200`; 600 iterations of 8 images
(about 5 minutes on one CPU thread).
"""

from functools import partial

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from transfer.detection.layers import last_level_max_pool

from .mask_rcnn_vitdet_b_100ep import (  # noqa: F401  (re-exported: a LazyConfig is its module's globals)
    dataloader,
    get_vit_lr_decay_rate,
    lr_multiplier,
    model,
    optimizer,
    train,
)

image_size = 64  # the synthetic scenes' and the demo pretraining's resolution
embed_dim, depth, num_heads, patch_size = 192, 6, 3, 8
channels = 64  # pyramid / head width (256 in ViTDet)

net = model.backbone.net
net.img_size = image_size
net.patch_size = patch_size
net.embed_dim, net.depth, net.num_heads = embed_dim, depth, num_heads
net.drop_path_rate = 0.1
net.window_size = 4
net.window_block_indexes = [0, 1, 3, 4]  # 2, 5 for global attention
net.pretrain_img_size = 64  # the demo's pretraining resolution; `--init` sets it from the checkpoint
model.backbone.out_channels = channels
model.backbone.square_pad = image_size
model.backbone.scale_factors = (2.0, 1.0, 0.5)  # ViTDet's 4.0 would be stride 2 here, for objects below 16 px
model.backbone.top_block = L(last_level_max_pool)(in_feature="p4")  # p5 = max-pool of the last level

levels = ["p2", "p3", "p4", "p5"]  # strides 4, 8, 16 (+ 32 from the max-pool top block)
rpn = model.proposal_generator
rpn.in_features = levels
rpn.head.in_channels = channels
rpn.anchor_generator.sizes = [[16], [32], [64], [128]]
rpn.anchor_generator.strides = [4, 8, 16, 32]
rpn.batch_size_per_image = 64  # 256 in ViTDet; scenes here hold 1-4 objects
rpn.pre_nms_topk = (400, 200)
rpn.post_nms_topk = (100, 100)

heads = model.roi_heads
heads.num_classes = 6  # mae_core.data.SHAPE_CLASSES
heads.batch_size_per_image = 16  # 512 in ViTDet: the box and mask heads are most of the CPU time
heads.box_in_features = heads.mask_in_features = levels[:3]
heads.box_pooler.scales = heads.mask_pooler.scales = (1 / 4, 1 / 8, 1 / 16)
heads.box_pooler.canonical_box_size = heads.mask_pooler.canonical_box_size = 32
heads.box_pooler.canonical_level = heads.mask_pooler.canonical_level = 3
heads.box_head.input_shape = ShapeSpec(channels=channels, height=7, width=7)
heads.box_head.conv_dims = [channels] * 4  # 4conv1fc
heads.box_head.fc_dims = [256]
heads.box_predictor.input_shape = ShapeSpec(channels=256)
heads.box_predictor.test_topk_per_image = 20
heads.mask_head.input_shape = ShapeSpec(channels=channels, width=14, height=14)
heads.mask_head.conv_dims = [channels] * 5

# LSJ at 64 px, a narrower scale range than ViTDet's 0.1-2.0 so a short run sees objects at useful sizes
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.5, max_scale=1.5, target_height=image_size, target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.train.mapper.instance_mask_format = "bitmask"  # the synthetic set stores exact RLE masks
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 0
dataloader.train.aspect_ratio_grouping = False  # a fixed order of images per iteration: exact resume
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size),
]
dataloader.test.num_workers = 0

# train.amp.enabled and train.ddp.fp16_compression stay on as in ViTDet: `maet detect` uses them on CUDA only
train.max_iter = 600
train.checkpointer.period = 200
train.eval_period = 0  # evaluate once at the end
train.log_period = 20

optimizer.lr = 3e-4
optimizer.weight_decay = 0.05
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=depth, lr_decay_rate=0.7)
lr_multiplier.scheduler.milestones = [int(train.max_iter * 0.89), int(train.max_iter * 0.96)]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 50 / train.max_iter
