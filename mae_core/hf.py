"""Hugging Face `transformers` ViTMAE <-> official MAE weights, both directions, losslessly.

HF's ViTMAE is the same network as the official `models_mae.py` (same masking by argsort of
noise, same fixed sin-cos position embeddings, same loss); only the parameter names differ and
the fused `qkv` projection is stored as separate q/k/v. So conversion is renaming plus
splitting/fusing qkv, and the converted models give the same loss, prediction and mask.

HF has used two sets of names for the same modules:
  - "legacy": transformers 4.x modules and the files on the Hub (e.g. `facebook/vit-mae-base`):
    `encoder.layer.N.attention.attention.query`, `intermediate.dense`, `output.dense`, ...
  - "modular": newer transformers (5.x): `layers.N.attention.q_proj`, `mlp.fc1`, ...
We read both and write either; `layout="auto"` writes what the installed transformers uses.

The key mapping needs no `transformers`; only `hf_config_from_mae` and `layout="auto"` import it.
"""

from __future__ import annotations

import inspect
import re
from functools import lru_cache, partial

import torch
import torch.nn as nn

from .errors import ArchitectureMismatchError, CheckpointFormatError
from .mae import MAE_PRESETS, MaskedAutoencoder

LAYOUTS = ("legacy", "modular")
_DECODER = ("mask_token", "decoder_")  # official keys of the decoder

# official module -> HF module. "{vit}" is the encoder prefix ("vit." in ViTMAEForPreTraining,
# "" in ViTMAEModel); "{i}" is a block index. Outside the blocks both layouts use the same names.
_OUTSIDE_BLOCKS = {
    "cls_token": "{vit}embeddings.cls_token",
    "pos_embed": "{vit}embeddings.position_embeddings",
    "patch_embed.proj": "{vit}embeddings.patch_embeddings.projection",
    "norm": "{vit}layernorm",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder_embed": "decoder.decoder_embed",
    "decoder_norm": "decoder.decoder_norm",
    "decoder_pred": "decoder.decoder_pred",
}
_BLOCK_STACKS = {  # official stack -> (legacy, modular)
    "blocks": ("{vit}encoder.layer", "{vit}layers"),
    "decoder_blocks": ("decoder.decoder_layers", "decoder.decoder_layers"),
}
_IN_BLOCK = {  # module inside a block -> (legacy, modular)
    "norm1": ("layernorm_before", "layernorm_before"),
    "attn.proj": ("attention.output.dense", "attention.o_proj"),
    "norm2": ("layernorm_after", "layernorm_after"),
    "mlp.fc1": ("intermediate.dense", "mlp.fc1"),
    "mlp.fc2": ("output.dense", "mlp.fc2"),
    # the fused projection: rows [q; k; v] of qkv become three separate linears
    "attn.qkv": (("attention.attention.query", "attention.attention.key", "attention.attention.value"),
                 ("attention.q_proj", "attention.k_proj", "attention.v_proj")),
}


def _rename_table(layout: str) -> list[tuple[str, str, int | None]]:
    """(official module, HF module, qkv part or None) for one layout, with placeholders.

    The fused `attn.qkv` appears three times, once per q/k/v part (rows [q; k; v] of qkv).
    """
    col = LAYOUTS.index(layout)
    table = [(ours, hf, None) for ours, hf in _OUTSIDE_BLOCKS.items()]
    for stack, hf_stacks in _BLOCK_STACKS.items():
        for inner, hf_inner in _IN_BLOCK.items():
            ours, hf = f"{stack}.{{i}}.{inner}", hf_inner[col]
            parts = enumerate(hf) if isinstance(hf, tuple) else [(None, hf)]
            table += [(ours, f"{hf_stacks[col]}.{{i}}.{h}", part) for part, h in parts]
    return table


def _pattern(module: str, vit: str) -> re.Pattern:
    """A full-key regex for a module template: the block index and a .weight/.bias suffix are captured."""
    body = re.escape(module.replace("{vit}", vit)).replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile(f"^{body}(?P<suffix>\\.weight|\\.bias)?$")


def _fill(module: str, vit: str, match: re.Match) -> str:
    index, suffix = match.groupdict().get("i") or "", match["suffix"] or ""
    return module.replace("{vit}", vit).replace("{i}", index) + suffix


def _unknown(keys: list[str], what: str, expected: str) -> CheckpointFormatError:
    shown = ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")
    return CheckpointFormatError(f"{what} has keys this converter does not know: {shown}. "
                                 f"Expected {expected}.")


@lru_cache(maxsize=1)
def installed_layout() -> str:
    """The key layout of the installed transformers' ViTMAE, read off a tiny model (not a version guess)."""
    try:
        from transformers import ViTMAEConfig, ViTMAEModel
    except ImportError:
        return "legacy"  # what every transformers version (and the Hub) reads
    tiny = ViTMAEModel(ViTMAEConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                    intermediate_size=8, image_size=4, patch_size=2))
    return "modular" if any(".q_proj." in k for k in tiny.state_dict()) else "legacy"


def mae_to_hf_state_dict(sd: dict[str, torch.Tensor], target: str = "pretraining",
                         layout: str = "auto") -> dict[str, torch.Tensor]:
    """Official/our MAE keys -> HF ViTMAE keys.

    target="pretraining" gives `ViTMAEForPreTraining` keys (`vit.` + `decoder.`); an encoder-only
    dict gives only the `vit.` part (load it with strict=False, the decoder stays as initialised).
    target="model" gives `ViTMAEModel` keys (no prefix); decoder weights are left out, since
    ViTMAEModel is the encoder alone.
    """
    if target not in ("pretraining", "model"):
        raise ValueError(f"target must be 'pretraining' or 'model', got {target!r}")
    layout = installed_layout() if layout == "auto" else layout
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'auto' or one of {LAYOUTS}, got {layout!r}")
    vit = "vit." if target == "pretraining" else ""
    rules = [(_pattern(ours, ""), hf, part) for ours, hf, part in _rename_table(layout)]

    out, unknown = {}, []
    for key, tensor in sd.items():
        hits = [(hf, part, match) for pattern, hf, part in rules if (match := pattern.match(key))]
        if not hits:
            unknown.append(key)
        elif target == "model" and key.startswith(_DECODER):
            continue  # ViTMAEModel has no decoder
        for hf, part, match in hits:  # qkv: three hits; parts cloned so no two share storage (safetensors)
            out[_fill(hf, vit, match)] = tensor if part is None else tensor.chunk(3, dim=0)[part].clone()
    if unknown:
        raise _unknown(unknown, "MAE state dict",
                       "official MAE / timm names (cls_token, pos_embed, patch_embed.proj.*, blocks.N.*, "
                       "norm.*, and optionally mask_token, decoder_*); a fine-tuned checkpoint's "
                       "fc_norm/head have no place in ViTMAE: drop them first")
    return out


# transformers 5.x writes legacy names on save by reversing its load-time renames; its reversed
# `encoder.layer.` -> `layers.` also hits the decoder stack, so its files name it `decoder_encoder.layer`.
_READ_ALIASES = ((re.compile(r"^decoder\.decoder_encoder\.layer\."), "decoder.decoder_layers."),)


def hf_to_mae_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ViTMAE keys (ForPreTraining with `vit.`, or ViTMAEModel without; either layout) -> official keys.

    HF ViT (`ViTModel`, the `vit.` part of `ViTForImageClassification`) uses the same names, so its
    encoder converts too; strip `classifier.*` / `pooler.*` first.
    """
    for pattern, alias in _READ_ALIASES:
        sd = {pattern.sub(alias, k): v for k, v in sd.items()}
    vit = "vit." if any(k.startswith("vit.") for k in sd) else ""
    rules = [(_pattern(hf, vit), ours, part)
             for layout in LAYOUTS for ours, hf, part in _rename_table(layout)]
    out, qkv_parts, unknown = {}, {}, []  # qkv_parts: official key -> {part: tensor}
    for key, tensor in sd.items():
        hit = next(((ours, part, m) for pattern, ours, part in rules if (m := pattern.match(key))), None)
        if hit is None:
            unknown.append(key)
            continue
        ours, part, match = hit
        if part is None:
            out[_fill(ours, "", match)] = tensor
        else:
            qkv_parts.setdefault(_fill(ours, "", match), {})[part] = tensor
    if unknown:
        raise _unknown(unknown, "Hugging Face ViTMAE state dict",
                       "ViTMAEForPreTraining / ViTMAEModel keys (vit.embeddings.*, vit.layers.N.* or "
                       "vit.encoder.layer.N.*, vit.layernorm.*, decoder.*)")
    for name, parts in qkv_parts.items():
        if len(parts) != 3:
            missing = [("query", "key", "value")[j] for j in range(3) if j not in parts]
            raise CheckpointFormatError(f"{name}: the HF dict lacks the {'/'.join(missing)} projection; "
                                        "q, k and v are all needed to build the fused qkv")
        out[name] = torch.cat([parts[0], parts[1], parts[2]], dim=0)  # fused rows [q; k; v]
    return out


def is_hf_vitmae_state_dict(sd: dict) -> bool:
    """True if the keys look like HF ViTMAE (for format sniffing)."""
    return any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.")) for k in sd)


def hf_config_from_mae(model_or_kwargs, mask_ratio: float = 0.75, **overrides):
    """A `transformers.ViTMAEConfig` for an MAE (a model, its constructor kwargs, or a preset name).

    `layer_norm_eps` is the MAE's (1e-6, as the official code), not HF's default 1e-12; HF reads
    `mask_ratio` from the config, so pass the one you give our forward.
    """
    from transformers import ViTMAEConfig

    if isinstance(model_or_kwargs, MaskedAutoencoder):
        m = model_or_kwargs
        img, patch = tuple(m.patch_embed.img_size), tuple(m.patch_embed.patch_size)
        a = dict(embed_dim=m.cls_token.shape[-1], depth=len(m.blocks), num_heads=m.blocks[0].attn.num_heads,
                 intermediate=m.blocks[0].mlp.fc1.out_features, in_chans=m.in_chans,
                 decoder_embed_dim=m.mask_token.shape[-1], decoder_depth=len(m.decoder_blocks),
                 decoder_num_heads=m.decoder_blocks[0].attn.num_heads,
                 decoder_intermediate=m.decoder_blocks[0].mlp.fc1.out_features,
                 norm_pix_loss=m.norm_pix_loss, eps=m.norm.eps)
    else:
        if isinstance(model_or_kwargs, str):
            if model_or_kwargs not in MAE_PRESETS:
                raise ValueError(f"unknown MAE preset {model_or_kwargs!r}; known: {', '.join(MAE_PRESETS)}")
            model_or_kwargs = MAE_PRESETS[model_or_kwargs]
        defaults = {k: p.default for k, p in inspect.signature(MaskedAutoencoder).parameters.items()}
        kw = {**defaults, **model_or_kwargs}
        img = kw["img_size"] if isinstance(kw["img_size"], tuple) else (kw["img_size"],) * 2
        patch = kw["patch_size"] if isinstance(kw["patch_size"], tuple) else (kw["patch_size"],) * 2
        a = dict(kw, intermediate=int(kw["embed_dim"] * kw["mlp_ratio"]),
                 decoder_intermediate=int(kw["decoder_embed_dim"] * kw["mlp_ratio"]),
                 eps=getattr(kw["norm_layer"], "keywords", {}).get("eps", 1e-5))
    config = dict(
        hidden_size=a["embed_dim"], num_hidden_layers=a["depth"], num_attention_heads=a["num_heads"],
        intermediate_size=a["intermediate"], image_size=img[0] if img[0] == img[1] else img,
        patch_size=patch[0] if patch[0] == patch[1] else patch, num_channels=a["in_chans"],
        decoder_hidden_size=a["decoder_embed_dim"], decoder_num_hidden_layers=a["decoder_depth"],
        decoder_num_attention_heads=a["decoder_num_heads"],
        decoder_intermediate_size=a["decoder_intermediate"],
        norm_pix_loss=a["norm_pix_loss"], mask_ratio=mask_ratio, layer_norm_eps=a["eps"],
        qkv_bias=True, hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return ViTMAEConfig(**{**config, **overrides})


def mae_kwargs_from_hf_config(config) -> dict:
    """`MaskedAutoencoder` constructor kwargs for a ViTMAEConfig (the inverse of `hf_config_from_mae`)."""
    c = config
    if c.intermediate_size * c.decoder_hidden_size != c.decoder_intermediate_size * c.hidden_size:
        raise ArchitectureMismatchError(
            f"this ViTMAE has different MLP ratios in encoder ({c.intermediate_size}/{c.hidden_size}) and "
            f"decoder ({c.decoder_intermediate_size}/{c.decoder_hidden_size}); MaskedAutoencoder has one")
    return dict(
        img_size=c.image_size, patch_size=c.patch_size, in_chans=c.num_channels,
        embed_dim=c.hidden_size, depth=c.num_hidden_layers, num_heads=c.num_attention_heads,
        decoder_embed_dim=c.decoder_hidden_size, decoder_depth=c.decoder_num_hidden_layers,
        decoder_num_heads=c.decoder_num_attention_heads, mlp_ratio=c.intermediate_size / c.hidden_size,
        norm_pix_loss=c.norm_pix_loss, norm_layer=partial(nn.LayerNorm, eps=c.layer_norm_eps))


def hf_vit_config(arch: dict):
    """A `transformers.ViTConfig` for `ViTForImageClassification` from a `formats.CheckpointInfo.arch`."""
    from transformers import ViTConfig

    return ViTConfig(
        hidden_size=arch["embed_dim"], num_hidden_layers=arch["depth"], num_attention_heads=arch["num_heads"],
        intermediate_size=round(arch["embed_dim"] * arch["mlp_ratio"]), image_size=arch["img_size"],
        patch_size=arch["patch_size"], num_channels=arch["in_chans"], qkv_bias=arch["qkv_bias"],
        layer_norm_eps=arch["layer_norm_eps"], hidden_act="gelu", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=arch["num_classes"],
        architectures=["ViTForImageClassification"])
