"""The ViTDet protocols as built: the published values (ANCHORS.md, COCO ViTDet) and the tiny CPU one."""

from __future__ import annotations

import pytest

pytest.importorskip("detectron2")

from transfer.detection.config import PROTOCOLS, backbone_summary, load_config, set_max_iter  # noqa: E402

PUBLISHED = {  # D: projects/ViTDet/configs/COCO/mask_rcnn_vitdet_{b,l}_100ep.py, _h_75ep.py
    "b": dict(embed_dim=768, depth=12, num_heads=12, global_blocks=[2, 5, 8, 11], lr_decay_rate=0.7,
              drop_path_rate=0.1, max_iter=184375),
    "l": dict(embed_dim=1024, depth=24, num_heads=16, global_blocks=[5, 11, 17, 23], lr_decay_rate=0.8,
              drop_path_rate=0.4, max_iter=184375),
    "h": dict(embed_dim=1280, depth=32, num_heads=16, global_blocks=[7, 15, 23, 31], lr_decay_rate=0.9,
              drop_path_rate=0.5, max_iter=184375 * 3 // 4),
}


@pytest.mark.parametrize("name", ["b", "l", "h"])
def test_published_protocols(name):
    cfg = load_config(name)
    s = backbone_summary(cfg)
    for key, value in PUBLISHED[name].items():
        assert s[key] == value, (name, key, s[key], value)
    assert s["decay_num_layers"] == s["depth"]
    assert (s["window_size"], s["patch_size"], s["img_size"]) == (14, 16, 1024)
    assert s["use_rel_pos"] and s["rel_pos_zero_init"]
    assert s["scale_factors"] == [4.0, 2.0, 1.0, 0.5] and s["pyramid_norm"] == "LN"
    assert s["batch_size"] == 64 and s["amp"] is True
    assert cfg.model.backbone.top_block._target_.__name__ == "LastLevelMaxPool"  # p6
    heads = cfg.model.roi_heads
    assert list(heads.box_head.conv_dims) == [256] * 4 and list(heads.box_head.fc_dims) == [1024]  # 4conv1fc
    assert heads.box_head.conv_norm == heads.mask_head.conv_norm == "LN"
    assert cfg.optimizer._target_.__name__ == "AdamW"
    assert cfg.optimizer.params.lr_factor_func.func.__name__ == "get_vit_lr_decay_rate"
    assert cfg.train.ddp.fp16_compression is True
    # LSJ at 1024
    aug = [a._target_.__name__ for a in cfg.dataloader.train.mapper.augmentations]
    assert aug == ["RandomFlip", "ResizeScale", "FixedSizeCrop"]
    scale = cfg.dataloader.train.mapper.augmentations[1]
    assert (scale.min_scale, scale.max_scale, scale.target_height) == (0.1, 2.0, 1024)
    sched = cfg.lr_multiplier.scheduler
    expected = [163889, 177546] if name != "h" else [163889 * 3 // 4, 177546 * 3 // 4]
    assert list(sched.milestones) == expected and sched.num_updates == s["max_iter"]
    assert cfg.lr_multiplier.warmup_length * 184375 == pytest.approx(250)


def test_tiny_protocol_is_the_demo_encoder_and_builds(one_thread):
    from detectron2.config import instantiate
    from detectron2.modeling import SimpleFeaturePyramid, ViT

    cfg = load_config("tiny")
    s = backbone_summary(cfg)
    assert (s["embed_dim"], s["depth"], s["num_heads"], s["patch_size"]) == (192, 6, 3, 8)
    assert s["global_blocks"] == [2, 5] and s["use_rel_pos"]
    model = instantiate(cfg.model)
    assert isinstance(model.backbone, SimpleFeaturePyramid) and isinstance(model.backbone.net, ViT)
    rel = [p for n, p in model.named_parameters() if ".rel_pos_" in n]
    assert rel and all(float(p.detach().abs().sum()) == 0 for p in rel)  # zero-initialised relative position
    assert model.backbone.net.pos_embed.shape[1] == 1 + (64 // 8) ** 2  # the pretraining grid, cls slot kept
    strides = {name: shape.stride for name, shape in model.backbone.output_shape().items()}
    assert strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32}  # ViT-B's p2..p5 (patch 8 at scales 2, 1, 0.5)


def test_set_max_iter_scales_schedule():
    cfg = load_config("b")
    set_max_iter(cfg, 1000)
    assert cfg.train.max_iter == 1000 and list(cfg.lr_multiplier.scheduler.milestones) == [888, 962]
    cfg = load_config("tiny")
    set_max_iter(cfg, 3)
    m = list(cfg.lr_multiplier.scheduler.milestones)
    assert m == sorted(set(m)) and m[-1] < cfg.lr_multiplier.scheduler.num_updates


def test_protocol_names():
    assert set(PROTOCOLS) == {"tiny", "vit-b", "vit-l", "vit-h"}
