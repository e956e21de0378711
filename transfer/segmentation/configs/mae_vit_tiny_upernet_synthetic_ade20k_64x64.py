"""The tiny protocol: the published one at CPU scale, on the synthetic ADE20K set (`maet make-data`).

Same classes and code path as the ViT-B config it `_base_`s (MAE backbone, Feature2Pyramid, UPerHead + FCN
auxiliary, layer decay 0.65, AdamW, slide inference); smaller numbers: the demo's pretrained ViT (width 192,
depth 6, 3 heads, patch 8, 64 px) with features after blocks [1, 2, 3, 5], rescaled by [2, 1, 0.5, 0.25] (patch 8
halves the published strides, so this gives back its 4..32), 64x64 crops, narrow heads with BN, 1200 iterations at
lr 1e-3, batch 8 (about 5 minutes on one CPU thread). The synthetic labels follow ADE20K's
convention (0 = ignore, 1 = background, 2..7 = shapes), hence `reduce_zero_label` and 7 classes; mmseg's
`ADE20KDataset` insists on ADE's 150 names, so the same files are read with its base class and our names.
"""

_base_ = ["./mae_vit_base_upernet_ade20k_512x512_160k.py"]

crop_size = (64, 64)
width = 192
classes = ("background", "circle", "square", "triangle", "cross", "ring", "star")
num_classes = len(classes)
norm_cfg = dict(type="BN", requires_grad=True)
max_iters = 1200

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size, patch_size=8, embed_dims=width, num_layers=6, num_heads=3,
                  out_indices=[1, 2, 3, 5], drop_path_rate=0.1),
    neck=dict(embed_dim=width, rescales=[2, 1, 0.5, 0.25]),
    decode_head=dict(in_channels=[width] * 4, channels=64, num_classes=num_classes, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=width, channels=32, num_classes=num_classes, norm_cfg=norm_cfg),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(43, 43)))  # 2/3 overlap, as 341 of 512

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="RandomResize", scale=(256, 64), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(256, 64), keep_ratio=True),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="PackSegInputs"),
]
dataset = dict(type="BaseSegDataset", metainfo=dict(classes=classes), img_suffix=".jpg", seg_map_suffix=".png",
               reduce_zero_label=True, data_root="data/synthetic/ade20k/ADEChallengeData2016")
train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                        dataset=dict(_delete_=True, **dataset, pipeline=train_pipeline,
                                     data_prefix=dict(img_path="images/training",
                                                      seg_map_path="annotations/training")))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(_delete_=True, **dataset, pipeline=test_pipeline,
                                   data_prefix=dict(img_path="images/validation",
                                                    seg_map_path="annotations/validation")))
test_dataloader = val_dataloader

# lr 1e-3, 10x the published one: in a few hundred iterations at 1e-4 the model learns only the class prior
# (every pixel background, 81% of them); the short schedule needs the larger step.
optim_wrapper = dict(optimizer=dict(lr=1e-3), paramwise_cfg=dict(num_layers=6))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=100),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=100, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=300)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=300))
env_cfg = dict(cudnn_benchmark=False)
