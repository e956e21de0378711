"""Our MAE and Hugging Face ViTMAE are the same network: converted weights give the same outputs.

Every weight is perturbed away from its initial value first (MAE init leaves biases at zero and
LayerNorm at one, which would hide a swapped norm1/norm2 or bias), so a wrong rename, a q/k/v
mix-up or a missed tensor changes loss, prediction or mask.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("transformers")
from transformers import ViTMAEForPreTraining, ViTMAEModel  # noqa: E402
from transformers.models.vit_mae import modeling_vit_mae as hf_vit_mae  # noqa: E402

from mae_core.errors import CheckpointFormatError  # noqa: E402
from mae_core.hf import (  # noqa: E402
    LAYOUTS,
    hf_config_from_mae,
    hf_to_mae_state_dict,
    installed_layout,
    is_hf_vitmae_state_dict,
    mae_kwargs_from_hf_config,
    mae_to_hf_state_dict,
)
from mae_core.mae import MaskedAutoencoder, create_mae  # noqa: E402
from mae_core.vit import sincos_pos_embed_2d  # noqa: E402

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)
ATOL = 1e-5
DECODER = ("mask_token", "decoder_")


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int, scale: float = 0.02) -> torch.nn.Module:
    """Move every tensor (pos-embeds included) off its init value, deterministically."""
    g = torch.Generator().manual_seed(seed)
    for t in model.state_dict().values():
        t.add_(scale * torch.randn(t.shape, generator=g))
    return model.eval()


def tiny_mae(**kw) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return perturb(MaskedAutoencoder(**{**TINY, **kw}), seed=1)


def to_hf(ours: MaskedAutoencoder, mask_ratio: float, attn: str = "sdpa") -> ViTMAEForPreTraining:
    config = hf_config_from_mae(ours, mask_ratio=mask_ratio)
    config._attn_implementation = attn  # sdpa (HF's default) runs the same kernel as timm; eager does not
    hf = ViTMAEForPreTraining(config).eval()
    hf.load_state_dict(mae_to_hf_state_dict(ours.state_dict()), strict=True)
    return hf


@torch.no_grad()
def assert_same_outputs(ours: MaskedAutoencoder, hf: ViTMAEForPreTraining, mask_ratio: float, batch: int = 2,
                        seed: int = 0) -> dict[str, float]:
    """Same images and noise -> same loss, prediction and mask; returns the max abs differences."""
    assert hf.config.mask_ratio == mask_ratio and hf.config.norm_pix_loss == ours.norm_pix_loss
    g = torch.Generator().manual_seed(seed)
    size = ours.patch_embed.img_size
    imgs = torch.randn(batch, 3, *size, generator=g)
    noise = torch.rand(batch, ours.patch_embed.num_patches, generator=g)
    a = ours(imgs, mask_ratio=mask_ratio, noise=noise)
    b = hf(pixel_values=imgs, noise=noise)
    assert torch.equal(a.mask, b.mask)
    assert a.mask.sum().item() == batch * (a.mask.shape[1] - int(a.mask.shape[1] * (1 - mask_ratio)))
    torch.testing.assert_close(b.logits, a.pred, atol=ATOL, rtol=0)
    torch.testing.assert_close(b.loss, a.loss, atol=ATOL, rtol=0)
    return {"loss": (a.loss - b.loss).abs().item(), "pred": (a.pred - b.logits).abs().max().item()}


# ----------------------------------------------------------------------------- ours -> HF
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("mask_ratio", [0.75, 0.5])
def test_tiny_ours_to_hf_same_outputs(norm_pix_loss, mask_ratio, attn):
    ours = tiny_mae(norm_pix_loss=norm_pix_loss)
    diffs = assert_same_outputs(ours, to_hf(ours, mask_ratio, attn), mask_ratio)
    print(f"tiny ours->hf norm_pix={norm_pix_loss} ratio={mask_ratio} attn={attn}: {diffs}")


@pytest.fixture(scope="module")
def vit_base_pair():
    torch.manual_seed(0)
    ours = perturb(create_mae("mae_vit_base_patch16"), seed=2, scale=0.005)
    return ours, to_hf(ours, 0.75, attn="eager")  # eager: a different attention kernel, a real tolerance test


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_vit_base_ours_to_hf_same_outputs(vit_base_pair, norm_pix_loss):
    ours, hf = vit_base_pair
    ours.norm_pix_loss = hf.config.norm_pix_loss = norm_pix_loss  # only the target depends on it
    diffs = assert_same_outputs(ours, hf, 0.75, batch=2)
    print(f"ViT-B ours->hf norm_pix={norm_pix_loss}: {diffs}")


def test_norm_pix_loss_matters():
    """Guards the norm_pix tests above: the flag changes the loss, so equal losses mean both honour it."""
    ours = tiny_mae()
    imgs, noise = torch.rand(1, 3, 32, 32), torch.rand(1, 16)
    with torch.no_grad():
        plain = ours(imgs, noise=noise).loss
        ours.norm_pix_loss = True
        normed = ours(imgs, noise=noise).loss
    assert (plain - normed).abs() > 1e-2


# ----------------------------------------------------------------------------- HF -> ours
@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_random_hf_to_ours_same_outputs(norm_pix_loss):
    config = hf_config_from_mae(TINY, mask_ratio=0.6, norm_pix_loss=norm_pix_loss)
    torch.manual_seed(0)
    hf = perturb(ViTMAEForPreTraining(config), seed=3, scale=0.05)
    ours = MaskedAutoencoder(**mae_kwargs_from_hf_config(hf.config)).eval()
    ours.load_state_dict(hf_to_mae_state_dict(hf.state_dict()), strict=True)
    diffs = assert_same_outputs(ours, hf, 0.6)
    print(f"tiny hf->ours norm_pix={norm_pix_loss}: {diffs}")


SWAPS = {  # same-shaped weights a broken converter could mix up, named in each HF layout
    "q-k": {"modular": ("q_proj", "k_proj"), "legacy": ("attention.query", "attention.key")},
    "k-v": {"modular": ("k_proj", "v_proj"), "legacy": ("attention.key", "attention.value")},
    "norm1-norm2": {"modular": ("layernorm_before", "layernorm_after"),
                    "legacy": ("layernorm_before", "layernorm_after")},
}


@pytest.mark.parametrize("swap", SWAPS)
def test_equivalence_check_catches_swapped_weights(swap):
    """The comparison is sensitive: swapping two same-shaped HF weights makes the outputs disagree."""
    a, b = SWAPS[swap][installed_layout()]
    ours = tiny_mae()
    hf_sd = mae_to_hf_state_dict(ours.state_dict())
    key_a = next(k for k in hf_sd if k.startswith("vit.") and ".0." in k and k.endswith(f"{a}.weight"))
    key_b = key_a.replace(a, b)
    hf_sd[key_a], hf_sd[key_b] = hf_sd[key_b], hf_sd[key_a]
    hf = ViTMAEForPreTraining(hf_config_from_mae(ours)).eval()
    hf.load_state_dict(hf_sd, strict=True)
    with pytest.raises(AssertionError):
        assert_same_outputs(ours, hf, 0.75)


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip_is_lossless(layout):
    sd = tiny_mae().state_dict()
    hf_sd = mae_to_hf_state_dict(sd, layout=layout)
    assert all(k.startswith(("vit.", "decoder.")) for k in hf_sd)
    back = hf_to_mae_state_dict(hf_sd)
    assert back.keys() == sd.keys()
    for k, v in sd.items():
        assert torch.equal(back[k], v), k
    # and HF -> ours -> HF
    again = mae_to_hf_state_dict(back, layout=layout)
    assert again.keys() == hf_sd.keys() and all(torch.equal(again[k], hf_sd[k]) for k in hf_sd)


def test_qkv_split_rows_are_q_then_k_then_v():
    sd = tiny_mae().state_dict()
    hf_sd = mae_to_hf_state_dict(sd, layout="modular")
    qkv, d = sd["blocks.1.attn.qkv.weight"], TINY["embed_dim"]
    for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(hf_sd[f"vit.layers.1.attention.{name}.weight"], qkv[j * d:(j + 1) * d])
    legacy = mae_to_hf_state_dict(sd, layout="legacy")
    assert torch.equal(legacy["vit.encoder.layer.1.attention.attention.value.bias"],
                       sd["blocks.1.attn.qkv.bias"][2 * d:])


def test_encoder_only_dict():
    sd = {k: v for k, v in tiny_mae().state_dict().items() if not k.startswith(DECODER)}
    config = hf_config_from_mae(TINY)

    model_sd = mae_to_hf_state_dict(sd, target="model")
    ViTMAEModel(config).load_state_dict(model_sd, strict=True)
    assert is_hf_vitmae_state_dict(model_sd)

    pre_sd = mae_to_hf_state_dict(sd)  # into ViTMAEForPreTraining: the decoder stays as initialised
    result = ViTMAEForPreTraining(config).load_state_dict(pre_sd, strict=False)
    assert not result.unexpected_keys and result.missing_keys
    assert all(k.startswith("decoder.") for k in result.missing_keys)

    for hf_sd in (model_sd, pre_sd):
        back = hf_to_mae_state_dict(hf_sd)
        assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_full_dict_to_vitmae_model_drops_decoder():
    ours = tiny_mae()
    model_sd = mae_to_hf_state_dict(ours.state_dict(), target="model")
    assert not any(k.startswith("decoder") for k in model_sd)
    hf = ViTMAEModel(hf_config_from_mae(ours)).eval()
    hf.load_state_dict(model_sd, strict=True)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        latent, mask, _ = ours.forward_encoder(imgs, 0.75, noise)
        out = hf(pixel_values=imgs, noise=noise)
    torch.testing.assert_close(out.last_hidden_state, latent, atol=ATOL, rtol=0)
    assert torch.equal(out.mask, mask)


def test_legacy_layout_is_what_transformers_reads_from_files(tmp_path):
    """Hub files use the legacy names; transformers' own loader maps them onto its modules."""
    from safetensors.torch import save_file

    ours = tiny_mae()
    hf_config_from_mae(ours).save_pretrained(tmp_path)
    save_file(mae_to_hf_state_dict(ours.state_dict(), layout="legacy"),
              os.path.join(tmp_path, "model.safetensors"), metadata={"format": "pt"})
    hf, info = ViTMAEForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    expected = mae_to_hf_state_dict(ours.state_dict(), layout=installed_layout())
    loaded = hf.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)


# ----------------------------------------------------------------------------- errors
def test_unknown_mae_keys_raise():
    sd = dict(tiny_mae().state_dict())
    sd["head.weight"], sd["fc_norm.bias"] = torch.zeros(10, 64), torch.zeros(64)
    with pytest.raises(CheckpointFormatError, match=r"head\.weight, fc_norm\.bias"):
        mae_to_hf_state_dict(sd)
    many = {f"extra.{i}": torch.zeros(1) for i in range(25)}
    with pytest.raises(CheckpointFormatError, match=r"27 in all") as err:
        mae_to_hf_state_dict({**sd, **many})
    assert "extra.24" not in str(err.value)  # the list is cut short


def test_unknown_or_incomplete_hf_keys_raise():
    hf_sd = mae_to_hf_state_dict(tiny_mae().state_dict())
    with pytest.raises(CheckpointFormatError, match=r"classifier\.weight"):
        hf_to_mae_state_dict({**hf_sd, "classifier.weight": torch.zeros(1)})
    del hf_sd["vit.layers.0.attention.k_proj.bias" if installed_layout() == "modular"
              else "vit.encoder.layer.0.attention.attention.key.bias"]
    with pytest.raises(CheckpointFormatError, match=r"blocks\.0\.attn\.qkv\.bias.*key"):
        hf_to_mae_state_dict(hf_sd)


def test_bad_arguments_raise():
    sd = tiny_mae().state_dict()
    with pytest.raises(ValueError):
        mae_to_hf_state_dict(sd, target="classifier")
    with pytest.raises(ValueError):
        mae_to_hf_state_dict(sd, layout="v7")


# ----------------------------------------------------------------------------- config
def test_config_from_model_kwargs_and_preset_agree():
    ours = MaskedAutoencoder(**TINY)
    from_model, from_kwargs = hf_config_from_mae(ours).to_dict(), hf_config_from_mae(TINY).to_dict()
    assert from_model == from_kwargs
    base = hf_config_from_mae("mae_vit_base_patch16", mask_ratio=0.6)
    assert (base.hidden_size, base.num_hidden_layers, base.num_attention_heads, base.intermediate_size) == \
        (768, 12, 12, 3072)
    assert (base.decoder_hidden_size, base.decoder_num_hidden_layers, base.decoder_num_attention_heads,
            base.decoder_intermediate_size) == (512, 8, 16, 2048)
    assert (base.image_size, base.patch_size, base.layer_norm_eps, base.mask_ratio) == (224, 16, 1e-6, 0.6)
    assert base.qkv_bias and base.hidden_act == "gelu" and not base.norm_pix_loss
    kwargs = mae_kwargs_from_hf_config(base)
    assert hf_config_from_mae(kwargs, mask_ratio=0.6).to_dict() == base.to_dict()


# ----------------------------------------------------------------------------- sin-cos
@pytest.mark.parametrize("embed_dim,grid", [(64, 4), (32, 7), (512, 14), (768, 14), (1280, 16)])
def test_sincos_pos_embed_matches_hf(embed_dim, grid):
    """Our official-recipe table against the one HF's own modules build (an independent computation)."""
    ours = torch.from_numpy(sincos_pos_embed_2d(embed_dim, grid, cls_token=True)).float()
    assert ours.shape == (1 + grid * grid, embed_dim)
    config = hf_vit_mae.ViTMAEConfig(hidden_size=embed_dim, decoder_hidden_size=embed_dim,
                                     num_attention_heads=1, decoder_num_attention_heads=1,
                                     image_size=grid * 2, patch_size=2)
    embeddings = hf_vit_mae.ViTMAEEmbeddings(config)
    embeddings.initialize_weights()
    decoder = hf_vit_mae.ViTMAEDecoder(config, num_patches=grid * grid)  # fills decoder_pos_embed at init
    for hf_table in (embeddings.position_embeddings[0], decoder.decoder_pos_embed[0]):
        assert hf_table.abs().sum() > 0
        torch.testing.assert_close(hf_table, ours, atol=1e-6, rtol=0)
    if hasattr(hf_vit_mae, "get_2d_sincos_pos_embed"):  # transformers 4.x: a numpy port of the official code
        table = hf_vit_mae.get_2d_sincos_pos_embed(embed_dim, grid, add_cls_token=True)
        table = torch.from_numpy(table).float()
        torch.testing.assert_close(table, ours, atol=1e-6, rtol=0)
