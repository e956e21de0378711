"""Change a checkpoint's patch size: the published ViT-H MAE is patch 14, ViTDet-H runs patch 16.

ViTDet starts ViT-H from `mae_pretrain_vit_huge_p14to16.pth`; this converts `mae_pretrain_vit_huge.pth`
(or any checkpoint, to any patch size) to those shapes with timm's own functions and the arguments
timm's `checkpoint_filter_fn` uses when it loads a ViT of another patch size: the
projection by `resample_patch_embed` (FlexiViT's pseudo-inverse resize: a patch resized to the new
size projects as the old patch did) and the position embedding by `resample_abs_pos_embed`
(bicubic, antialiased, cls entry apart) to the grid the same image size has at the new patch
(224 px: 16x16 at patch 14, 14x14 at patch 16). The decoder predicts pixels of the old patch size,
so it is dropped: a decoder for the new patch would have to be trained.
"""

from __future__ import annotations

from dataclasses import replace

from timm.layers import resample_abs_pos_embed, resample_patch_embed

from .errors import ArchitectureMismatchError
from .formats import DECODER_PREFIXES, CheckpointInfo

PROJ = "patch_embed.proj.weight"


def resample_patch_size(info: CheckpointInfo, patch_size: int) -> tuple[CheckpointInfo, list[str]]:
    """`info` at another patch size, and one line per change (tensor, shapes, method; what was dropped)."""
    a, sd = info.arch, dict(info.state_dict)
    old = a["patch_size"]
    if patch_size == old:
        return info, []
    if patch_size < 1 or patch_size > a["img_size"]:
        raise ArchitectureMismatchError(f"cannot resample {info.source} ({a['img_size']} px) to patch {patch_size}: "
                                        f"give a patch size between 1 and {a['img_size']}")
    grid = max(1, round(a["img_size"] / patch_size))
    proj = sd[PROJ]
    sd[PROJ] = resample_patch_embed(proj, [patch_size, patch_size])  # timm's defaults: bicubic, antialias
    changes = [f"{PROJ} {tuple(proj.shape)} -> {tuple(sd[PROJ].shape)}: timm resample_patch_embed "
               "(pseudo-inverse of a bicubic resize)"]
    if "pos_embed" in sd:
        pos, prefix = sd["pos_embed"], 1 if "cls_token" in sd else 0
        sd["pos_embed"] = resample_abs_pos_embed(pos, [grid, grid], num_prefix_tokens=prefix)
        size = f"{a['img_size']} px" + (f" -> {grid * patch_size} px" if grid * patch_size != a["img_size"] else "")
        changes.append(f"pos_embed {tuple(pos.shape)} -> {tuple(sd['pos_embed'].shape)}: grid {a['grid']}x{a['grid']}"
                       f" -> {grid}x{grid} ({size}), timm resample_abs_pos_embed (bicubic, cls entry kept)")
    dropped = [k for k in sd if k.startswith(DECODER_PREFIXES)]
    for k in dropped:
        del sd[k]
    if dropped:
        changes.append(f"dropped the decoder ({len(dropped)} tensors: mask_token, decoder_*): it predicts "
                       f"{old}x{old} patches")
    arch = {k: v for k, v in a.items() if not k.startswith(("decoder_", "norm_pix_loss"))}
    arch.update(patch_size=patch_size, grid=grid, img_size=grid * patch_size, has_decoder=False)
    meta = dict(info.meta)
    if "model_kwargs" in meta:  # ours: the meta is what rebuilds the model
        meta["model_kwargs"] = dict(meta["model_kwargs"], patch_size=patch_size, img_size=grid * patch_size)
        meta.update(patch_size=patch_size, img_size=grid * patch_size)
    about_decoder = ("norm_pix_loss", "heads of the decoder")  # notes on what is gone
    notes = [n for n in info.notes if not (dropped and n.startswith(about_decoder))]
    notes += [f"patch {old} -> {patch_size}: {c}" for c in changes]
    return replace(info, state_dict=sd, arch=arch, meta=meta, notes=notes), changes
