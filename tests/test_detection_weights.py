"""`--init` into ViTDet: every encoder tensor arrives (or is reported unused, by name, with a reason)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402

from mae_core.checkpoints import LoadReport, save_mae_checkpoint  # noqa: E402
from mae_core.ckpt_io import sha256_file  # noqa: E402
from mae_core.errors import ArchitectureMismatchError  # noqa: E402
from mae_core.export import export_hf, export_timm  # noqa: E402
from mae_core.mae import MaskedAutoencoder, create_mae  # noqa: E402
from transfer.detection.config import load_config  # noqa: E402
from transfer.detection.weights import check_architecture, load_encoder, pretrain_img_size  # noqa: E402
from transfer.encoder_init import read_encoder  # noqa: E402

# The tests' small ViT (conftest.TINY_MODEL's encoder), pretrained at 32 px: 4x4 grid.
TEST_ARCH = ["model.backbone.net.embed_dim=64", "model.backbone.net.depth=2", "model.backbone.net.num_heads=4",
             "model.backbone.net.window_block_indexes=[0]"]
ENCODER_IN_MODEL = ("pos_embed", "patch_embed.", "blocks.")


@pytest.fixture(scope="module")
def mae_file(tmp_path_factory):
    return tiny_mae_checkpoint(tmp_path_factory.mktemp("det_w") / "mae.pth")


def p14_encoder_file(path):
    """The official encoder-only layout (as mae_pretrain_vit_huge.pth) of the tests' ViT at patch 14, 56 px (4x4)."""
    torch.manual_seed(0)
    model = MaskedAutoencoder(img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32,
                              decoder_depth=1, decoder_num_heads=4)
    torch.save({"model": {k: v for k, v in model.state_dict().items() if not k.startswith(("mask_token", "decoder"))}},
               path)
    return path


def tiny_mae_checkpoint(path):
    """A small MAE in our format, with the meta `maet pretrain` writes (so the heads are known)."""
    torch.manual_seed(0)
    kwargs = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32,
                  decoder_depth=1, decoder_num_heads=4)
    model = create_mae("mae_vit_tiny_patch16", **kwargs)
    meta = {"format": "mae-transfer/1", "arch": "mae_vit_tiny_patch16", "model_kwargs": kwargs, "img_size": 32,
            "patch_size": 8, "norm_pix_loss": True, "epoch": 0}
    return save_mae_checkpoint(path, model, meta)


def _model_for(enc, overrides=TEST_ARCH):
    from detectron2.config import instantiate

    cfg = load_config("tiny", overrides)
    check_architecture(enc, cfg.model.backbone.net)
    if not enc.is_scratch:
        cfg.model.backbone.net.pretrain_img_size = pretrain_img_size(enc)
    return instantiate(cfg.model)


def _check_every_tensor_arrives(enc, model, report):
    sd = model.state_dict()
    for key, tensor in enc.state_dict.items():
        if key.startswith(ENCODER_IN_MODEL):
            assert torch.equal(sd["backbone.net." + key], tensor), key
            assert report.loaded[key] == "backbone.net." + key
        else:
            assert key in report.unused and report.unused[key], key
    assert set(report.loaded) | set(report.unused) == set(enc.state_dict) | set(enc.not_encoder)
    new = set(report.new)
    assert new == {k for k in sd if k not in set(report.loaded.values())}
    assert {k for k in new if k.startswith("backbone.net.")} == {k for k in sd if ".rel_pos_" in k}
    assert any(k.startswith("backbone.simfp_") for k in new) and any(k.startswith("roi_heads.") for k in new)


def test_mae_checkpoint_every_encoder_tensor_arrives(mae_file, one_thread, tmp_path):
    enc = read_encoder(mae_file)
    model = _model_for(enc)
    report = load_encoder(model, enc)
    _check_every_tensor_arrives(enc, model, report)
    assert set(k for k in report.unused if k in enc.state_dict) == {"cls_token", "norm.weight", "norm.bias"}
    assert {k for k in report.unused if k.startswith("decoder")} and "mask_token" in report.unused
    assert pretrain_img_size(enc) == 32 and report.sha256 == enc.sha256
    # the pretraining grid (4x4 + cls) is kept and resized by detectron2's ViT to the input's grid
    assert model.backbone.net.pos_embed.shape == (1, 17, 64)
    model.eval()
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 128, 128))
    assert feats["p3"].shape[-2:] == (16, 16)
    assert f"{len(report.loaded)} encoder tensors loaded" in report.summary()
    # the report shared with segmentation, written the same way
    assert isinstance(report, LoadReport)
    written = json.loads(report.write(tmp_path).read_text())
    assert written == {"init": "mae.pth", "sha256": sha256_file(mae_file), "loaded": report.loaded,
                       "new": report.new, "unused": report.unused, "resized": {}, "notes": []}
    assert written["loaded"]["blocks.1.attn.qkv.weight"] == "backbone.net.blocks.1.attn.qkv.weight"
    assert "backbone.net.blocks.*.attn.rel_pos_h (2)" in report.summary()


@pytest.mark.parametrize("fmt", ["timm", "hf"])
def test_other_formats_arrive_too(mae_file, tmp_path, fmt, one_thread):
    src = export_timm(mae_file, tmp_path / "enc.safetensors") if fmt == "timm" else export_hf(mae_file, tmp_path / "hf")
    enc, ours = read_encoder(src), read_encoder(mae_file)
    model = _model_for(enc)
    report = load_encoder(model, enc)
    _check_every_tensor_arrives(enc, model, report)
    sd = model.state_dict()
    for key in report.loaded:  # the same numbers as our own file
        assert torch.allclose(sd["backbone.net." + key], ours.state_dict[key], atol=1e-6), key


def test_scratch_loads_nothing(one_thread):
    enc = read_encoder("scratch")
    model = _model_for(enc)
    report = load_encoder(model, enc)
    assert not report.loaded and set(report.new) == set(model.state_dict())


def test_architecture_mismatch_is_a_clear_error(mae_file):
    enc = read_encoder(mae_file)
    cfg = load_config("tiny")  # width 192, depth 6: not the 64 x 2 checkpoint
    with pytest.raises(ArchitectureMismatchError, match="embed_dim 64 in the checkpoint vs 192"):
        check_architecture(enc, cfg.model.backbone.net)


def test_supervised_classifier_encoder_arrives(tmp_path, one_thread):
    """A fine-tuned classifier (official layout: fc_norm + head, no final norm) as --init."""
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=6,
                            global_pool="avg", fc_norm=True)
    path = tmp_path / "finetuned.pth"
    torch.save({"model": vit.state_dict()}, path)
    enc = read_encoder(path)
    model = _model_for(enc)
    report = load_encoder(model, enc)
    _check_every_tensor_arrives(enc, model, report)
    assert {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"} <= set(report.unused)


def test_p14_encoder_is_resampled_into_the_backbone_patch(tmp_path, one_thread):
    """ViT-H MAE (patch 14) into ViTDet-H (patch 16), at test scale: a patch-14 file into the tiny patch-8 backbone."""
    from timm.layers import resample_patch_embed

    path = p14_encoder_file(tmp_path / "mae_pretrain_p14.pth")
    with pytest.raises(ArchitectureMismatchError, match="patch_size 14 in the checkpoint vs 8"):
        _model_for(read_encoder(path))  # read as it is, the file does not fit
    enc = read_encoder(path, patch_size=8)
    assert enc.arch["patch_size"] == 8 and pretrain_img_size(enc) == 56  # grid 4 at patch 14 -> 7 at patch 8
    model = _model_for(enc)
    report = load_encoder(model, enc)
    _check_every_tensor_arrives(enc, model, report)
    original = torch.load(path, weights_only=True)["model"]["patch_embed.proj.weight"]
    assert torch.equal(model.state_dict()["backbone.net.patch_embed.proj.weight"],
                       resample_patch_embed(original, [8, 8]))
    assert report.to_dict()["notes"] == report.notes
    assert report.notes[0].startswith("mae_pretrain_p14.pth is patch 14, the backbone patch 8: resampled")
    assert any(n.startswith("patch_embed.proj.weight (64, 3, 14, 14) -> (64, 3, 8, 8)") for n in report.notes)
    assert "note: mae_pretrain_p14.pth is patch 14" in report.summary()
