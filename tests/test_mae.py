"""The MAE against the official `models_mae.py`: masking rule, forward, loss, patch order, names, init, presets.

The reference computations below are written out in the test (a port of the official code, with its
`.repeat`s and explicit gathers, and timm 0.3.2's attention written by hand), so they do not share
code with `mae_core.mae` beyond the module weights. Weights are perturbed away from their init
first: MAE init leaves biases at zero and LayerNorm at one, which would hide swapped tensors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mae_core.errors import ImageSizeError
from mae_core.mae import MAE_PRESETS, MAEOutput, MaskedAutoencoder, create_mae

TINY = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=64, depth=2, num_heads=4,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)
L = (32 // 8) ** 2  # 16 patches
P = 8 * 8 * 3  # values per patch


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for t in model.state_dict().values():
        t.add_(scale * torch.randn(t.shape, generator=g, dtype=t.dtype))
    return model.eval()


def tiny(seed: int = 0, **kw) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    return perturb(MaskedAutoencoder(**{**TINY, **kw}))


def images(n: int = 3, seed: int = 2, size: int = 32, chans: int = 3) -> torch.Tensor:
    return torch.randn(n, chans, size, size, generator=torch.Generator().manual_seed(seed))


def noise_for(n: int = 3, seed: int = 3) -> torch.Tensor:
    return torch.rand(n, L, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- reference (official port)
def official_sincos_2d(embed_dim: int, grid_size: int, cls_token: bool = False) -> np.ndarray:
    """`util/pos_embed.get_2d_sincos_pos_embed` of the official repository, verbatim in substance."""
    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


def official_patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    h = w = imgs.shape[2] // p
    x = imgs.reshape(shape=(imgs.shape[0], 3, h, p, w, p))
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(shape=(imgs.shape[0], h * w, p**2 * 3))


def _ln(x, norm):
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, eps=1e-6)  # official eps


def _official_block(blk, x, num_heads):
    """timm 0.3.2 `Block` (the version the official MAE pins): pre-norm attention and MLP."""
    y = _ln(x, blk.norm1)
    b, n, c = y.shape
    qkv = F.linear(y, blk.attn.qkv.weight, blk.attn.qkv.bias)
    qkv = qkv.reshape(b, n, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)) * (c // num_heads) ** -0.5
    attn = attn.softmax(dim=-1)
    y = (attn @ v).transpose(1, 2).reshape(b, n, c)
    x = x + F.linear(y, blk.attn.proj.weight, blk.attn.proj.bias)
    y = _ln(x, blk.norm2)
    y = F.gelu(F.linear(y, blk.mlp.fc1.weight, blk.mlp.fc1.bias))
    return x + F.linear(y, blk.mlp.fc2.weight, blk.mlp.fc2.bias)


@torch.no_grad()
def official_forward(model, imgs, mask_ratio, noise, norm_pix_loss, num_heads, decoder_num_heads, p):
    # forward_encoder
    x = F.conv2d(imgs, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=p)
    x = x.flatten(2).transpose(1, 2)
    x = x + model.pos_embed[:, 1:, :]
    # random_masking
    n, length, d = x.shape
    len_keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, d))
    mask = torch.ones([n, length], device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    cls_token = model.cls_token + model.pos_embed[:, :1, :]
    x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    for blk in model.blocks:
        x = _official_block(blk, x, num_heads)
    x = _ln(x, model.norm)
    # forward_decoder
    x = F.linear(x, model.decoder_embed.weight, model.decoder_embed.bias)
    mask_tokens = model.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1)
    x = x + model.decoder_pos_embed
    for blk in model.decoder_blocks:
        x = _official_block(blk, x, decoder_num_heads)
    x = _ln(x, model.decoder_norm)
    pred = F.linear(x, model.decoder_pred.weight, model.decoder_pred.bias)[:, 1:, :]
    # forward_loss
    target = official_patchify(imgs, p)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)
    loss = (loss * mask).sum() / mask.sum()
    return loss, pred, mask


# --------------------------------------------------------------------------- forward contract
@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.7, 0.9])
def test_forward_shapes_and_mask_count(ratio):
    model = tiny()
    out = model(images(), mask_ratio=ratio)
    assert isinstance(out, MAEOutput)
    loss, pred, mask = out  # unpacks as the official triple
    assert loss.shape == () and torch.isfinite(loss)
    assert pred.shape == (3, L, P)
    assert mask.shape == (3, L)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # official: len_keep = int(L * (1 - ratio)); 0.7 -> int(4.8) = 4 kept, 12 removed (not L - int(L*ratio) = 5)
    expected_removed = L - int(L * (1 - ratio))
    assert mask.sum(dim=1).tolist() == [expected_removed] * 3


def test_masking_follows_argsort_of_noise():
    model = tiny()
    noise = noise_for()
    for ratio in (0.75, 0.5, 0.7):
        _, _, mask = model(images(), mask_ratio=ratio, noise=noise)
        len_keep = int(L * (1 - ratio))
        # rank of each patch's noise among its row: kept exactly when rank < len_keep
        rank = noise.argsort(dim=1).argsort(dim=1)
        assert torch.equal(mask, (rank >= len_keep).float())
        kept = noise.argsort(dim=1)[:, :len_keep]
        assert torch.equal(mask.gather(1, kept), torch.zeros_like(kept, dtype=mask.dtype))


def test_random_masking_gathers_kept_tokens_in_shuffle_order():
    x = torch.arange(2 * L * 5, dtype=torch.float32).reshape(2, L, 5)
    noise = noise_for(2)
    x_masked, mask, ids_restore = MaskedAutoencoder.random_masking(x, 0.75, noise)
    ids_shuffle = noise.argsort(dim=1)
    assert torch.equal(x_masked, torch.stack([x[i, ids_shuffle[i, :4]] for i in range(2)]))
    assert torch.equal(ids_restore, ids_shuffle.argsort(dim=1))
    assert mask.shape == (2, L) and mask.sum().item() == 2 * 12


def test_same_noise_same_output_and_noise_changes_output():
    model = tiny()
    a = model(images(), noise=noise_for(seed=3))
    b = model(images(), noise=noise_for(seed=3))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    c = model(images(), noise=noise_for(seed=4))
    assert not torch.equal(a.mask, c.mask)
    assert not torch.equal(a.pred, c.pred)


def test_noise_none_draws_torch_rand_n_l_on_input_device(monkeypatch):
    model = tiny()
    imgs = images()
    torch.manual_seed(123)
    drawn = model(imgs)
    torch.manual_seed(123)
    explicit = model(imgs, noise=torch.rand(3, L))
    for x, y in zip(drawn, explicit):
        assert torch.equal(x, y)

    calls = []
    real_rand = torch.rand

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real_rand(*args, **kwargs)

    monkeypatch.setattr(torch, "rand", spy)
    model(imgs)
    assert len(calls) == 1
    args, kwargs = calls[0]
    assert tuple(args) == (3, L) or tuple(args) == ((3, L),)
    assert torch.device(kwargs.get("device", "cpu")) == imgs.device


def test_noise_of_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        tiny()(images(), noise=torch.rand(3, L + 1))


# --------------------------------------------------------------------------- against the official forward
@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("ratio", [0.75, 0.6])
def test_matches_official_forward_fp64(norm_pix_loss, ratio):
    model = tiny(norm_pix_loss=norm_pix_loss).double()
    imgs, noise = images().double(), noise_for()
    loss, pred, mask = model(imgs, mask_ratio=ratio, noise=noise)
    ref_loss, ref_pred, ref_mask = official_forward(model, imgs, ratio, noise, norm_pix_loss,
                                                    num_heads=4, decoder_num_heads=4, p=8)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(pred, ref_pred, atol=1e-6, rtol=0)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    assert pred.std() > 0.1  # the comparison is not between two near-zero tensors


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_matches_official_forward_fp32(norm_pix_loss):
    model = tiny(norm_pix_loss=norm_pix_loss)
    imgs, noise = images(), noise_for()
    loss, pred, mask = model(imgs, noise=noise)
    ref_loss, ref_pred, ref_mask = official_forward(model, imgs, 0.75, noise, norm_pix_loss,
                                                    num_heads=4, decoder_num_heads=4, p=8)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(pred, ref_pred, atol=1e-5, rtol=0)  # the contract's fp32 tolerance
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)


def test_norm_pix_loss_changes_the_loss():
    imgs, noise = images(), noise_for()
    plain = tiny(norm_pix_loss=False)(imgs, noise=noise).loss
    normed = tiny(norm_pix_loss=True)(imgs, noise=noise).loss
    assert not torch.isclose(plain, normed)


# --------------------------------------------------------------------------- loss
def test_loss_only_on_removed_patches():
    model = tiny()
    imgs = images()
    _, pred, mask = model(imgs, noise=noise_for())
    base = model.forward_loss(imgs, pred, mask)
    visible = (mask == 0).unsqueeze(-1)
    perturbed = pred + 100.0 * visible * torch.randn_like(pred)
    assert torch.equal(model.forward_loss(imgs, perturbed, mask), base)
    removed = (mask == 1).unsqueeze(-1)
    assert model.forward_loss(imgs, pred + removed * 1.0, mask) > base


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_loss_matches_numpy_masked_mse(norm_pix_loss):
    model = tiny(norm_pix_loss=norm_pix_loss)
    imgs = images()
    _, pred, mask = model(imgs, noise=noise_for())
    x = imgs.numpy().astype(np.float64)
    n = x.shape[0]
    # patches in (h, w, p, q, c) order, written with explicit loops
    target = np.zeros((n, L, P))
    for i in range(n):
        for h in range(4):
            for w in range(4):
                target[i, h * 4 + w] = x[i, :, h * 8:(h + 1) * 8, w * 8:(w + 1) * 8].transpose(1, 2, 0).reshape(-1)
    if norm_pix_loss:
        mean = target.mean(-1, keepdims=True)
        var = target.var(-1, ddof=1, keepdims=True)  # torch.var is unbiased, as in the official code
        target = (target - mean) / np.sqrt(var + 1e-6)
    per_patch = ((pred.detach().numpy().astype(np.float64) - target) ** 2).mean(-1)
    m = mask.numpy().astype(np.float64)
    expected = (per_patch * m).sum() / m.sum()
    assert model.forward_loss(imgs, pred, mask).item() == pytest.approx(expected, rel=1e-5)


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


# --------------------------------------------------------------------------- input errors
@pytest.mark.parametrize("shape", [(2, 3, 48, 48), (2, 1, 32, 32), (2, 3, 32, 40), (3, 32, 32)])
def test_wrong_input_shape_raises_image_size_error(shape):
    model = MaskedAutoencoder(**TINY)
    with pytest.raises(ImageSizeError) as e:
        model(torch.zeros(shape))
    msg = str(e.value)
    assert "(N, 3, 32, 32)" in msg  # expected
    assert str(tuple(shape)) in msg  # found
