"""ADE20K segmentation with mmseg (in-process, fast): configs, weight conversion, mIoU plumbing, bad input."""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("mmseg")

from mae_core.checkpoints import LoadReport, save_mae_checkpoint  # noqa: E402
from mae_core.ckpt_io import sha256_file  # noqa: E402
from mae_core.data import write_synthetic  # noqa: E402
from mae_core.errors import ArchitectureMismatchError, CheckpointFormatError, DatasetLayoutError  # noqa: E402
from mae_core.mae import create_mae  # noqa: E402
from mae_core.vit import resize_pos_embed  # noqa: E402
from transfer.encoder_init import read_encoder  # noqa: E402
from transfer.segmentation import config, engine, resume  # noqa: E402
from transfer.segmentation.data import LabelRangeError, check_ade20k  # noqa: E402
from transfer.segmentation.weights import (  # noqa: E402
    check_arch,
    convert_for_backbone,
    resize_rel_pos_bias,
    unexpected_new,
)

SMALL = dict(patch_size=8, embed_dim=64, depth=4, num_heads=4, decoder_embed_dim=32, decoder_depth=1,
             decoder_num_heads=4)


def small_mae(img_size=32, seed=0):
    """A small MAE whose every tensor is random (biases, norms, cls token included), so a lost one shows."""
    torch.manual_seed(seed)
    model = create_mae("mae_vit_tiny_patch16", img_size=img_size, **SMALL)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def mmseg_backbone(img_size=32, out_indices=(0, 1, 2, 3)):
    from mmseg.registry import MODELS

    cfg = config.load_config("tiny").model.backbone
    cfg.update(img_size=(img_size, img_size), embed_dims=64, num_layers=4, num_heads=4, out_indices=list(out_indices),
               drop_path_rate=0.0)
    backbone = MODELS.build(cfg)
    backbone.init_weights()
    backbone.eval()  # (BEiT.train returns None)
    return backbone


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    write_synthetic(root, seed=0, num_train=8, num_val=8, img_size=32, layouts=("ade20k",))
    return root / "ade20k" / "ADEChallengeData2016"


# ----------------------------------------------------------------------------- configs
def test_published_protocol_in_the_built_config(ade_root, tmp_path):
    cfg = engine.prepare("vit-b", data_root=ade_root, work_dir=tmp_path, num_classes=150, check_labels=False).cfg
    m = cfg.model
    assert m.type == "EncoderDecoder" and m.pretrained is None  # weights only through our converter
    b = m.backbone
    assert (b.type, b.img_size, b.patch_size, b.embed_dims, b.num_layers, b.num_heads) == \
        ("MAE", (512, 512), 16, 768, 12, 12)
    assert list(b.out_indices) == [3, 5, 7, 11] and b.init_values == 1.0
    assert m.neck.type == "Feature2Pyramid" and list(m.neck.rescales) == [4, 2, 1, 0.5]
    assert m.decode_head.type == "UPerHead" and m.auxiliary_head.type == "FCNHead"
    assert m.decode_head.num_classes == m.auxiliary_head.num_classes == 150
    assert m.test_cfg.mode == "slide" and tuple(m.test_cfg.crop_size) == (512, 512)
    assert tuple(m.test_cfg.stride) == (341, 341)
    ow = cfg.optim_wrapper
    assert ow.constructor == "LayerDecayOptimizerConstructor" and ow.paramwise_cfg.layer_decay_rate == 0.65
    assert ow.paramwise_cfg.num_layers == 12
    assert (ow.optimizer.type, ow.optimizer.lr, ow.optimizer.weight_decay) == ("AdamW", 1e-4, 0.05)
    assert cfg.train_cfg.max_iters == 160000
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16
    crop = next(t for t in cfg.train_dataloader.dataset.pipeline if t.type == "RandomCrop")
    assert tuple(crop.crop_size) == (512, 512) and tuple(m.data_preprocessor.size) == (512, 512)
    assert cfg.train_dataloader.dataset.type == "ADE20KDataset"  # mmseg's own, with ADE's 150 names
    assert cfg.val_evaluator.type == "IoUMetric"
    assert cfg.train_dataloader.dataset.data_root == str(ade_root)


def test_large_and_tiny_protocols_share_the_code_path(tmp_path):
    base, large, tiny = (config.load_config(n) for n in ("vit-b", "vit-l", "tiny"))
    for cfg in (large, tiny):
        for part in ("backbone", "neck", "decode_head", "auxiliary_head"):
            assert cfg.model[part].type == base.model[part].type
        assert cfg.optim_wrapper.constructor == base.optim_wrapper.constructor
        assert cfg.model.test_cfg.mode == "slide"
    assert (large.model.backbone.embed_dims, large.model.backbone.num_layers) == (1024, 24)
    assert list(large.model.backbone.out_indices) == [7, 11, 15, 23]
    b = tiny.model.backbone  # the demo's pretrained MAE: width 192, depth 6, 3 heads, patch 8, 64 px
    assert (b.embed_dims, b.num_layers, b.num_heads, b.patch_size, tuple(b.img_size)) == (192, 6, 3, 8, (64, 64))
    assert list(b.out_indices) == [1, 2, 3, 5] and tiny.optim_wrapper.paramwise_cfg.num_layers == 6
    published_strides = [base.model.backbone.patch_size / r for r in base.model.neck.rescales]
    assert [b.patch_size / r for r in tiny.model.neck.rescales] == published_strides == [4, 8, 16, 32]


def test_layer_decay_reaches_the_optimizer(ade_root, tmp_path):
    """Built from the tiny config: patch embedding at lr * 0.65^(depth+1), last block at lr * 0.65, heads at lr."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    cfg = engine.prepare("tiny", data_root=ade_root, work_dir=tmp_path).cfg
    init_default_scope("mmseg")  # as the Runner does: mmseg's constructor names resolve in its registries
    model = MODELS.build(cfg.model)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    lr = {name: g["lr"] for g in optim.optimizer.param_groups for name in g["param_names"]}
    base = cfg.optim_wrapper.optimizer.lr
    assert lr["backbone.patch_embed.projection.weight"] == pytest.approx(base * 0.65 ** 7)
    assert lr["backbone.layers.5.attn.qkv.weight"] == pytest.approx(base * 0.65)
    assert lr["decode_head.conv_seg.weight"] == pytest.approx(base)


def test_max_iters_rescales_the_schedule(tmp_path):
    cfg = config.load_config("tiny")
    config.set_max_iters(cfg, 60)
    warm, poly = cfg.param_scheduler
    assert (warm.begin, warm.end, poly.begin, poly.end) == (0, 5, 5, 60)
    assert cfg.train_cfg.max_iters == 60 and cfg.train_cfg.val_interval <= 60


# ----------------------------------------------------------------------------- weights
def test_every_encoder_tensor_arrives_and_features_equal_ours():
    mae = small_mae().eval()
    official = {k: v for k, v in mae.state_dict().items()}
    init_encoder = {k: v for k, v in official.items() if not k.startswith(("decoder_", "mask_token"))}
    backbone = mmseg_backbone()
    target = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    sd, report = convert_for_backbone(init_encoder, target, not_encoder=["mask_token"], window=backbone.patch_shape)

    assert list(report.unused) == ["mask_token", "norm.bias", "norm.weight"]  # final norm: features come from inside
    assert all(report.unused.values()) and not unexpected_new(report) and not report.resized
    assert {k.rsplit(".", 1)[-1] for k in report.new} == {"gamma_1", "gamma_2", "relative_position_bias_table"}
    assert len(report.loaded) == len(init_encoder) - 2
    missing, unexpected = backbone.load_state_dict({k[len("backbone."):]: v for k, v in sd.items()}, strict=False)
    assert not unexpected and all(k.endswith(("gamma_1", "gamma_2", "relative_position_bias_table",
                                              "relative_position_index")) for k in missing)
    loaded = backbone.state_dict()
    renames = {"blocks.2.norm1.weight": "layers.2.ln1.weight",
               "blocks.3.mlp.fc1.bias": "layers.3.ffn.layers.0.0.bias",
               "blocks.0.mlp.fc2.weight": "layers.0.ffn.layers.1.weight",
               "blocks.1.attn.qkv.bias": "layers.1.attn.qkv.bias",
               "patch_embed.proj.weight": "patch_embed.projection.weight", "cls_token": "cls_token"}
    for ours, theirs in renames.items():
        assert torch.equal(loaded[theirs], official[ours]), ours
    assert all(torch.equal(sd[k], loaded[k[len("backbone."):]]) for k in sd)

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = backbone(x)
        tokens = mae.patch_embed(x)
        tokens = torch.cat([mae.cls_token.expand(2, -1, -1), tokens], 1) + mae.pos_embed
        ours = []
        for blk in mae.blocks:
            tokens = blk(tokens)
            ours.append(tokens[:, 1:].reshape(2, 4, 4, -1).permute(0, 3, 1, 2))
    assert len(feats) == 4
    for a, b in zip(feats, ours, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_read_encoder_checkpoint_resized_to_a_larger_crop(tmp_path):
    mae = small_mae(img_size=32)
    path = save_mae_checkpoint(tmp_path / "mae.pth", mae, {"model_kwargs": {"img_size": 32, **SMALL}})
    init = read_encoder(path)
    backbone = mmseg_backbone(img_size=64)
    target = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    sd, report = convert_for_backbone(init.state_dict, target, init.not_encoder, window=backbone.patch_shape,
                                      init=init.name, sha256=init.sha256, notes=init.notes)
    assert report.resized == {"backbone.pos_embed": [[1, 17, 64], [1, 65, 64]]}
    torch.testing.assert_close(sd["backbone.pos_embed"], resize_pos_embed(mae.pos_embed.detach(), (8, 8)))
    # the report shared with detection, written the same way: names in, names out, a reason for each unused
    assert isinstance(report, LoadReport)
    written = json.loads(report.write(tmp_path / "run").read_text())
    assert written == {"init": "mae.pth", "sha256": sha256_file(path), "loaded": report.loaded, "new": report.new,
                       "unused": report.unused, "resized": report.resized, "notes": []}
    assert written["loaded"]["blocks.3.mlp.fc1.bias"] == "backbone.layers.3.ffn.layers.0.0.bias"
    assert {"mask_token", "decoder_embed.weight", "norm.weight"} <= set(written["unused"])
    assert "backbone.layers.*.gamma_1 (4)" in report.summary()
    assert any(k.startswith("decoder_") for k in report.unused)  # the decoder is named, not dropped silently


def test_relative_position_bias_resize():
    table = torch.randn(7 * 7 + 3, 2)
    assert resize_rel_pos_bias(table, (4, 4)) is table
    big = resize_rel_pos_bias(table, (8, 8))
    assert big.shape == (15 * 15 + 3, 2)
    assert torch.equal(big[-3:], table[-3:])  # cls entries kept apart
    const = resize_rel_pos_bias(torch.ones(7 * 7 + 3, 2), (8, 8))
    torch.testing.assert_close(const, torch.ones_like(const))
    # each head on its own: row i * 7 + j of the table is offset (i, j) of the head's 7x7 grid
    for h in range(2):
        grid = torch.tensor([[table[i * 7 + j, h].item() for j in range(7)] for i in range(7)])
        alone = torch.nn.functional.interpolate(grid[None, None], size=(15, 15), mode="bicubic", align_corners=False)
        torch.testing.assert_close(big[:-3, h], alone.flatten())
    backbone = mmseg_backbone(img_size=64)  # the table of an mmseg checkpoint at 32 px arrives resized
    target = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    sd, report = convert_for_backbone({"blocks.0.attn.relative_position_bias_table": torch.randn(7 * 7 + 3, 4)},
                                      target, window=backbone.patch_shape)
    assert sd["backbone.layers.0.attn.relative_position_bias_table"].shape == (15 * 15 + 3, 4)
    assert "backbone.layers.0.attn.relative_position_bias_table" in report.resized


def test_another_vit_size_is_a_clear_error():
    with pytest.raises(ArchitectureMismatchError, match="embed_dim=64 vs embed_dims=192"):
        check_arch({"embed_dim": 64, "depth": 4, "num_heads": 4, "patch_size": 8, "mlp_ratio": 4.0},
                   config.load_config("tiny").model.backbone)
    backbone = mmseg_backbone()
    target = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    with pytest.raises(ArchitectureMismatchError, match="blocks.0.mlp.fc1.weight"):
        convert_for_backbone({"blocks.0.mlp.fc1.weight": torch.zeros(128, 64)}, target)


# ----------------------------------------------------------------------------- mIoU plumbing
def _numpy_metrics(preds, gts, num_classes, ignore=255):
    inter, pred_area, gt_area = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    for p, g in zip(preds, gts, strict=True):
        valid = g != ignore
        for c in range(num_classes):
            inter[c] += np.sum((p == c) & (g == c) & valid)
            pred_area[c] += np.sum((p == c) & valid)
            gt_area[c] += np.sum(g == c)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (pred_area + gt_area - inter)
        acc = inter / gt_area
    return {"aAcc": 100 * inter.sum() / gt_area.sum(), "mIoU": 100 * np.nanmean(iou), "mAcc": 100 * np.nanmean(acc)}


def test_iou_metric_matches_numpy_on_a_hand_made_case(tmp_path):
    """ADE-convention PNGs through mmseg's own loading (reduce_zero_label) and IoUMetric vs plain numpy."""
    from mmseg.datasets.transforms import LoadAnnotations
    from mmseg.evaluation import IoUMetric

    raw = [np.array([[0, 1, 1, 2], [1, 1, 2, 2], [3, 3, 2, 0], [3, 3, 3, 1]], dtype=np.uint8),
           np.array([[1, 1, 1, 1], [2, 2, 1, 1], [2, 2, 0, 0], [1, 1, 1, 1]], dtype=np.uint8)]
    preds = [np.array([[1, 0, 0, 1], [0, 0, 1, 1], [2, 2, 2, 0], [2, 1, 2, 0]]),
             np.array([[0, 0, 0, 3], [1, 1, 0, 0], [1, 0, 3, 3], [0, 0, 0, 3]])]  # class 3: predicted, never true
    classes = ("background", "a", "b", "c")
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = dict(classes=classes, label_map=dict(), reduce_zero_label=True)
    gts = []
    for i, (lab, pred) in enumerate(zip(raw, preds, strict=True)):
        Image.fromarray(lab).save(tmp_path / f"{i}.png")
        loaded = LoadAnnotations(reduce_zero_label=True)(
            dict(seg_map_path=str(tmp_path / f"{i}.png"), reduce_zero_label=True, seg_fields=[]))
        gt = loaded["gt_seg_map"]
        assert gt[0, 0] == (255 if lab[0, 0] == 0 else lab[0, 0] - 1)
        gts.append(gt)
        metric.process({}, [{"pred_sem_seg": {"data": torch.from_numpy(pred)[None]},
                             "gt_sem_seg": {"data": torch.from_numpy(gt.astype(np.int64))[None]}}])
    ours = metric.compute_metrics(metric.results)
    expected = _numpy_metrics(preds, gts, len(classes))
    assert 0 < expected["mIoU"] < 100
    for key in ("aAcc", "mIoU", "mAcc"):
        assert ours[key] == pytest.approx(expected[key], abs=0.006), key  # mmseg rounds to 2 decimals
    assert engine._summary_metrics({**ours, "extra": 1}) == {k: round(float(ours[k]), 4) for k in expected}


# ----------------------------------------------------------------------------- bad input, safe loading
def test_wrong_layout_missing_annotation_and_label_range(tmp_path):
    with pytest.raises(DatasetLayoutError, match="not in ADE20K's layout"):
        check_ade20k(tmp_path)
    write_synthetic(tmp_path / "d", seed=0, num_train=8, num_val=8, img_size=32, layouts=("ade20k",))
    root = tmp_path / "d" / "ade20k"
    assert check_ade20k(root, num_classes=7) == {"root": root / "ADEChallengeData2016", "training": 8,
                                                  "validation": 8}
    with pytest.raises(LabelRangeError, match=r"label values \[6, 7\].*5 classes.*--num-classes 7"):
        check_ade20k(root, num_classes=5)
    ann = root / "ADEChallengeData2016" / "annotations" / "validation"
    first = sorted(ann.iterdir())[0]
    first.unlink()
    with pytest.raises(DatasetLayoutError, match=f"1 of 8 images .* {first.stem}.jpg needs {first.name}"):
        check_ade20k(root, num_classes=7)
    Image.new("RGB", (32, 32)).save(first)
    with pytest.raises(LabelRangeError, match="3 channels"):
        check_ade20k(root, num_classes=7)


def test_ade20k_sparse_labels_at_varied_sizes(tmp_path):
    """ADE20K's own quirks: labels 1..150 of which each image uses a few, images of varied non-square sizes.

    The layout check accepts them, and the published protocol's mmseg dataset reads them: validation labels at
    each image's own size, reduced by one (0 -> 255), as mmseg's `reduce_zero_label` does.
    """
    from mmseg.registry import DATASETS

    root = tmp_path / "ADEChallengeData2016"
    sizes = {"training": [(37, 53), (64, 41)], "validation": [(45, 70), (50, 33)]}  # (h, w)
    labels = {}
    for split, shapes in sizes.items():
        for k, (h, w) in enumerate(shapes):
            stem = f"ADE_{'train' if split == 'training' else 'val'}_{k + 1:08d}"
            lab = np.zeros((h, w), np.uint8)  # 0 = "other", ignored
            lab[2:, : w // 2] = 37 + k
            lab[2:, w // 2 :] = 150
            lab[h // 2 :, :4] = 1
            labels[split, k] = lab
            for folder, array, suffix in (("images", np.full((h, w, 3), 90 + 40 * k, np.uint8), ".jpg"),
                                          ("annotations", lab, ".png")):
                (root / folder / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / folder / split / f"{stem}{suffix}")
    assert check_ade20k(tmp_path, num_classes=150) == {"root": root, "training": 2, "validation": 2}
    with pytest.raises(LabelRangeError, match=r"label values \[150\]"):
        check_ade20k(tmp_path, num_classes=149)

    cfg = engine.prepare("vit-b", data_root=tmp_path, work_dir=tmp_path / "work").cfg
    val = DATASETS.build(cfg.val_dataloader.dataset)
    for k, size in enumerate(sizes["validation"]):
        gt = val[k]["data_samples"].gt_sem_seg.data[0].numpy()
        assert gt.shape == size  # each image's own size
        np.testing.assert_array_equal(gt, np.where(labels["validation", k] == 0, 255, labels["validation", k] - 1))
    train = DATASETS.build(cfg.train_dataloader.dataset)
    for k in range(2):
        sample = train[k]
        gt = sample["data_samples"].gt_sem_seg.data
        assert set(np.unique(gt.numpy())) <= {0, 36 + k, 149, 255}
        assert gt.shape[1:] == sample["inputs"].shape[1:] and max(gt.shape[1:]) <= 512  # 512x512 crops at most


def test_the_check_sees_the_images_mmseg_reads_and_refuses_labels_of_another_size(tmp_path, caplog):
    """Found by a review: a label of another size than its image (or an image turned by its EXIF tag) trained
    silently or crashed in mmseg's IoUMetric after training; macOS `._*` files crashed the label check; the check
    counted `.JPG` files mmseg never reads and missed images in sub-folders, which mmseg does read."""
    from mmseg.registry import DATASETS

    write_synthetic(tmp_path / "d", seed=0, num_train=6, num_val=6, img_size=32, layouts=("ade20k",))
    root = tmp_path / "d" / "ade20k" / "ADEChallengeData2016"
    images, anns = root / "images" / "validation", root / "annotations" / "validation"
    first = sorted(images.iterdir())[0]
    (images / f"._{first.name}").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble: hidden, read by neither
    (anns / f"._{first.stem}.png").write_bytes(b"\x00\x05\x16\x07")
    (images / "sub").mkdir()  # mmseg lists sub-folders
    (images / "sub" / first.name).write_bytes(first.read_bytes())
    (anns / "sub").mkdir()
    (anns / "sub" / f"{first.stem}.png").write_bytes((anns / f"{first.stem}.png").read_bytes())
    second = sorted(images.glob("ADE_*.jpg"))[1]
    second.rename(second.with_suffix(".JPG"))  # mmseg reads *.jpg, case as written
    with caplog.at_level("WARNING"):
        counts = check_ade20k(root, num_classes=7)
    assert "1 image file(s)" in caplog.text and second.with_suffix(".JPG").name in caplog.text
    cfg = engine.prepare("vit-b", data_root=root, work_dir=tmp_path / "work", num_classes=7).cfg
    assert counts["validation"] == len(DATASETS.build(cfg.val_dataloader.dataset)) == 6  # 6 - .JPG + sub/

    label = anns / f"{first.stem}.png"
    w, h = Image.open(first).size
    Image.open(label).resize((2 * w, h), Image.NEAREST).save(label)  # twice as wide as its image
    with pytest.raises(DatasetLayoutError, match=f"1 of 6 labels .* {label.name} is {2 * w}x{h}, {first.name} {w}x{h}"):
        check_ade20k(root, num_classes=7)
    Image.open(label).resize((w, h), Image.NEAREST).save(label)
    check_ade20k(root, num_classes=7)
    img = Image.open(first).convert("RGB").resize((w, h // 2))  # stored w x h/2, tagged "rotate 90"
    Image.open(label).resize((w, h // 2), Image.NEAREST).save(label)  # the label of the stored pixels
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(first, exif=exif)
    with pytest.raises(DatasetLayoutError, match=f"{label.name} is {w}x{h // 2}, {first.name} {h // 2}x{w} as decoded"):
        check_ade20k(root, num_classes=7)


def test_eval_reads_only_tensor_files_and_resume_only_its_own_work_dir(tmp_path):
    torch.save({"state_dict": {"x": torch.zeros(1)}, "meta": types.SimpleNamespace(a=1)}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointFormatError, match="segmentor.pth"):
        engine.read_segmentor(tmp_path / "pickled.pth")
    torch.save({"state_dict": {"backbone.x": torch.zeros(1)}}, tmp_path / "backbone_only.pth")
    with pytest.raises(CheckpointFormatError, match="not a segmentation model"):
        engine.read_segmentor(tmp_path / "backbone_only.pth")

    from mmseg.registry import RUNNERS

    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointFormatError, match="only checkpoints this run wrote"):
        RUNNERS.get("SegRunner").resume(types.SimpleNamespace(work_dir=str(tmp_path / "run")),
                                        str(tmp_path / "pickled.pth"))
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    with resume.trusted_pickle_load():
        assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ  # scoped to the one call


def test_importing_the_engine_registers_our_components_as_mmengine_modules_do():
    """No register() call, no force=True: a fresh process that imports the engine builds every component the
    configs name by type (a second registration under the same name would raise, as for any mmengine module)."""
    import subprocess
    import sys

    code = ("import transfer.segmentation.engine\n"
            "from mmengine.registry import MODEL_WRAPPERS\n"
            "from mmseg.registry import HOOKS, RUNNERS\n"
            "hooks = [HOOKS.build(dict(type=t)) for t in ('StepSeedHook', 'MetricsHistoryHook')]\n"
            "print([type(h).__module__ for h in hooks], MODEL_WRAPPERS.get('CPUDistributedDataParallel').__module__,\n"
            "      RUNNERS.get('SegRunner').__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["['transfer.segmentation.resume',", "'transfer.segmentation.hooks']",
                                  "transfer.segmentation.hooks", "transfer.segmentation.resume"]
