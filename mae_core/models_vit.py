"""The ViT classifier of fine-tuning and linear probing: timm's `VisionTransformer`, built as the
official `models_vit.py` builds it, and the small functions that put weights into it.

Global average pooling (the fine-tune default) averages the patch tokens and normalises them with
`fc_norm`; there is no final `norm` (the official code deletes it, timm makes it an Identity). The
cls-token variant (the linear probe's) keeps `norm` and reads token 0. The linear probe puts a
`BatchNorm1d(affine=False)` in front of the linear layer (`head.0`, `head.1`). Key names are
timm's, which are the official ones, so official fine-tuned, timm and our checkpoints load as is.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer

from .checkpoints import load_encoder_weights, load_official_weights
from .errors import ArchitectureMismatchError, CheckpointFormatError
from .formats import CheckpointInfo, sniff
from .infer import describe_arch, infer_mae_kwargs
from .vit import VIT_ARCHS, arch_for_width_depth, guess_heads

# The encoder sizes of `vit.VIT_ARCHS` (shared with the MAE presets): `vit_base_patch16`, ...
CLASSIFIER_PRESETS: dict[str, dict] = {f"{arch}_patch{a.patch_size}": a.kwargs() for arch, a in VIT_ARCHS.items()}
ENCODER_PREFIXES = ("patch_embed.", "blocks.", "cls_token", "pos_embed")  # what every init must provide


def arch_name(kwargs: dict) -> str:
    """`vit_base_patch16`-style name of a classifier's kwargs, or a description of a custom size."""
    preset = arch_for_width_depth(kwargs["embed_dim"], kwargs["depth"])
    if preset:
        return f"{preset}_patch{kwargs['patch_size']}"
    return f"vit_custom_w{kwargs['embed_dim']}_d{kwargs['depth']}_patch{kwargs['patch_size']}"


def classifier_kwargs(name: str, *, img_size: int = 224, num_classes: int = 1000, global_pool: bool = True,
                      drop_path_rate: float = 0.1, linear_probe: bool = False, **overrides) -> dict:
    """The full constructor arguments of a preset (recorded in checkpoints, so a run can be rebuilt)."""
    if name not in CLASSIFIER_PRESETS:
        raise ValueError(f"unknown classifier preset {name!r}; known: {', '.join(CLASSIFIER_PRESETS)}")
    return {**CLASSIFIER_PRESETS[name], "in_chans": 3, "img_size": img_size, "num_classes": num_classes,
            "global_pool": global_pool, "drop_path_rate": drop_path_rate, "linear_probe": linear_probe, **overrides}


def build_classifier(img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                     mlp_ratio: float = 4.0, in_chans: int = 3, num_classes: int = 1000, global_pool: bool = True,
                     drop_path_rate: float = 0.0, linear_probe: bool = False,
                     layer_norm_eps: float = 1e-6) -> VisionTransformer:
    """The official `models_vit.VisionTransformer`; `layer_norm_eps` differs only for HF files (1e-12)."""
    model = VisionTransformer(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
        global_pool="avg" if global_pool else "token", embed_dim=embed_dim, depth=depth, num_heads=num_heads,
        mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=layer_norm_eps),
        drop_path_rate=drop_path_rate)
    if linear_probe:
        # The official linear probe's "hack": BN without affine in front of the linear classifier.
        model.head = nn.Sequential(nn.BatchNorm1d(model.head.in_features, affine=False, eps=1e-6), model.head)
    return model


def create_classifier(name: str = "vit_base_patch16", **kwargs) -> VisionTransformer:
    """Build a preset by name, e.g. `create_classifier("vit_large_patch16", num_classes=1000)`."""
    return build_classifier(**classifier_kwargs(name, **kwargs))


def linear_layer(model: VisionTransformer) -> nn.Linear:
    """The classifier's linear layer (the head itself, or the one after the linear probe's BN)."""
    return model.head[-1] if isinstance(model.head, nn.Sequential) else model.head


def init_head(model: VisionTransformer, std: float) -> None:
    """Re-initialise the linear head as the official code: trunc_normal(std) weights, zero bias.

    std 2e-5 for fine-tuning (near-zero logits at the start), 0.01 for the linear probe (MoCo v3).
    """
    head = linear_layer(model)
    trunc_normal_(head.weight, std=std)
    nn.init.zeros_(head.bias)


# ---------------------------------------------------------------- weights from checkpoints
# Files are read by `formats.sniff` (every format, official key names out) and loaded by
# `checkpoints.load_official_weights` (pos-embed resizing, shape checks); here only what is
# particular to classifiers: a new head for a new task, and the checks that no encoder part is left out.
def _model_arch(model: VisionTransformer) -> dict:
    return dict(embed_dim=model.embed_dim, depth=len(model.blocks), patch_size=model.patch_embed.patch_size[0],
                img_size=model.patch_embed.img_size[0])


def _known_heads(info: CheckpointInfo) -> int | None:
    """The file's attention heads where it says (our meta, a config, a named preset); None if guessed."""
    return None if info.arch.get("heads_guessed") else info.arch.get("num_heads")


def load_init_checkpoint(model: VisionTransformer, path: str | Path | CheckpointInfo) -> dict:
    """`--init PATH`: load the encoder of any checkpoint the loader reads into a classifier, for a new task.

    `path` may be a `CheckpointInfo` already read (e.g. with its keys renamed by the linear probe).

    The file's head (if any) is dropped: the recipes initialise a new one. A tensor of another
    shape, other attention heads, or an encoder tensor missing or left over (another depth) raises
    `ArchitectureMismatchError`. Returns the load report (missing / unexpected keys by name, resized,
    dropped, format); for the global-pool model the expected missing keys are `head.*` and
    `fc_norm.*`, the expected unexpected ones `norm.*` and, from a full MAE file, `mask_token` and
    `decoder_*`.
    """
    info = path if isinstance(path, CheckpointInfo) else sniff(path)
    path = info.source if isinstance(path, CheckpointInfo) else path
    heads, own_heads = _known_heads(info), model.blocks[0].attn.num_heads
    if heads is not None and heads != own_heads:
        raise ArchitectureMismatchError(f"{path} was trained with {heads} attention heads, the model has "
                                        f"{own_heads}; set num_heads in --model-kwargs to match the checkpoint")
    report = load_encoder_weights(model, info, drop_head=True)
    lost = [k for k in report["missing"] if k.startswith(ENCODER_PREFIXES)]
    extra = [k for k in report["unexpected"] if k.startswith("blocks.")]
    if lost or extra:
        detail = f"the model's {lost[:3]} are not in the file" if lost else f"the file's {extra[:3]} have no place"
        raise ArchitectureMismatchError(
            f"{path} holds a {describe_arch(info.arch)}, but the model is a {describe_arch(_model_arch(model))}: "
            f"{detail}. Pick the --model preset (and --model-kwargs) that matches the checkpoint.")
    return report


def classifier_kwargs_from_state_dict(sd: dict[str, torch.Tensor], meta: dict, source: str = "checkpoint",
                                      num_heads: int | None = None) -> dict:
    """Constructor arguments of the classifier a fine-tuned / linear-probe checkpoint holds.

    `num_heads`: what the user or the file says; else `vit.guess_heads` (the preset of this width, else 64 wide).
    """
    saved = meta.get("model_kwargs") or {}
    if "num_classes" in saved:  # ours: the run recorded them
        return {**saved, **({"num_heads": num_heads} if num_heads else {})}
    head = sd.get("head.weight", sd.get("head.1.weight"))
    if head is None:
        raise CheckpointFormatError(
            f"{source} has no classification head (no head.weight): it is a pretrained encoder, not a classifier. "
            "Fine-tune it first (maet finetune --init ...) or train a linear probe (maet linprobe --init ...).")
    arch = infer_mae_kwargs(sd)
    return dict(img_size=arch["img_size"], patch_size=arch["patch_size"], in_chans=arch["in_chans"],
                embed_dim=arch["embed_dim"], depth=arch["depth"], mlp_ratio=arch["mlp_ratio"],
                num_heads=num_heads or saved.get("num_heads") or guess_heads(arch["embed_dim"]),
                num_classes=head.shape[0], global_pool="fc_norm.weight" in sd, drop_path_rate=0.0,
                linear_probe="head.1.weight" in sd)


def build_classifier_from_checkpoint(path: str | Path, img_size: int | None = None,
                                     num_heads: int | None = None) -> tuple[VisionTransformer, dict]:
    """Rebuild and load the classifier of a fine-tuned or linear-probe checkpoint (ours, official, timm, HF).

    `img_size` evaluates at another resolution (the pos-embed is resized). Every tensor must find
    its place: a missing or left-over key is an `ArchitectureMismatchError` naming them.
    """
    info = sniff(path)
    kwargs = classifier_kwargs_from_state_dict(info.state_dict, info.meta, source=str(path),
                                               num_heads=num_heads or _known_heads(info))
    kwargs = {**kwargs, "drop_path_rate": 0.0, **({"img_size": img_size} if img_size else {})}
    eps = info.arch.get("layer_norm_eps", 1e-6)
    if eps != 1e-6:
        kwargs["layer_norm_eps"] = eps
    model = build_classifier(**kwargs)
    report = load_official_weights(model, info.state_dict, source=str(path))
    if report["missing"] or report["unexpected"]:
        raise ArchitectureMismatchError(
            f"{path} does not fit the classifier rebuilt from it ({describe_arch(_model_arch(model))}): "
            f"missing {report['missing'][:5]}, unexpected {report['unexpected'][:5]}")
    return model, {"meta": info.meta, "model_kwargs": kwargs, "classes": info.meta.get("classes"),
                   "format": info.format}
