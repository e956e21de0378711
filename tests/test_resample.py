"""Patch-size conversion (the published ViT-H MAE is patch 14, ViTDet-H patch 16) with timm's resampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models.vision_transformer import VisionTransformer

from benchmarks.cli import main
from mae_core.checkpoints import load_encoder_weights
from mae_core.formats import DECODER_PREFIXES, from_module, sniff
from mae_core.mae import MaskedAutoencoder
from mae_core.resample import resample_patch_size
from tests.test_checkpoint_formats import encoder_only, perturb

P14 = dict(img_size=224, patch_size=14, embed_dim=32, depth=1, num_heads=1, decoder_embed_dim=32, decoder_depth=1,
           decoder_num_heads=1)


@pytest.fixture(scope="module")
def p14():
    torch.manual_seed(0)
    return perturb(MaskedAutoencoder(**P14))


def test_maet_convert_p14_to_p16_with_timm_and_a_report(p14, tmp_path, capsys):
    src = tmp_path / "mae_pretrain_vit_tiny.pth"  # official encoder-only layout, as mae_pretrain_vit_huge.pth
    sd = encoder_only(p14.state_dict())
    torch.save({"model": sd}, src)
    assert main(["convert", str(src), "--to", "ours", "--out", str(tmp_path / "p16.pth"), "--patch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "patch 14 -> 16: patch_embed.proj.weight (32, 3, 14, 14) -> (32, 3, 16, 16)" in out
    assert "pos_embed (1, 257, 32) -> (1, 197, 32): grid 16x16 -> 14x14 (224 px)" in out

    info = sniff(tmp_path / "p16.pth")
    a = info.arch
    assert (a["patch_size"], a["grid"], a["img_size"]) == (16, 14, 224)
    assert info.meta["resampled"]["from_patch_size"] == 14 and len(info.meta["resampled"]["changes"]) == 2
    got = info.state_dict
    assert torch.equal(got["patch_embed.proj.weight"], resample_patch_embed(sd["patch_embed.proj.weight"], [16, 16]))
    assert torch.equal(got["pos_embed"], resample_abs_pos_embed(sd["pos_embed"], [14, 14], num_prefix_tokens=1))
    assert torch.equal(got["pos_embed"][:, 0], sd["pos_embed"][:, 0])  # the cls entry is kept
    for k in sd:
        if k not in ("patch_embed.proj.weight", "pos_embed"):
            assert torch.equal(got[k], sd[k]), k
    vit = VisionTransformer(img_size=224, patch_size=16, embed_dim=32, depth=1, num_heads=1, num_classes=0)
    report = load_encoder_weights(vit, tmp_path / "p16.pth")
    assert report["missing"] == [] and report["unexpected"] == [] and report["resized"] == []


def test_resampled_projection_sees_an_upsampled_patch_as_the_original_did(p14):
    """FlexiViT's property (independent of how it is computed): a 14-px patch resized to 16 px (bicubic,
    antialiased) projects with the new kernel exactly as the 14-px patch did with the old one."""
    info, _ = resample_patch_size(from_module(p14), 16)
    w14, w16 = p14.patch_embed.proj.weight.detach(), info.state_dict["patch_embed.proj.weight"]
    patches = torch.randn(8, 3, 14, 14, generator=torch.Generator().manual_seed(0))
    up = F.interpolate(patches, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(F.conv2d(up, w16, stride=16), F.conv2d(patches, w14, stride=14), atol=1e-4, rtol=1e-4)
    naive = F.interpolate(w14, size=(16, 16), mode="bicubic", align_corners=False)  # kernel interpolation is not it
    assert (F.conv2d(up, naive, stride=16) - F.conv2d(patches, w14, stride=14)).abs().max() > 1e-2


def test_the_decoder_is_dropped_and_said_so(p14, tmp_path, capsys):
    torch.save({"model": p14.state_dict()}, tmp_path / "full.pth")  # target unrecorded: no longer matters
    assert main(["convert", str(tmp_path / "full.pth"), "--to", "hf", "--out", str(tmp_path / "hf"),
                 "--patch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "dropped the decoder (" in out and "it predicts 14x14 patches" in out and "not recorded" not in out
    info = sniff(tmp_path / "hf")
    assert info.format == "hf-vitmae-model" and info.arch["patch_size"] == 16
    assert not any(k.startswith(DECODER_PREFIXES) for k in info.state_dict)


def test_bad_patch_size_is_a_clear_error(p14, tmp_path, capsys):
    torch.save({"model": encoder_only(p14.state_dict())}, tmp_path / "enc.pth")
    assert main(["convert", str(tmp_path / "enc.pth"), "--to", "ours", "--out", str(tmp_path / "o.pth"),
                 "--patch-size", "300"]) == 2  # larger than the image
    err = capsys.readouterr().err
    assert "maet convert: error: cannot resample" in err and "between 1 and 224" in err
