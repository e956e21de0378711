"""ViT-L/16 on the published protocol (MAE paper Table 5: 53.6 mIoU). mmseg ships no ViT-L MAE config.

Same recipe as ViT-B except the architecture: 24 blocks of width 1024, 16 heads, features after blocks
[7, 11, 15, 23] (the ViT-B indices scaled to depth 24), heads 1024 wide. ANCHORS.md gives only ViT-B's
optimiser values; the layer decay here (0.75) is MAE's ViT-L fine-tuning value, an assumption to check.
"""

_base_ = ["./mae_vit_base_upernet_ade20k_512x512_160k.py"]

width = 1024
model = dict(
    backbone=dict(embed_dims=width, num_layers=24, num_heads=16, out_indices=[7, 11, 15, 23], drop_path_rate=0.2),
    neck=dict(embed_dim=width),
    decode_head=dict(in_channels=[width] * 4, channels=width),
    auxiliary_head=dict(in_channels=width))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=24, layer_decay_rate=0.75))
