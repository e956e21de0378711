"""The MAE against the official `models_mae.py`: masking rule, forward, loss, input checks.

Structure (patch order, names, init, presets) is in test_mae_presets.py.

The reference computations below are written out in the test (a port of the official code, with its
`.repeat`s and explicit gathers, and timm 0.3.2's attention written by hand), so they do not share
code with `mae_core.mae` beyond the module weights. Weights are perturbed away from their init
first: MAE init leaves biases at zero and LayerNorm at one, which would hide swapped tensors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mae_core.errors import ImageSizeError
from mae_core.mae import MAEOutput, MaskedAutoencoder

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


# --------------------------------------------------------------------------- input errors
@pytest.mark.parametrize("shape", [(2, 3, 48, 48), (2, 1, 32, 32), (2, 3, 32, 40), (3, 32, 32)])
def test_wrong_input_shape_raises_image_size_error(shape):
    model = MaskedAutoencoder(**TINY)
    with pytest.raises(ImageSizeError) as e:
        model(torch.zeros(shape))
    msg = str(e.value)
    assert "(N, 3, 32, 32)" in msg  # expected
    assert str(tuple(shape)) in msg  # found
