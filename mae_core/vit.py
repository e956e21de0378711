"""ViT encoder sizes (the one preset table), the heads rule, and the position-embedding helpers.

The blocks themselves come from timm (`PatchEmbed`, `Block`); this module names the sizes once:
the MAE presets (`mae.MAE_PRESETS`, adding a decoder) and the classifier presets
(`models_vit.CLASSIFIER_PRESETS`) both derive from `VIT_ARCHS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from timm.layers import resample_abs_pos_embed

from .errors import ArchitectureMismatchError


@dataclass(frozen=True)
class ViTArch:
    """Encoder size of a plain ViT (timm / official MAE naming) and the patch size of its preset."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    patch_size: int = 16

    def kwargs(self) -> dict:
        """Constructor arguments shared by `MaskedAutoencoder` and timm's `VisionTransformer`."""
        return dict(patch_size=self.patch_size, embed_dim=self.embed_dim, depth=self.depth,
                    num_heads=self.num_heads, mlp_ratio=self.mlp_ratio)


# The real sizes (ViT-B/L/H as in the paper; the published ViT-H is patch 14) and small ones for CPU work.
VIT_ARCHS: dict[str, ViTArch] = {
    "vit_tiny": ViTArch(embed_dim=192, depth=12, num_heads=3),
    "vit_small": ViTArch(embed_dim=384, depth=12, num_heads=6),
    "vit_base": ViTArch(embed_dim=768, depth=12, num_heads=12),
    "vit_large": ViTArch(embed_dim=1024, depth=24, num_heads=16),
    "vit_huge": ViTArch(embed_dim=1280, depth=32, num_heads=16, patch_size=14),
}


def guess_heads(embed_dim: int, decoder: bool = False) -> int:
    """Heads are not visible in a state dict: the published preset of this width (ViT-T 3, S 6, B 12,
    L 16, H 16), else 64-wide heads; a decoder's are 32 wide (the official 512-wide decoder has 16)."""
    if decoder:
        return max(1, embed_dim // 32)
    preset = next((a for a in VIT_ARCHS.values() if a.embed_dim == embed_dim), None)
    return preset.num_heads if preset else max(1, embed_dim // 64)


def arch_for_width_depth(embed_dim: int, depth: int) -> str | None:
    """Name of the preset with this width and depth, or None (used to report what a file holds)."""
    for name, arch in VIT_ARCHS.items():
        if arch.embed_dim == embed_dim and arch.depth == depth:
            return name
    return None


# Not timm's `build_sincos2d_pos_embed`: that one orders the channels (h, w) and has no cls entry;
# checkpoints store the official layout, (w, h), so the table is computed here as the official code does.
def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False) -> np.ndarray:
    """Fixed 2-D sin-cos embedding, (prefix + gh*gw, embed_dim), bit-for-bit the official MAE recipe.

    Half of the channels encode the row, half the column; the cls entry (if any) is all zeros.
    """
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embeddings need embed_dim divisible by 4, got {embed_dim}")
    grid_w, grid_h = np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32))
    # The official code puts the w-grid first: grid = meshgrid(w, h) stacked as [w, h].
    emb = np.concatenate([_sincos_1d(embed_dim // 2, grid_w), _sincos_1d(embed_dim // 2, grid_h)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


def resize_pos_embed(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 1,
    old_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resize a (1, prefix + gh*gw, D) position embedding to a new grid, bicubically.

    timm's `resample_abs_pos_embed` with the official `interpolate_pos_embed`'s arguments (no
    antialiasing, cls entries kept apart), after checking the shapes so a bad one says what is wrong.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ArchitectureMismatchError(f"expected a pos_embed of shape (1, N, D), got {tuple(pos_embed.shape)}")
    n = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise ArchitectureMismatchError(
                f"pos_embed has {n} grid entries (after {num_prefix_tokens} prefix tokens), not a square grid; "
                "pass old_grid=(h, w) for non-square grids")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    return resample_abs_pos_embed(pos_embed, list(new_grid), list(old_grid), num_prefix_tokens=num_prefix_tokens,
                                  antialias=False)
