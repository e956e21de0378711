"""`--init` into a ViTDet model: official MAE encoder keys -> `backbone.net.*`, with a report by name.

detectron2 itself loads `mae_pretrain_vit_base.pth` by suffix matching (`blocks.0.attn.qkv.weight`
-> `backbone.net.blocks.0.attn.qkv.weight`) and logs what did not match. We do the same mapping
explicitly, for every format `transfer.encoder_init.read_encoder` reads (ours, official, timm,
Hugging Face, a `maet finetune` classifier), check shapes first, and return a `LoadReport` that
names each model key that stayed new (relative position, pyramid, RPN and ROI heads) and each
checkpoint key left unused with the reason (the cls token, the final norm: ViTDet has neither; the
decoder, mask token and classifier head). Nothing is dropped silently. The report is
`mae_core.checkpoints.LoadReport`, the segmentation adapter's too.

The absolute position embedding is copied as pretrained, cls position included: detectron2's `ViT`
keeps it on the pretraining grid (`pretrain_img_size`, `pretrain_use_cls_token=True`) and resizes
it bicubically to the detection grid in every forward (`get_abs_pos`), as ViTDet does for 224 -> 1024.
"""

from __future__ import annotations

import torch

from mae_core.checkpoints import LoadReport
from mae_core.errors import ArchitectureMismatchError
from transfer.encoder_init import NOT_ENCODER_REASON, EncoderInit

PREFIX = "backbone.net."
# Encoder tensors ViTDet's backbone has no place for, and why.
UNUSED_ENCODER = {
    "cls_token": "ViTDet has no cls token (its position embedding keeps the cls slot, unused)",
    "norm.weight": "ViTDet's backbone has no final norm (the pyramid's LayerNorm convs follow the last block)",
    "norm.bias": "ViTDet's backbone has no final norm (the pyramid's LayerNorm convs follow the last block)",
    "fc_norm.weight": "the classifier's pooled-feature norm has no place in a detector",
    "fc_norm.bias": "the classifier's pooled-feature norm has no place in a detector",
}


def map_encoder_keys(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Official encoder keys -> ViTDet model keys; returns (mapped, unused with reasons)."""
    mapped, unused = {}, {}
    for key, tensor in state_dict.items():
        if key in UNUSED_ENCODER:
            unused[key] = UNUSED_ENCODER[key]
        elif key == "pos_embed" or key.startswith(("patch_embed.", "blocks.")):
            mapped[PREFIX + key] = tensor
        else:
            unused[key] = "not a tensor of the ViT encoder"
    return mapped, unused


def check_architecture(enc: EncoderInit, net_cfg) -> None:
    """The checkpoint must be the ViT the config builds (width, depth, heads, patch); say which config fits."""
    if enc.is_scratch:
        return
    a = enc.arch
    wanted = {"embed_dim": net_cfg.embed_dim, "depth": net_cfg.depth, "num_heads": net_cfg.num_heads,
              "patch_size": net_cfg.patch_size}
    wrong = {k: (a.get(k), v) for k, v in wanted.items() if a.get(k) != v}
    if wrong.get("num_heads") and a.get("heads_guessed") and len(wrong) == 1:
        wrong = {}  # a file that does not state its heads: trust the config
    if wrong:
        diff = ", ".join(f"{k} {got} in the checkpoint vs {want} in the config" for k, (got, want) in wrong.items())
        raise ArchitectureMismatchError(
            f"{enc.name} is a ViT with {diff}. Pick the protocol of that size (--config b / l / h / tiny) or "
            f"override the config to match, e.g. model.backbone.net.embed_dim={a.get('embed_dim')} "
            f"model.backbone.net.depth={a.get('depth')} model.backbone.net.num_heads={a.get('num_heads')} "
            f"model.backbone.net.patch_size={a.get('patch_size')}.")


def pretrain_img_size(enc: EncoderInit) -> int | None:
    """The pretraining resolution, for detectron2's `ViT(pretrain_img_size=...)` (None for scratch)."""
    if enc.is_scratch:
        return None
    pos = enc.state_dict.get("pos_embed")
    if pos is None:
        return enc.arch.get("img_size")
    side = int(round((pos.shape[1] - 1) ** 0.5))
    if side * side != pos.shape[1] - 1:
        raise ArchitectureMismatchError(
            f"{enc.name}: pos_embed has {pos.shape[1]} positions, not 1 cls + a square grid; ViTDet needs a square "
            "pretraining grid with a cls slot (pretrain_use_cls_token=True)")
    return side * enc.arch["patch_size"]


def load_encoder(model: torch.nn.Module, enc: EncoderInit) -> LoadReport:
    """Copy `enc`'s encoder into `model.backbone.net` (exact shapes required) and report by name."""
    model_sd = model.state_dict()
    report = LoadReport(init=enc.name, sha256=enc.sha256)
    if enc.is_scratch:
        report.new = sorted(model_sd)
        return report
    mapped, report.unused = map_encoder_keys(enc.state_dict)
    report.notes = list(enc.notes)
    report.unused.update({k: NOT_ENCODER_REASON for k in enc.not_encoder})
    missing = sorted(k for k in mapped if k not in model_sd)
    if missing:
        raise ArchitectureMismatchError(
            f"{enc.name}: encoder tensors with no place in the ViTDet backbone: {', '.join(missing[:8])}"
            + (" ..." if len(missing) > 8 else "") + " (a deeper checkpoint than the config?)")
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(model_sd[k].shape)}" for k, v in mapped.items()
           if v.shape != model_sd[k].shape]
    if bad:
        raise ArchitectureMismatchError(
            f"{enc.name}: tensors whose shape differs from the model (checkpoint vs model): " + "; ".join(bad[:6])
            + ". The pretraining resolution is set from the checkpoint; other shapes must match the config.")
    with torch.no_grad():
        incompatible = model.load_state_dict(mapped, strict=False)
    assert not incompatible.unexpected_keys, incompatible.unexpected_keys  # checked above
    report.loaded = {k[len(PREFIX):]: k for k in mapped}
    report.new = sorted(incompatible.missing_keys)
    return report
