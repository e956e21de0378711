"""Every checkpoint format users bring: sniffed by content, every tensor where it belongs.

Files are written by the formats' own libraries (timm's `VisionTransformer` + torch.save /
safetensors / `save_for_hf`, transformers' `save_pretrained`) or in their exact key layouts, from
tiny random models. "Every tensor where it belongs" is checked by features: the model that read the
file and the model that wrote it give the same outputs on the same input. Every weight is perturbed
first (init leaves biases at zero and norms at one, which would hide swapped or missing tensors).
The writers (ours, timm, Hugging Face) and `maet inspect / convert` are in test_checkpoint_export.py.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from mae_core.checkpoints import load_encoder_weights
from mae_core.errors import ArchitectureMismatchError, CheckpointFormatError
from mae_core.export import export_hf, export_timm, save_ours
from mae_core.formats import DECODER_PREFIXES, FORMATS, apply_preset, sniff
from mae_core.mae import MaskedAutoencoder
from mae_core.vit import resize_pos_embed

transformers = pytest.importorskip("transformers")

# 128 wide with 2 heads: the official convention (64-wide heads), so guessed heads are right
TINY = dict(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2, decoder_embed_dim=64,
            decoder_depth=1, decoder_num_heads=2)
VIT = dict(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2)
ATOL = 1e-5


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for t in model.state_dict().values():
        t.add_(scale * torch.randn(t.shape, generator=g))
    return model.eval()


def mae(**kw) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return perturb(MaskedAutoencoder(**{**TINY, **kw}))


def timm_vit(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    return perturb(VisionTransformer(**{**VIT, "num_classes": 0, **kw}), seed=2)


def imgs(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def mae_features(model: MaskedAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """All tokens in patch order: mask_ratio 0 with increasing noise keeps every patch where it was."""
    noise = torch.arange(model.patch_embed.num_patches, dtype=torch.float).expand(x.shape[0], -1)
    return model.forward_encoder(x, 0.0, noise)[0]


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def encoder_only(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if not k.startswith(DECODER_PREFIXES)}


# ----------------------------------------------------------------------------- official MAE files
@pytest.mark.parametrize("layout,expected", [
    ("pretrain", "official-pretrain"), ("full", "official-full"), ("finetuned", "official-finetuned"),
    ("bare-full", "official-full")])
def test_official_files_are_named_and_measured(tmp_path, layout, expected):
    source = mae()
    sd = {"pretrain": encoder_only, "full": dict, "bare-full": dict}.get(layout, encoder_only)(source.state_dict())
    if layout == "finetuned":  # official fine-tuned: fc_norm + head, no norm
        sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}
        sd.update({"fc_norm.weight": torch.rand(128), "fc_norm.bias": torch.rand(128),
                   "head.weight": torch.rand(10, 128), "head.bias": torch.rand(10)})
    path = tmp_path / "weights.pth"  # the name says nothing: the content decides
    torch.save(sd if layout == "bare-full" else {"model": sd}, path)

    info = sniff(path)
    assert info.format == expected
    a = info.arch
    assert (a["embed_dim"], a["depth"], a["num_heads"], a["patch_size"], a["img_size"], a["grid"]) == \
        (128, 2, 2, 8, 32, 4)
    assert a["heads_guessed"] and any("guessed" in n for n in info.notes)
    assert a["has_decoder"] == (layout in ("full", "bare-full"))
    assert a["has_head"] == (layout == "finetuned") and a["num_classes"] == (10 if layout == "finetuned" else 0)
    assert (a["fc_norm"], a["global_pool"]) == ((True, "avg") if layout == "finetuned" else (False, "token"))
    if a["has_decoder"]:
        assert (a["decoder_embed_dim"], a["decoder_depth"], a["decoder_num_heads"]) == (64, 1, 2)
        assert info.describe() == "ViT (width 128, depth 2)/8 at 32 px, decoder 64x1, no head"
    assert_same_tensors(info.state_dict, sd)


def test_official_pretrain_into_timm_vit_same_features(tmp_path):
    source = mae()
    torch.save({"model": encoder_only(source.state_dict())}, tmp_path / "mae_pretrain.pth")
    vit = VisionTransformer(**VIT, num_classes=0).eval()  # token pool: keeps `norm`, as timm's .mae models
    report = load_encoder_weights(vit, tmp_path / "mae_pretrain.pth")
    assert report["missing"] == [] and report["unexpected"] == [] and report["format"] == "official-pretrain"
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(imgs()), mae_features(source, imgs()), atol=ATOL, rtol=0)


def test_official_training_checkpoint_with_args_namespace(tmp_path):
    """The official main_pretrain.py saves its argparse Namespace: allowed (plain data), and it names the model."""
    source = mae(embed_dim=192, depth=12, num_heads=3)  # ViT-Ti sized: args.model names the heads
    torch.save({"model": source.state_dict(), "optimizer": {}, "epoch": 41,
                "args": argparse.Namespace(model="mae_vit_tiny_patch16", input_size=32, norm_pix_loss=True)},
               tmp_path / "checkpoint-41.pth")
    info = sniff(tmp_path / "checkpoint-41.pth")
    assert info.format == "official-full" and not info.arch["heads_guessed"] and info.arch["num_heads"] == 3
    assert info.meta["epoch"] == 41 and info.meta["args"]["model"] == "mae_vit_tiny_patch16"
    assert info.describe().startswith("ViT-Ti/8 at 32 px")


# ----------------------------------------------------------------------------- timm
def _write_timm(model, tmp_path: Path, writer: str) -> Path:
    sd = model.state_dict()
    if writer == "pth":
        torch.save(sd, tmp_path / "w.pth")
        return tmp_path / "w.pth"
    if writer == "safetensors":
        save_file(sd, str(tmp_path / "w.safetensors"), metadata={"format": "pt"})
        return tmp_path / "w.safetensors"
    from timm.models._hub import save_for_hf  # timm's own hub folder: config.json (model_args) + safetensors
    save_for_hf(model, str(tmp_path / "hub"), safe_serialization=True)
    return tmp_path / "hub"


def _timm_model(layout: str):
    import timm

    torch.manual_seed(0)
    kw = dict(VIT, num_classes=0) if layout == "mae" else dict(VIT, num_classes=5, global_pool="avg")
    return perturb(timm.create_model("vit_base_patch16_224", pretrained=False, **kw), seed=3)


@pytest.mark.parametrize("writer", ["pth", "safetensors", "hub-folder"])
def test_timm_mae_layout_into_our_mae_same_features(tmp_path, writer):
    """`vit_*_patch16_224.mae`: the official encoder names, `norm` kept, no head."""
    source = _timm_model("mae")
    info = sniff(_write_timm(source, tmp_path, writer))
    assert info.format == "timm"
    assert info.arch["heads_guessed"] == (writer != "hub-folder")  # timm's config.json records num_heads
    assert (info.arch["has_head"], info.arch["has_norm"], info.arch["has_decoder"]) == (False, True, False)
    model = info.build_mae()
    report = load_encoder_weights(model, info)
    assert report["unexpected"] == [] and set(report["missing"]) == {
        k for k in model.state_dict() if k.startswith(DECODER_PREFIXES)}
    with torch.no_grad():
        torch.testing.assert_close(mae_features(model, imgs()), source.forward_features(imgs()), atol=ATOL, rtol=0)


@pytest.mark.parametrize("writer", ["pth", "safetensors"])
def test_timm_finetuned_layout_rebuilds_the_classifier(tmp_path, writer):
    source = _timm_model("finetuned")
    info = sniff(_write_timm(source, tmp_path, writer))
    assert info.format == "timm" and info.describe().endswith("head 5 classes (avg pool + fc_norm)")
    clone = info.build_timm().eval()
    report = load_encoder_weights(clone, info)
    assert report["missing"] == [] and report["unexpected"] == []
    with torch.no_grad():
        torch.testing.assert_close(clone(imgs()), source(imgs()), atol=ATOL, rtol=0)


def test_head_size_mismatch_and_drop_head(tmp_path):
    torch.save(_timm_model("finetuned").state_dict(), tmp_path / "ft.pth")
    target = VisionTransformer(**VIT, num_classes=3, global_pool="avg")
    with pytest.raises(ArchitectureMismatchError, match="5 classes.*3.*drop_head"):
        load_encoder_weights(target, tmp_path / "ft.pth")
    report = load_encoder_weights(target, tmp_path / "ft.pth", drop_head=True)
    assert set(report["dropped"]) == {"head.weight", "head.bias"} == set(report["missing"])


# ----------------------------------------------------------------------------- Hugging Face
def _hf_mae_config(**kw):
    """HF's own config with HF's defaults (layer_norm_eps 1e-12) and heads off our convention."""
    return transformers.ViTMAEConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512, image_size=32,
        patch_size=8, decoder_hidden_size=64, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
        decoder_intermediate_size=256, **kw)


def _hf_vit_config(**kw):
    return transformers.ViTConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=512, image_size=32, patch_size=8, **kw)


def _save_hf(model, folder: Path, how: str) -> Path:
    if how == "bin":  # the 4.x layout: pytorch_model.bin with the legacy names (as 5.x writes them)
        model.save_pretrained(folder)
        torch.save(load_safetensors(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    else:
        model.save_pretrained(folder, save_original_format=how == "legacy")
    return folder


@pytest.mark.parametrize("how", ["legacy", "modular", "bin"])
def test_hf_vitmae_pretraining_folder_same_outputs(tmp_path, how):
    torch.manual_seed(0)
    hf = perturb(transformers.ViTMAEForPreTraining(_hf_mae_config(norm_pix_loss=True)), seed=4)
    info = sniff(_save_hf(hf, tmp_path / "hf", how))
    assert info.format == "hf-vitmae-pretraining"
    a = info.arch
    assert (a["num_heads"], a["decoder_num_heads"], a["heads_guessed"]) == (4, 4, False)  # from config.json
    assert a["layer_norm_eps"] == 1e-12 and a["norm_pix_loss"] is True
    model = info.build_mae()
    assert load_encoder_weights(model, info)["missing"] == []
    x, noise = imgs(), torch.rand(2, 16, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ours, theirs = model(x, mask_ratio=0.75, noise=noise), hf(pixel_values=x, noise=noise)
    assert torch.equal(ours.mask, theirs.mask)
    torch.testing.assert_close(ours.pred, theirs.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=ATOL, rtol=0)


def test_hf_vitmae_model_folder_same_features(tmp_path):
    torch.manual_seed(0)
    hf = perturb(transformers.ViTMAEModel(_hf_mae_config(mask_ratio=0.0)), seed=5)
    info = sniff(_save_hf(hf, tmp_path / "hf", "legacy"))
    assert info.format == "hf-vitmae-model" and not info.arch["has_decoder"]
    model = info.build_mae()
    load_encoder_weights(model, info)
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ours = model.forward_encoder(imgs(), 0.0, noise)[0]
        theirs = hf(pixel_values=imgs(), noise=noise).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


@pytest.mark.parametrize("how", ["legacy", "modular"])
def test_hf_vit_classification_folder_same_logits(tmp_path, how):
    torch.manual_seed(0)
    hf = perturb(transformers.ViTForImageClassification(_hf_vit_config(num_labels=7)), seed=6)
    info = sniff(_save_hf(hf, tmp_path / "hf", how))
    assert info.format == "hf-vit-classification"
    assert info.describe() == "ViT (width 128, depth 2)/8 at 32 px, head 7 classes (cls token)"
    vit = info.build_timm().eval()  # token pool, norm, head; HF's eps 1e-12 carried over
    report = load_encoder_weights(vit, info)
    assert report["missing"] == [] and report["unexpected"] == []
    with torch.no_grad():
        torch.testing.assert_close(vit(imgs()), hf(pixel_values=imgs()).logits, atol=ATOL, rtol=0)


def test_hf_vit_model_folder_drops_pooler(tmp_path):
    torch.manual_seed(0)
    hf = perturb(transformers.ViTModel(_hf_vit_config(layer_norm_eps=1e-6)), seed=7)
    info = sniff(_save_hf(hf, tmp_path / "hf", "legacy"))
    assert info.format == "hf-vit-model" and any("pooler" in n for n in info.notes)
    vit = info.build_timm().eval()
    load_encoder_weights(vit, info)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(imgs()), hf(pixel_values=imgs()).last_hidden_state,
                                   atol=ATOL, rtol=0)


def test_hf_weights_without_folder_and_sharded_folder(tmp_path):
    torch.manual_seed(0)
    hf = perturb(transformers.ViTMAEForPreTraining(_hf_mae_config()), seed=4)
    folder = _save_hf(hf, tmp_path / "hf", "legacy")
    whole = sniff(folder)
    bare = sniff(folder / "model.safetensors")  # the weights file alone: read, heads guessed and said so
    assert bare.format == "hf-vitmae-pretraining" and any("without their config.json" in n for n in bare.notes)
    assert_same_tensors(bare.state_dict, whole.state_dict)

    sd = load_safetensors(str(folder / "model.safetensors"))  # shards + index, as save_pretrained writes big models
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((folder / "config.json").read_text())
    for name, names in shards.items():
        save_file({k: sd[k] for k in names}, str(sharded / name), metadata={"format": "pt"})
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: name for name, names in shards.items() for k in names}}))
    info = sniff(sharded)
    assert len(info.files) == 2 and info.format == "hf-vitmae-pretraining"
    assert_same_tensors(info.state_dict, whole.state_dict)


def test_config_that_disagrees_with_tensors_is_noted(tmp_path):
    torch.manual_seed(0)
    folder = _save_hf(transformers.ViTMAEModel(_hf_mae_config()), tmp_path / "hf", "legacy")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["ViTMAEForPreTraining"]}))
    info = sniff(folder)
    assert info.format == "hf-vitmae-model"
    assert any("names ViTMAEForPreTraining" in n for n in info.notes)


# ----------------------------------------------------------------------------- position embeddings
@pytest.mark.parametrize("target", ["mae", "timm"])
def test_32px_file_into_48px_model(tmp_path, target):
    source = mae()
    torch.save({"model": source.state_dict()}, tmp_path / "full.pth")
    model = MaskedAutoencoder(**{**TINY, "img_size": 48}) if target == "mae" else VisionTransformer(
        **{**VIT, "img_size": 48}, num_classes=0)
    report = load_encoder_weights(model, tmp_path / "full.pth")
    assert "pos_embed" in report["resized"] and report["missing"] == []
    got = model.state_dict()["pos_embed"]
    assert got.shape == (1, 1 + 36, 128)
    assert torch.equal(got[:, :1], source.pos_embed[:, :1])  # cls entry kept apart
    assert torch.equal(got, resize_pos_embed(source.pos_embed.detach(), (6, 6)))
    with torch.no_grad():
        out = mae_features(model, imgs(48)) if target == "mae" else model.forward_features(imgs(48))
    assert out.shape == (2, 37, 128) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- errors
def test_unknown_format_lists_known_formats(tmp_path):
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointFormatError) as e:
        sniff(tmp_path / "resnet.pth")
    for description in FORMATS.values():
        assert description in str(e.value)

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "bert" / "model.safetensors"))
    with pytest.raises(CheckpointFormatError, match="'bert'.*Known formats"):
        sniff(tmp_path / "bert")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointFormatError, match="Known formats"):
        sniff(tmp_path / "empty")


@pytest.mark.parametrize("kind", ["pth", "safetensors", "hf-folder"])
def test_truncated_files(tmp_path, kind):
    source = mae()
    if kind == "pth":
        path = save_ours(source, tmp_path / "c.pth")
    elif kind == "safetensors":
        path = export_timm(source, tmp_path / "c.safetensors")
    else:
        path = export_hf(source, tmp_path / "hf") / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        sniff(path.parent if kind == "hf-folder" else path)


def test_wide_file_into_narrow_model(tmp_path):
    torch.save({"model": mae(embed_dim=192, num_heads=3).state_dict()}, tmp_path / "wide.pth")
    with pytest.raises(ArchitectureMismatchError, match="width 192.*width 128"):
        load_encoder_weights(MaskedAutoencoder(**TINY), tmp_path / "wide.pth")
    with pytest.raises(ArchitectureMismatchError, match="width 192.*width 128"):
        load_encoder_weights(VisionTransformer(**VIT), tmp_path / "wide.pth")


def test_vit_large_file_for_vit_base_preset(tmp_path):
    torch.save({"model": encoder_only(mae().state_dict())}, tmp_path / "w.pth")
    info = sniff(tmp_path / "w.pth")
    large = replace(info, arch=dict(info.arch, name="vit_large", embed_dim=1024, depth=24, patch_size=16,
                                    img_size=224))  # a ViT-L's measurements, without 300M parameters
    with pytest.raises(ArchitectureMismatchError, match=r"ViT-L/16 \(width 1024, depth 24\).*ViT-B/16 \(width 768"):
        apply_preset(large, "mae_vit_base_patch16")
    tiny = apply_preset(replace(info, arch=dict(info.arch, embed_dim=192, depth=12)), "vit_tiny")
    assert tiny.arch["num_heads"] == 3 and not tiny.arch["heads_guessed"]


def test_bin_with_pickled_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "hf"
    folder.mkdir()
    _hf_mae_config().save_pretrained(folder)
    torch.save({"vit.embeddings.cls_token": torch.zeros(1, 1, 128), "evil": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointFormatError, match="weights_only"):
        sniff(folder)
    assert not marker.exists()
