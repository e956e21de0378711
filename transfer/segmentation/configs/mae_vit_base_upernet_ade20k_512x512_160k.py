"""The published protocol (MAE paper Table 5; mmseg's own MAE ViT-B run, 48.13 mIoU): ADE20K, UperNet, ViT-B/16.

Everything comes from mmseg's `configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py`: `EncoderDecoder`
with mmseg's `MAE` backbone (relative position bias zero-initialised, layer scale 1.0), out_indices
[3, 5, 7, 11], `Feature2Pyramid` rescales [4, 2, 1, 0.5], `UPerHead` + `FCNHead` auxiliary,
`LayerDecayOptimizerConstructor` 0.65, AdamW lr 1e-4 wd 0.05, 512x512 crops, 160k iterations, 2 images on each
of 8 GPUs (batch 16), sliding-window inference. Only the weights' route differs: `pretrained` is cleared, and
`maet segment train --init` converts the checkpoint in memory (transfer/segmentation/weights.py), so mmseg never
unpickles a user's file. AMP as in mmseg's `tools/train.py --amp`: `maet segment train --amp`.
"""

_base_ = ["mmseg::mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py"]

model = dict(pretrained=None)
auto_scale_lr = dict(enable=False, base_batch_size=16)  # 8 GPUs x 2 images, the published batch
default_hooks = dict(checkpoint=dict(max_keep_ckpts=2, save_last=True))
# TensorBoard scalars (loss, lr, mIoU, ...) in `<work_dir>/<timestamp>/vis_data/`, beside mmengine's own files,
# as every engine of the suite writes them; the configs that `_base_` this one inherit it.
visualizer = dict(vis_backends=[dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")])
