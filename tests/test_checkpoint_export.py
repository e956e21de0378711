"""The writers (ours, timm, Hugging Face) are lossless, and what they write loads in the other libraries;
`maet inspect` and `maet convert` on top of them. Models and helpers: test_checkpoint_formats.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file as load_safetensors
from timm.models.vision_transformer import VisionTransformer

from benchmarks.cli import main
from mae_core.checkpoints import build_mae_from_checkpoint
from mae_core.errors import CheckpointFormatError
from mae_core.export import export_hf, export_timm, save_ours
from mae_core.formats import from_module, sniff
from mae_core.mae import MaskedAutoencoder
from tests.test_checkpoint_formats import (
    ATOL,
    TINY,
    VIT,
    _hf_mae_config,
    _save_hf,
    assert_same_tensors,
    encoder_only,
    imgs,
    mae,
    mae_features,
    perturb,
    transformers,
)


# ----------------------------------------------------------------------------- writers: lossless round trips
def _full_info():
    return from_module(mae())


def _classifier_info():
    return from_module(perturb(VisionTransformer(**VIT, num_classes=6), seed=9))


@pytest.mark.parametrize("target", ["ours", "timm.safetensors", "timm.pth", "hf-pretraining", "hf-model",
                                    "hf-classification"])
def test_round_trip_is_lossless(tmp_path, target):
    info = _classifier_info() if target == "hf-classification" else _full_info()
    if target == "ours":
        out, expected = save_ours(info, tmp_path / "ours.pth"), info.state_dict
    elif target.startswith("timm"):
        out, expected = export_timm(info, tmp_path / f"w.{target.split('.')[1]}"), encoder_only(info.state_dict)
    else:
        kind = target.split("-")[1]
        out = export_hf(info, tmp_path / "hf", kind=kind)
        expected = encoder_only(info.state_dict) if kind == "model" else info.state_dict
    back = sniff(out)
    assert_same_tensors(back.state_dict, expected)
    assert back.arch["heads_guessed"] == (target == "timm.pth")  # a bare .pth has no room for the heads
    for k in ("embed_dim", "depth", "patch_size", "img_size", "num_classes", "has_head", "layer_norm_eps"):
        assert back.arch[k] == info.arch[k], k
    # and back again: the second trip writes the same tensors
    again = sniff(save_ours(back, tmp_path / "again.pth"))
    assert_same_tensors(again.state_dict, expected)


def test_ours_keeps_heads_and_eps(tmp_path):
    model = MaskedAutoencoder(**{**TINY, "num_heads": 4})  # not the 64-wide convention
    info = sniff(save_ours(model, tmp_path / "ours.pth"))
    assert info.format == "mae-transfer" and info.arch["num_heads"] == 4 and not info.arch["heads_guessed"]
    assert info.meta["format"] == "mae-transfer/1" and info.meta["model_kwargs"]["num_heads"] == 4
    raw = torch.load(tmp_path / "ours.pth", weights_only=True)  # DESIGN contract: plain, weights_only-loadable
    assert set(raw) == {"model", "meta"}
    # HF's eps (1e-12, not the official 1e-6) survives the conversion: the weights cannot say it, the meta does
    hf = transformers.ViTMAEModel(_hf_mae_config())
    back = sniff(save_ours(sniff(_save_hf(hf, tmp_path / "hf", "legacy")), tmp_path / "from_hf.pth"))
    assert (back.arch["layer_norm_eps"], back.arch["num_heads"], back.arch["heads_guessed"]) == (1e-12, 4, False)
    assert back.build_timm().blocks[0].norm1.eps == 1e-12


def test_timm_safetensors_keeps_heads_and_eps(tmp_path):
    """What the weights cannot say rides in the safetensors metadata, which timm ignores."""
    torch.manual_seed(0)
    hf = transformers.ViTMAEModel(_hf_mae_config())  # 4 heads (not our convention), eps 1e-12
    info = sniff(export_timm(sniff(_save_hf(hf, tmp_path / "hf", "legacy")), tmp_path / "w.safetensors"))
    assert (info.arch["num_heads"], info.arch["layer_norm_eps"], info.arch["heads_guessed"]) == (4, 1e-12, False)
    VisionTransformer(**VIT, num_classes=0).load_state_dict(
        load_safetensors(str(tmp_path / "w.safetensors")), strict=True)


def test_hf_export_loads_in_transformers_offline_with_same_outputs(tmp_path):
    source = mae(norm_pix_loss=True)
    folder = export_hf(source, tmp_path / "hf", mask_ratio=0.75)
    hf = transformers.ViTMAEForPreTraining.from_pretrained(folder, local_files_only=True).eval()
    x, noise = imgs(), torch.rand(2, 16, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ours, theirs = source(x, noise=noise), hf(pixel_values=x, noise=noise)
    assert torch.equal(ours.mask, theirs.mask)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=ATOL, rtol=0)

    encoder = export_hf(source, tmp_path / "enc", kind="model")
    hf_enc = transformers.ViTMAEModel.from_pretrained(encoder, local_files_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf_enc(pixel_values=x, noise=noise).last_hidden_state,
                                   source.forward_encoder(x, 0.75, noise)[0], atol=ATOL, rtol=0)


def test_hf_classification_export_loads_in_transformers(tmp_path):
    info = _classifier_info()
    folder = export_hf(info, tmp_path / "hf")  # kind picked from the contents
    hf = transformers.ViTForImageClassification.from_pretrained(folder, local_files_only=True).eval()
    vit = info.build_timm().eval()
    vit.load_state_dict(info.state_dict)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=imgs()).logits, vit(imgs()), atol=ATOL, rtol=0)


def test_hf_export_refuses_what_hf_cannot_hold(tmp_path):
    avg = from_module(perturb(VisionTransformer(**VIT, num_classes=6, global_pool="avg"), seed=9))
    with pytest.raises(CheckpointFormatError, match="fc_norm.*timm"):
        export_hf(avg, tmp_path / "a")
    with pytest.raises(CheckpointFormatError, match="no decoder.*kind='model'"):
        export_hf(encoder_only(mae().state_dict()), tmp_path / "b", kind="pretraining")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_export_loads_into_timm_create_model(tmp_path, suffix):
    import timm

    source = mae()
    path = export_timm(source, tmp_path / f"vit{suffix}")
    sd = load_safetensors(str(path)) if suffix == ".safetensors" else torch.load(path, weights_only=True)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **VIT).eval()
    vit.load_state_dict(sd, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(imgs()), mae_features(source, imgs()), atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- maet inspect / convert
def test_maet_inspect(tmp_path, capsys):
    torch.save({"model": mae().state_dict()}, tmp_path / "full.pth")
    assert main(["inspect", str(tmp_path / "full.pth")]) == 0
    out = capsys.readouterr().out
    assert "official-full" in out and "ViT (width 128, depth 2)/8 at 32 px, decoder 64x1, no head" in out
    assert "tensors:" in out and "sha256:" in out and "guessed" in out
    assert main(["inspect", "--json", str(tmp_path / "full.pth")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "official-full" and summary["architecture"]["decoder_depth"] == 1
    import hashlib

    assert list(summary["sha256"].values()) == [hashlib.sha256((tmp_path / "full.pth").read_bytes()).hexdigest()]


def test_maet_convert_each_way(tmp_path, capsys):
    src = tmp_path / "full.pth"
    torch.save({"model": mae().state_dict()}, src)
    assert main(["convert", str(src), "--to", "hf", "--out", str(tmp_path / "hf"), "--no-norm-pix-loss"]) == 0
    assert main(["convert", str(tmp_path / "hf"), "--to", "ours", "--out", str(tmp_path / "ours.pth")]) == 0
    assert main(["convert", str(tmp_path / "ours.pth"), "--to", "timm", "--out", str(tmp_path / "t.safetensors")]) == 0
    assert "VisionTransformer" in capsys.readouterr().out
    assert_same_tensors(sniff(tmp_path / "ours.pth").state_dict, sniff(src).state_dict)
    assert_same_tensors(sniff(tmp_path / "t.safetensors").state_dict, encoder_only(sniff(src).state_dict))
    model, report = build_mae_from_checkpoint(tmp_path / "hf")  # the rest of the suite reads every format
    assert report["format"] == "hf-vitmae-pretraining" and report["missing"] == []


def test_maet_convert_errors(tmp_path, capsys):
    torch.save({"model": mae().state_dict()}, tmp_path / "full.pth")
    assert main(["convert", str(tmp_path / "full.pth"), "--to", "ours", "--out", str(tmp_path / "o.pth"),
                 "--arch", "mae_vit_base_patch16"]) == 2
    err = capsys.readouterr().err
    assert "maet convert: error:" in err and "ViT-B" in err and "Traceback" not in err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert main(["inspect", str(tmp_path / "junk.pth")]) == 2
    assert "Known formats" in capsys.readouterr().err
