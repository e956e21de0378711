"""Reconstruction figures: original | masked | reconstruction | reconstruction with visible patches pasted.

Only a trained decoder reconstructs: a file without one (the official encoder-only
`mae_pretrain_vit_*.pth`) is refused, since a fresh decoder would draw noise. The official demo
draws a raw-pixel model (`mae_visualize_vit_*.pth`). A norm-pix model predicts each patch
normalised by its own mean and variance; to show pixels we un-normalise each predicted patch with
the statistics of the true patch, so the brightness and contrast of removed patches come from the
original (said in a note, as the figure cannot say it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .checkpoints import build_mae_from_checkpoint
from .data import build_eval_transform, denormalize
from .errors import CheckpointFormatError, DatasetLayoutError
from .formats import as_info
from .mae import MaskedAutoencoder

COLUMNS = ("original", "masked", "reconstruction", "reconstruction + visible")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}
WITH_DECODER = ("the official mae_visualize_vit_*.pth (raw pixels) or mae_pretrain_vit_*_full.pth (norm-pix), "
                "or the mae_pretrain.pth / checkpoint-*.pth of `maet pretrain`")
NORM_PIX_NOTE = ("norm-pix model: it predicts each removed patch normalised; the reconstructions show it with the "
                 "true patch's mean and variance, so their brightness and contrast come from the original")


def load_reconstruction_model(src, norm_pix_loss: bool | None = None) -> tuple[MaskedAutoencoder, list[str]]:
    """The MAE of a checkpoint with a complete trained decoder, and notes; CheckpointFormatError if it has none.

    `norm_pix_loss` states the decoder's target where the file does not record it (`target.py`).
    """
    info = as_info(src)
    if not info.arch["has_decoder"]:
        raise CheckpointFormatError(
            f"{info.source} holds no decoder (no mask_token / decoder_* tensors: an encoder-only file, like the "
            "official mae_pretrain_vit_*.pth), so it cannot reconstruct images: a new decoder would draw noise. "
            f"Use a file with the decoder: {WITH_DECODER}.")
    model, report = build_mae_from_checkpoint(info, norm_pix_loss=norm_pix_loss)
    if report["missing"]:
        raise CheckpointFormatError(
            f"{info.source} lacks {len(report['missing'])} tensors of the MAE ({', '.join(report['missing'][:5])}), "
            f"so its reconstructions would be partly untrained. Use a complete file: {WITH_DECODER}.")
    return model, report["notes"] + ([NORM_PIX_NOTE] if model.norm_pix_loss else [])


@torch.no_grad()
def reconstruct(model: MaskedAutoencoder, imgs: torch.Tensor, mask_ratio: float = 0.75,
                noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The four panels for a batch of normalised images, each (N, C, H, W) in normalised space."""
    model.eval()
    _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)
    if model.norm_pix_loss:
        target = model.patchify(imgs)
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1.0e-6) ** 0.5 + mean
    recon = model.unpatchify(pred)
    mask_img = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, pred.shape[-1]))  # 1 = removed
    return {"original": imgs, "masked": imgs * (1 - mask_img), "reconstruction": recon,
            "reconstruction + visible": imgs * (1 - mask_img) + recon * mask_img, "mask": mask_img}


def load_images(folder: str | Path, img_size: int, limit: int = 8) -> torch.Tensor:
    """Up to `limit` images found under `folder` (recursively, sorted), with the official eval transform."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetLayoutError(f"image folder {folder} does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise DatasetLayoutError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    return load_image_files(paths, img_size)


def load_image_files(paths, img_size: int) -> torch.Tensor:
    """These image files with the official eval transform, as one batch."""
    transform = build_eval_transform(img_size)
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    x = denormalize(x).clamp(0, 1)
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_grid(panels: dict[str, torch.Tensor], path: str | Path, cell: int = 160) -> Path:
    """One row per image, one column per panel, titled; small images are enlarged (nearest) to `cell` px."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(panels, cell).save(path)
    return path


def grid_image(panels: dict[str, torch.Tensor], cell: int = 160) -> Image.Image:
    """The grid `save_grid` writes, as an image (pretraining also sends it to TensorBoard)."""
    panels = {name: x.detach().float().cpu() for name, x in panels.items()}
    n = panels["original"].shape[0]
    title_h, pad = 18, 4
    grid = Image.new("RGB", (len(COLUMNS) * (cell + pad) + pad, title_h + n * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(COLUMNS):
        draw.text((pad + c * (cell + pad) + 4, 3), name, fill="black")
        for r in range(n):
            tile = Image.fromarray(_to_uint8(panels[name][r])).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (pad + c * (cell + pad), title_h + pad + r * (cell + pad)))
    return grid


def seeded_panels(model: MaskedAutoencoder, images: torch.Tensor, mask_ratio: float = 0.75,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """`reconstruct` with masks drawn from `seed` by a generator of their own (repeatable figures; the global
    random state is left alone, so drawing one mid-training changes nothing in the run)."""
    noise = torch.rand(images.shape[0], model.patch_embed.num_patches, generator=torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device
    return reconstruct(model, images.to(device), mask_ratio, noise.to(device))


def visualize(model: MaskedAutoencoder, images: torch.Tensor, path: str | Path, mask_ratio: float = 0.75,
              seed: int = 0) -> Path:
    """Write the reconstruction grid for `images`; the masks are drawn from `seed` (repeatable figures)."""
    return save_grid(seeded_panels(model, images, mask_ratio, seed), path)
