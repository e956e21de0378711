"""ViT architecture presets and the fixed 2-D sin-cos position embeddings MAE uses.

The blocks themselves come from timm (`PatchEmbed`, `Block`); this module only names the sizes
in one place and provides the position-embedding helpers shared by the MAE, the classifiers and
the transfer adapters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ArchitectureMismatchError


@dataclass(frozen=True)
class ViTArch:
    """Encoder size of a plain ViT (timm / official MAE naming)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


# The real sizes (ViT-B/L/H as in the paper) and small ones for CPU work.
VIT_ARCHS: dict[str, ViTArch] = {
    "vit_tiny": ViTArch(embed_dim=192, depth=12, num_heads=3),
    "vit_small": ViTArch(embed_dim=384, depth=12, num_heads=6),
    "vit_base": ViTArch(embed_dim=768, depth=12, num_heads=12),
    "vit_large": ViTArch(embed_dim=1024, depth=24, num_heads=16),
    "vit_huge": ViTArch(embed_dim=1280, depth=32, num_heads=16),
}


def arch_for_width_depth(embed_dim: int, depth: int) -> str | None:
    """Name of the preset with this width and depth, or None (used to report what a file holds)."""
    for name, arch in VIT_ARCHS.items():
        if arch.embed_dim == embed_dim and arch.depth == depth:
            return name
    return None


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

    The prefix (cls) entries are kept apart, as in the official `interpolate_pos_embed`.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ArchitectureMismatchError(f"expected a pos_embed of shape (1, N, D), got {tuple(pos_embed.shape)}")
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = grid.shape[1]
    if old_grid is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise ArchitectureMismatchError(
                f"pos_embed has {n} grid entries (after {num_prefix_tokens} prefix tokens), not a square grid; "
                "pass old_grid=(h, w) for non-square grids")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
