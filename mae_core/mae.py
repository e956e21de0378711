"""The Masked Autoencoder (He et al., CVPR 2022), faithful to the official `models_mae.py`.

The encoder sees only the visible 25% of patches; the lightweight decoder sees the encoded
visible tokens plus one shared, learned mask token per removed patch, both with fixed 2-D
sin-cos position embeddings; the loss is the MSE on removed patches only, by default on
per-patch normalised pixels. Parameter names are exactly the official ones, so official, timm
and detectron2 checkpoints read ours and ours read theirs.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from .errors import ImageSizeError
from .vit import VIT_ARCHS, sincos_pos_embed_2d


class MAEOutput(NamedTuple):
    loss: torch.Tensor  # scalar: mean squared error over removed patches
    pred: torch.Tensor  # (N, L, p*p*C) in patch order, in the (normalised) target space
    mask: torch.Tensor  # (N, L), 1 = removed, 0 = visible


class MaskedAutoencoder(nn.Module):
    """MAE with a ViT encoder; constructor arguments carry the official hyper-parameter names."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    ):
        super().__init__()
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.norm_pix_loss = norm_pix_loss

        # --- encoder
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)])
        self.norm = norm_layer(embed_dim)

        # --- decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
             for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)

        self.initialize_weights()

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.patch_embed.grid_size)

    def initialize_weights(self) -> None:
        """Official initialisation: sin-cos pos-embeds, xavier on patch projection and linears."""
        self.pos_embed.data.copy_(
            torch.from_numpy(sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid_size, cls_token=True))
            .float().unsqueeze(0))
        self.decoder_pos_embed.data.copy_(
            torch.from_numpy(sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1], self.grid_size, cls_token=True))
            .float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))  # like nn.Linear, not nn.Conv2d
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.zeros_(m.bias)
            nn.init.ones_(m.weight)

    # ------------------------------------------------------------------ patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), each patch flattened as (p, q, c)."""
        p, c = self.patch_size, self.in_chans
        n, _, hh, ww = imgs.shape
        h, w = hh // p, ww // p
        x = imgs.reshape(n, c, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, h * w, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W), the inverse of `patchify`."""
        p, c = self.patch_size, self.in_chans
        h, w = self.grid_size
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def check_input(self, imgs: torch.Tensor) -> None:
        expected = (self.in_chans, *self.patch_embed.img_size)
        if imgs.ndim != 4 or tuple(imgs.shape[1:]) != expected:
            raise ImageSizeError(
                f"this MAE takes images of shape (N, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(imgs.shape)}; resize/crop the inputs to {expected[1]}x{expected[2]} or build the "
                f"model with img_size={imgs.shape[-1]} (position embeddings are resized when loading weights)")

    # ------------------------------------------------------------------ masking
    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Per-sample random masking by argsort of noise; keeps the first int(L*(1-ratio)) of the shuffle."""
        n, length, dim = x.shape
        len_keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(n, length, device=x.device)
        elif noise.shape != (n, length):
            raise ValueError(f"noise must have shape (N, L) = ({n}, {length}), got {tuple(noise.shape)}")

        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # where each patch went in the shuffle
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).expand(-1, -1, dim))

        mask = torch.ones(n, length, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)  # back to patch order
        return x_masked, mask, ids_restore

    # ------------------------------------------------------------------ encoder / decoder
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        x = self.patch_embed(imgs)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls_tokens = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls_tokens, x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)
        n, visible_plus_cls, dim = x.shape
        mask_tokens = self.mask_token.expand(n, ids_restore.shape[1] + 1 - visible_plus_cls, -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # visible (in shuffle order), then mask tokens
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # unshuffle
        x = torch.cat([x[:, :1, :], x_], dim=1)  # re-attach cls
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """The regression target per patch: pixels, normalised per patch when norm_pix_loss."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        loss = ((pred - self.target(imgs)) ** 2).mean(dim=-1)  # per patch
        return (loss * mask).sum() / mask.sum()  # removed patches only

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None) -> MAEOutput:
        self.check_input(imgs)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return MAEOutput(self.forward_loss(imgs, pred, mask), pred, mask)


# Decoder of the official presets: 512 wide, 8 blocks, 16 heads. CPU presets get a lighter one.
_DECODERS = {
    "vit_tiny": dict(decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
    "vit_small": dict(decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8),
}
_OFFICIAL_DECODER = dict(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)

# The encoder sizes of `vit.VIT_ARCHS` (shared with the classifier presets), each with its decoder.
MAE_PRESETS: dict[str, dict] = {
    f"mae_{arch}_patch{a.patch_size}": {**a.kwargs(), **_DECODERS.get(arch, _OFFICIAL_DECODER)}
    for arch, a in VIT_ARCHS.items()
}


def create_mae(name: str, **overrides) -> MaskedAutoencoder:
    """Build a preset by name (e.g. `mae_vit_base_patch16`), overriding any constructor argument."""
    if name not in MAE_PRESETS:
        raise ValueError(f"unknown MAE preset {name!r}; known: {', '.join(MAE_PRESETS)}")
    return MaskedAutoencoder(**{**MAE_PRESETS[name], **overrides})
