"""The MAE's structure against the official code and the papers: patch order, parameter names, init,
the preset table and the heads rule that every checkpoint reader uses.

The forward pass and the loss against a port of the official code are in test_mae.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from mae_core.mae import MAE_PRESETS, MaskedAutoencoder, create_mae
from mae_core.models_vit import CLASSIFIER_PRESETS, classifier_kwargs_from_state_dict
from mae_core.vit import VIT_ARCHS, guess_heads
from tests.test_mae import TINY, L, P, images, official_patchify, official_sincos_2d


# --------------------------------------------------------------------------- patchify
def test_patchify_order_and_inverse():
    model = MaskedAutoencoder(**TINY)
    imgs = images(2)
    patches = model.patchify(imgs)
    assert patches.shape == (2, L, P)
    assert torch.equal(patches, official_patchify(imgs, 8))
    # explicit: patch (h=1, w=2) is row-major index 6; its value at (p=3, q=5, c=2) is pixel (c, 8+3, 16+5)
    assert patches[1, 6, (3 * 8 + 5) * 3 + 2] == imgs[1, 2, 11, 21]
    assert patches[0, 1, 0] == imgs[0, 0, 0, 8]  # w varies fastest across patches
    assert patches[0, 4, 0] == imgs[0, 0, 8, 0]
    assert torch.equal(model.unpatchify(patches), imgs)
    rand = torch.randn(2, L, P)
    assert torch.equal(model.patchify(model.unpatchify(rand)), rand)


# --------------------------------------------------------------------------- names and init
def expected_keys(depth: int, decoder_depth: int) -> set[str]:
    block = [f"{m}.{t}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
             for t in ("weight", "bias")]
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
            "norm.weight", "norm.bias", "mask_token", "decoder_embed.weight", "decoder_embed.bias",
            "decoder_pos_embed", "decoder_norm.weight", "decoder_norm.bias",
            "decoder_pred.weight", "decoder_pred.bias"}
    keys |= {f"blocks.{i}.{k}" for i in range(depth) for k in block}
    keys |= {f"decoder_blocks.{i}.{k}" for i in range(decoder_depth) for k in block}
    return keys


def test_state_dict_keys_are_the_official_names():
    model = MaskedAutoencoder(**TINY)
    assert set(model.state_dict()) == expected_keys(2, 1)
    sd = model.state_dict()
    assert sd["pos_embed"].shape == (1, L + 1, 64)
    assert sd["decoder_pos_embed"].shape == (1, L + 1, 32)
    assert sd["patch_embed.proj.weight"].shape == (64, 3, 8, 8)
    assert sd["decoder_pred.weight"].shape == (P, 32)
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * 64, 64)
    assert sd["blocks.1.mlp.fc1.weight"].shape == (4 * 64, 64)


def test_pos_embeds_are_fixed_sincos_tables():
    model = MaskedAutoencoder(**TINY)
    for name, dim in (("pos_embed", 64), ("decoder_pos_embed", 32)):
        param = getattr(model, name)
        assert not param.requires_grad
        expected = torch.from_numpy(official_sincos_2d(dim, 4, cls_token=True)).float().unsqueeze(0)
        assert torch.equal(param.data, expected)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "pos_embed" not in names and "decoder_pos_embed" not in names


def test_official_init():
    torch.manual_seed(0)
    model = MaskedAutoencoder(**{**TINY, "embed_dim": 256, "decoder_embed_dim": 256})
    for tok in (model.cls_token, model.mask_token):
        assert tok.requires_grad
        assert 0.016 < tok.std().item() < 0.024
        assert abs(tok.mean().item()) < 0.005
    assert not torch.equal(model.cls_token, model.mask_token)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            assert torch.count_nonzero(m.bias) == 0, name
            bound = math.sqrt(6.0 / (m.in_features + m.out_features))  # xavier_uniform
            assert m.weight.abs().max() <= bound + 1e-7, name
            assert m.weight.abs().max() > 0.95 * bound, name
        if isinstance(m, torch.nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)), name
            assert torch.count_nonzero(m.bias) == 0, name
            assert m.eps == 1e-6, name
    # patch projection: xavier_uniform as if it were a Linear over (C*p*p) inputs, not Conv2d's default
    w = model.patch_embed.proj.weight
    bound = math.sqrt(6.0 / (w.shape[0] + w[0].numel()))
    assert bound * 0.95 < w.abs().max() <= bound + 1e-7
    # its bias is not touched by the official init (only Linear/LayerNorm are): Conv2d's default uniform
    assert model.patch_embed.proj.bias.abs().max() <= 1 / math.sqrt(w[0].numel())


# --------------------------------------------------------------------------- presets
def _encoder_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("decoder_", "mask_token")))


def _block_params(d: int, mlp_ratio: float = 4.0) -> int:
    h = int(d * mlp_ratio)
    return 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)


@pytest.mark.parametrize(
    "preset,timm_name,embed,depth,heads,patch",
    [("mae_vit_base_patch16", "vit_base_patch16_224", 768, 12, 12, 16),
     ("mae_vit_large_patch16", "vit_large_patch16_224", 1024, 24, 16, 16),
     ("mae_vit_huge_patch14", "vit_huge_patch14_224", 1280, 32, 16, 14)])
def test_official_presets_match_paper_and_timm(preset, timm_name, embed, depth, heads, patch):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        model = create_mae(preset)
        ref = timm.create_model(timm_name, pretrained=False, num_classes=0)
    assert model.patch_size == patch and model.img_size == 224
    assert model.pos_embed.shape == (1, (224 // patch) ** 2 + 1, embed)
    assert len(model.blocks) == depth
    assert all(b.attn.num_heads == heads for b in model.blocks)
    assert model.decoder_embed.out_features == 512
    assert len(model.decoder_blocks) == 8
    assert all(b.attn.num_heads == 16 for b in model.decoder_blocks)
    assert model.decoder_pred.out_features == patch * patch * 3
    assert not model.norm_pix_loss  # the official default; pretraining turns it on explicitly

    enc = _encoder_params(model)
    assert enc == sum(p.numel() for p in ref.parameters())
    assert enc == sum(p.numel() for p in ref.state_dict().values() if p is not None)
    # encoder keys are exactly timm's (minus timm's head/fc_norm, absent with num_classes=0)
    ours, theirs = model.state_dict(), ref.state_dict()
    enc_keys = {k for k in ours if not k.startswith(("decoder_", "mask_token"))}
    assert enc_keys == set(theirs)
    for k in enc_keys:
        assert ours[k].shape == theirs[k].shape, k

    # decoder: the official 512-wide, 8-block decoder, counted from its formula
    n = (224 // patch) ** 2 + 1
    dec = (embed * 512 + 512) + 512 + n * 512 + 8 * _block_params(512) + 2 * 512 + (512 * patch * patch * 3
                                                                                     + patch * patch * 3)
    assert sum(p.numel() for p in model.parameters()) - enc == dec


def test_preset_names_and_overrides():
    for name in ("mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14"):
        assert name in MAE_PRESETS
    model = create_mae("mae_vit_tiny_patch16", **TINY)
    assert model.pos_embed.shape == (1, L + 1, 64) and len(model.blocks) == 2


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError) as e:
        create_mae("mae_vit_gigantic_patch16")
    msg = str(e.value)
    assert "mae_vit_gigantic_patch16" in msg
    for name in MAE_PRESETS:
        assert name in msg


# --------------------------------------------------------------------------- one table, one heads rule
PUBLISHED_HEADS = {"vit_tiny": 3, "vit_small": 6, "vit_base": 12, "vit_large": 16, "vit_huge": 16}


def test_mae_and_classifier_presets_are_one_table():
    for arch, a in VIT_ARCHS.items():
        encoder = dict(patch_size=a.patch_size, embed_dim=a.embed_dim, depth=a.depth, num_heads=a.num_heads,
                       mlp_ratio=a.mlp_ratio)
        assert CLASSIFIER_PRESETS[f"{arch}_patch{a.patch_size}"] == encoder
        mae = MAE_PRESETS[f"mae_{arch}_patch{a.patch_size}"]
        assert {k: v for k, v in mae.items() if not k.startswith("decoder_")} == encoder
    assert set(CLASSIFIER_PRESETS) == {"vit_tiny_patch16", "vit_small_patch16", "vit_base_patch16",
                                       "vit_large_patch16", "vit_huge_patch14"}
    assert set(MAE_PRESETS) == {f"mae_{name}" for name in CLASSIFIER_PRESETS}


def _classifier_shapes(width: int, depth: int = 1, classes: int = 10) -> dict[str, torch.Tensor]:
    """A classifier state dict with the right shapes and no memory (heads are not in any shape)."""
    zero = torch.zeros(())
    return {"patch_embed.proj.weight": zero.expand(width, 3, 16, 16), "pos_embed": zero.expand(1, 5, width),
            **{f"blocks.{i}.mlp.fc1.weight": zero.expand(4 * width, width) for i in range(depth)},
            "fc_norm.weight": zero.expand(width), "head.weight": zero.expand(classes, width)}


@pytest.mark.parametrize("arch", list(PUBLISHED_HEADS))
def test_one_heads_rule_on_every_preset_width(arch):
    """The published presets' heads, for a file of that width whatever its depth (the rule reads the width)."""
    width = VIT_ARCHS[arch].embed_dim
    assert VIT_ARCHS[arch].num_heads == guess_heads(width) == PUBLISHED_HEADS[arch]
    assert classifier_kwargs_from_state_dict(_classifier_shapes(width), {})["num_heads"] == PUBLISHED_HEADS[arch]


def test_heads_rule_off_the_presets():
    assert [guess_heads(w) for w in (32, 64, 128, 640, 1536)] == [1, 1, 2, 10, 24]  # 64-wide heads
    assert guess_heads(512, decoder=True) == 16 and guess_heads(32, decoder=True) == 1  # 32-wide in decoders
