"""Layer-wise learning-rate decay for ViT fine-tuning, as the official `util/lr_decay.py` (after BEiT).

With L blocks there are L + 2 "layers": 0 = patch embedding, cls token and pos-embed; i + 1 = block
i; L + 1 = everything after the blocks (final norm / fc_norm, head). Layer k gets
lr x decay^(L + 1 - k), so the head trains at the full rate and the embedding at decay^(L + 1).
Kept rather than timm's `param_groups_layer_decay`: timm gives the same groups for the global-pool
model, but puts the final `norm` of the cls-token model at the last block's rate; the official code
(and we) give it the head's.
"""

from __future__ import annotations

import torch.nn as nn

NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "dist_token")  # timm's VisionTransformer.no_weight_decay()


def layer_id_for_vit(name: str, num_layers: int) -> int:
    """The official `get_layer_id_for_vit`; `num_layers` is the number of blocks + 1."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups_layer_decay(model: nn.Module, weight_decay: float = 0.05, layer_decay: float = 0.75,
                             no_weight_decay: tuple[str, ...] = NO_WEIGHT_DECAY) -> list[dict]:
    """One optimizer group per (layer, decayed or not) with its `lr_scale` (read by `optim.set_lr`)."""
    num_layers = len(model.blocks) + 1
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim == 1 or name in no_weight_decay
        layer_id = layer_id_for_vit(name, num_layers)
        key = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            groups[key] = {"lr_scale": layer_decay ** (num_layers - layer_id),
                           "weight_decay": 0.0 if no_decay else weight_decay, "params": [], "names": []}
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return list(groups.values())
