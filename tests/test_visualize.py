"""Reconstruction figures: the panels are right (pasting, norm-pix un-normalisation) and the PNG is laid out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mae_core.errors import DatasetLayoutError
from mae_core.mae import MaskedAutoencoder
from mae_core.visualize import COLUMNS, load_images, reconstruct, save_grid, visualize

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)
L = 16
MEAN = np.array([0.485, 0.456, 0.406])  # ImageNet normalisation the figures undo
STD = np.array([0.229, 0.224, 0.225])
TITLE_H, PAD = 18, 4  # save_grid's layout: a title strip, then cells separated by PAD


def tiny(**kw) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(**{**TINY, **kw}).eval()


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def noise_for(n: int = 2) -> torch.Tensor:
    return torch.rand(n, L, generator=torch.Generator().manual_seed(6))


def numpy_target(imgs: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Per-patch targets in (h, w, p, q, c) order, normalised per patch when norm_pix (unbiased var)."""
    x = imgs.numpy().astype(np.float64)
    out = np.zeros((x.shape[0], L, 8 * 8 * 3))
    for i in range(x.shape[0]):
        for h in range(4):
            for w in range(4):
                out[i, h * 4 + w] = x[i, :, h * 8:(h + 1) * 8, w * 8:(w + 1) * 8].transpose(1, 2, 0).reshape(-1)
    if norm_pix:
        out = (out - out.mean(-1, keepdims=True)) / np.sqrt(out.var(-1, ddof=1, keepdims=True) + 1e-6)
    return torch.from_numpy(out).float()


def patch_mask_image(mask: torch.Tensor) -> torch.Tensor:
    """(N, L) patch mask -> (N, 1, 32, 32) pixel mask, row-major patches."""
    return mask.reshape(-1, 1, 4, 1, 4, 1).expand(-1, 1, 4, 8, 4, 8).reshape(-1, 1, 32, 32)


# --------------------------------------------------------------------------- panels
@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_panels_paste_visible_patches_exactly(norm_pix_loss):
    model, imgs, noise = tiny(norm_pix_loss=norm_pix_loss), images(), noise_for()
    panels = reconstruct(model, imgs, noise=noise)
    assert set(COLUMNS) <= set(panels)
    _, _, mask = model(imgs, noise=noise)
    removed = patch_mask_image(mask).expand(-1, 3, -1, -1).bool()
    assert torch.equal(panels["mask"].bool(), removed)
    assert torch.equal(panels["original"], imgs)
    pasted, recon = panels["reconstruction + visible"], panels["reconstruction"]
    assert torch.equal(pasted[~removed], imgs[~removed])  # visible: the original, bit for bit
    assert torch.equal(pasted[removed], recon[removed])  # removed: the model's reconstruction
    assert not torch.allclose(recon[removed], imgs[removed], atol=0.1)  # an untrained model: not the image
    assert torch.equal(panels["masked"][~removed], imgs[~removed])
    assert torch.count_nonzero(panels["masked"][removed]) == 0
    for name in COLUMNS:
        assert panels[name].shape == imgs.shape


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_perfect_prediction_reconstructs_the_image(monkeypatch, norm_pix_loss):
    """If the decoder predicted exactly its target, every panel would show the original image.

    With norm_pix_loss the target is each patch normalised by its own statistics, so this checks the
    un-normalisation with the true patch mean and (unbiased) variance.
    """
    model, imgs, noise = tiny(norm_pix_loss=norm_pix_loss), images(), noise_for()
    real_forward = model.forward
    perfect = numpy_target(imgs, norm_pix_loss)

    def forward(x, mask_ratio=0.75, noise=None):
        out = real_forward(x, mask_ratio=mask_ratio, noise=noise)
        return out._replace(pred=perfect)

    monkeypatch.setattr(model, "forward", forward)
    panels = reconstruct(model, imgs, noise=noise)
    torch.testing.assert_close(panels["reconstruction"], imgs, atol=2e-5, rtol=0)
    torch.testing.assert_close(panels["reconstruction + visible"], imgs, atol=2e-5, rtol=0)
    if norm_pix_loss:  # the raw prediction is far from pixels: un-normalising is what made it match
        assert (perfect - numpy_target(imgs, False)).abs().max() > 0.5


def test_reconstruct_uses_the_given_noise():
    model, imgs = tiny(), images()
    a = reconstruct(model, imgs, noise=noise_for())
    b = reconstruct(model, imgs, noise=noise_for())
    c = reconstruct(model, imgs, noise=torch.rand(2, L, generator=torch.Generator().manual_seed(99)))
    assert torch.equal(a["reconstruction"], b["reconstruction"])
    assert not torch.equal(a["mask"], c["mask"])
    assert a["mask"][0, 0].mean().item() == pytest.approx(0.75)  # 12 of 16 patches removed


# --------------------------------------------------------------------------- PNG
def _expected_tile(img: torch.Tensor) -> np.ndarray:
    x = img.permute(1, 2, 0).numpy().astype(np.float64) * STD + MEAN
    return np.round(np.clip(x, 0, 1) * 255).astype(np.int64)


@pytest.mark.parametrize("n,cell", [(1, 64), (3, 32)])
def test_save_grid_layout(tmp_path, n, cell):
    model, imgs = tiny(), images(n)
    panels = reconstruct(model, imgs, noise=torch.rand(n, L, generator=torch.Generator().manual_seed(1)))
    path = save_grid(panels, tmp_path / "sub" / "grid.png", cell=cell)
    assert path.exists()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (4 * (cell + PAD) + PAD, TITLE_H + n * (cell + PAD) + PAD)  # 4 columns, n rows
        arr = np.asarray(im.convert("RGB")).astype(np.int64)
    scale = cell // 32
    for c, name in enumerate(COLUMNS):
        for r in range(n):
            top, left = TITLE_H + PAD + r * (cell + PAD), PAD + c * (cell + PAD)
            tile = arr[top:top + cell:scale, left:left + cell:scale]
            assert np.abs(tile - _expected_tile(panels[name][r])).max() <= 1, (name, r)


def test_visualize_writes_repeatable_png(tmp_path):
    model, imgs = tiny(), images(3)
    a = visualize(model, imgs, tmp_path / "a.png", seed=0)
    b = visualize(model, imgs, tmp_path / "b.png", seed=0)
    c = visualize(model, imgs, tmp_path / "c.png", seed=1)
    arrays = []
    for p in (a, b, c):
        with Image.open(p) as im:
            assert im.format == "PNG"
            assert im.size == (4 * (160 + PAD) + PAD, TITLE_H + 3 * (160 + PAD) + PAD)
            arrays.append(np.asarray(im.convert("RGB")))
    assert np.array_equal(arrays[0], arrays[1])  # the masks come from the seed
    assert not np.array_equal(arrays[0], arrays[2])


# --------------------------------------------------------------------------- image folders
def test_load_images_missing_folder(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        load_images(tmp_path / "nope", 32)


def test_load_images_folder_without_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("no pictures here")
    (tmp_path / "notes.md").write_text("nor here")
    with pytest.raises(DatasetLayoutError, match="no images"):
        load_images(tmp_path, 32)


def test_load_images_recursive_sorted_limited(tmp_path):
    grey = {"b/2.png": 150, "a/1.JPG": 100, "c.jpeg": 200, "a/0.bmp": 50}  # solid images, one grey level each
    for rel, level in grey.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 48, 3), level, dtype=np.uint8)).save(p)
    (tmp_path / "a" / "skip.txt").write_text("x")
    batch = load_images(tmp_path, 32)
    assert batch.shape == (4, 3, 32, 32) and batch.dtype == torch.float32
    # normalised with the ImageNet statistics; in sorted path order: a/0, a/1, b/2, c
    x = batch.permute(0, 2, 3, 1).numpy() * STD + MEAN
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3)) * 255, [50, 100, 150, 200], atol=1.5)
    assert batch.min() < 0
    first_two = load_images(tmp_path, 32, limit=2)
    assert torch.equal(first_two, batch[:2])

    out = visualize(tiny(), batch, tmp_path / "grid.png")
    with Image.open(out) as im:
        assert im.size[1] == TITLE_H + 4 * (160 + PAD) + PAD
