"""The architecture an official-layout state dict holds, read off its tensor shapes.

Width, depth, patch, grid, MLP ratio, decoder and head are in the shapes; attention heads and the
layer-norm eps are not, so they come from hints (our meta, a config, a named preset) or, failing
those, the one heads rule (`vit.guess_heads`), with a note saying it was guessed.
"""

from __future__ import annotations

import re

import torch

from .ckpt_io import KNOWN_FORMATS
from .errors import CheckpointFormatError
from .mae import MAE_PRESETS
from .vit import VIT_ARCHS, arch_for_width_depth, guess_heads

OFFICIAL_EPS = 1e-6  # the official MAE and timm LayerNorm eps; HF configs default to 1e-12
_SHORT_NAMES = {"vit_tiny": "ViT-Ti", "vit_small": "ViT-S", "vit_base": "ViT-B", "vit_large": "ViT-L",
                "vit_huge": "ViT-H"}
_OFFICIAL_KEY = re.compile(
    r"^(cls_token|pos_embed|mask_token|decoder_pos_embed"
    r"|(patch_embed\.proj|norm|fc_norm|head|decoder_embed|decoder_norm|decoder_pred)\.(weight|bias)"
    r"|(decoder_)?blocks\.\d+\.(norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias))$")


def mae_state_dict(obj: dict, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The MAE state dict inside a loaded file (ours or the official `{'model': ...}`, or a bare dict)."""
    sd = obj.get("model", obj)
    if not isinstance(sd, dict) or not {"patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"} <= set(sd):
        keys = list(sd)[:8] if isinstance(sd, dict) else []
        raise CheckpointFormatError(
            f"{source} is not an MAE/ViT checkpoint in the official layout (no 'patch_embed.proj.weight' or "
            f"'blocks.0.*'; first keys: {keys}). Known formats: " + "; ".join(KNOWN_FORMATS))
    return sd


def infer_mae_kwargs(sd: dict[str, torch.Tensor]) -> dict:
    """Architecture of an official-layout state dict, read off its tensor shapes."""
    proj = sd["patch_embed.proj.weight"]  # (D, C, p, p)
    embed_dim, in_chans, patch_size = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = 1 + max((int(k.split(".")[1]) for k in sd if k.startswith("blocks.")), default=-1)
    grid = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5)) if "pos_embed" in sd else 224 // patch_size
    kwargs = dict(img_size=grid * patch_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                  depth=depth, mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim)
    if "decoder_embed.weight" in sd:
        kwargs["decoder_embed_dim"] = sd["decoder_embed.weight"].shape[0]
        kwargs["decoder_depth"] = 1 + max(
            (int(k.split(".")[1]) for k in sd if k.startswith("decoder_blocks.")), default=-1)
    return kwargs


def describe_arch(kwargs: dict) -> str:
    name = arch_for_width_depth(kwargs["embed_dim"], kwargs["depth"]) or "custom ViT"
    return (f"{name} (width {kwargs['embed_dim']}, depth {kwargs['depth']}, patch {kwargs['patch_size']}, "
            f"{kwargs['img_size']} px)")


def size_name(a: dict, widths: bool = True) -> str:
    """'ViT-B/16 (width 768, depth 12)', or 'ViT (width 64, depth 2)/8' for a size without a name."""
    name = _SHORT_NAMES.get(a.get("name"))
    if not name:
        return f"ViT (width {a['embed_dim']}, depth {a['depth']})/{a['patch_size']}"
    return f"{name}/{a['patch_size']}" + (f" (width {a['embed_dim']}, depth {a['depth']})" if widths else "")


def _preset_heads(name, embed_dim: int, depth: int) -> tuple[int | None, int | None]:
    """(heads, decoder heads) of a named architecture of this size: the official `args.model`, timm's
    `architecture`, our preset name; (None, None) when the name is unknown or names another size."""
    m = re.match(r"^(?:mae_)?(vit_[a-z]+)", name if isinstance(name, str) else "")
    size = VIT_ARCHS.get(m.group(1)) if m else None
    if size is None or (size.embed_dim, size.depth) != (embed_dim, depth):
        return None, None
    return size.num_heads, MAE_PRESETS.get(name, {}).get("decoder_num_heads")


def arch_of(sd, notes, num_heads=None, decoder_num_heads=None, preset=None, layer_norm_eps=None,
          norm_pix_loss=None) -> dict:
    """The architecture read off the tensors; heads and eps (invisible in weights) from hints, else guessed."""
    kw = infer_mae_kwargs(sd)
    preset_heads = _preset_heads(preset, kw["embed_dim"], kw["depth"])
    num_heads, decoder_num_heads = num_heads or preset_heads[0], decoder_num_heads or preset_heads[1]
    name = arch_for_width_depth(kw["embed_dim"], kw["depth"])
    if name and num_heads and num_heads != VIT_ARCHS[name].num_heads:
        name = None  # a ViT-B-sized model with other heads is not ViT-B
    has_head, fc_norm = "head.weight" in sd, "fc_norm.weight" in sd
    arch = dict(name=name, embed_dim=kw["embed_dim"], depth=kw["depth"],
                num_heads=num_heads or guess_heads(kw["embed_dim"]), heads_guessed=not num_heads,
                patch_size=kw["patch_size"], img_size=kw["img_size"], grid=kw["img_size"] // kw["patch_size"],
                in_chans=kw["in_chans"], mlp_ratio=kw["mlp_ratio"], qkv_bias="blocks.0.attn.qkv.bias" in sd,
                layer_norm_eps=layer_norm_eps or OFFICIAL_EPS, has_decoder="decoder_embed.weight" in sd,
                has_norm="norm.weight" in sd, has_head=has_head,
                num_classes=sd["head.weight"].shape[0] if has_head else 0,
                fc_norm=fc_norm, global_pool="avg" if fc_norm else "token")
    if not num_heads:
        notes.append(f"heads are not stored in the weights: guessed {arch['num_heads']} (the official convention, "
                     "64-wide heads, ViT-H 16); give the preset (--arch) if the model used others")
    if arch["has_decoder"]:
        arch.update(decoder_embed_dim=kw["decoder_embed_dim"], decoder_depth=kw["decoder_depth"],
                    decoder_num_heads=decoder_num_heads or guess_heads(kw["decoder_embed_dim"], decoder=True))
        if not decoder_num_heads:
            notes.append(f"heads of the decoder guessed: {arch['decoder_num_heads']} (32-wide, as the official "
                         "512-wide decoder's 16)")
    if norm_pix_loss is not None:
        arch.update(norm_pix_loss=bool(norm_pix_loss), norm_pix_loss_from="recorded")
    extra = [k for k in sd if not _OFFICIAL_KEY.match(k)]
    if extra:
        notes.append(f"{len(extra)} tensors outside the MAE / ViT layout (loaded as unexpected): "
                     + ", ".join(extra[:5]))
    return arch
