"""Write any checkpoint we read in another library's format: ours, timm, Hugging Face.

Every writer starts from `formats.as_info` (official key names, inferred architecture), so one
reader serves every direction; what the weights cannot say (heads, layer-norm eps, the loss
target) goes into the format's own metadata where it has room.
"""

from __future__ import annotations

import json
from pathlib import Path

from .ckpt_io import ARCH_METADATA_KEY, save_atomic, save_safetensors, sha256_file
from .errors import CheckpointFormatError
from .formats import DECODER_PREFIXES, as_info
from .hf import hf_config_from_mae, hf_vit_config, mae_to_hf_state_dict
from .mae import MAE_PRESETS

HF_KINDS = {"pretraining": "ViTMAEForPreTraining", "model": "ViTMAEModel",
            "classification": "ViTForImageClassification"}


def save_ours(src, path: str | Path, meta: dict | None = None) -> Path:
    """Write any readable checkpoint (path, CheckpointInfo, model or state dict) in our format.

    The meta records what was inferred (model kwargs with heads, layer-norm eps) and where the
    weights came from, so reading it back needs no guessing.
    """
    info = as_info(src)
    if info.format == "mae-transfer":
        meta = {**info.meta, **(meta or {})}
    else:
        kw = info.mae_kwargs()
        preset = next((n for n, p in MAE_PRESETS.items()
                       if all(kw.get(k) == p[k] for k in ("embed_dim", "depth", "num_heads", "patch_size"))), "custom")
        sources = {str(f): sha256_file(f) for f in info.files}
        meta = {"format": "mae-transfer/1", "arch": preset, "model_kwargs": kw, "img_size": kw["img_size"],
                "patch_size": kw["patch_size"], "norm_pix_loss": kw["norm_pix_loss"],
                "layer_norm_eps": info.arch["layer_norm_eps"], "epoch": info.meta.get("epoch"),
                "run": {"converted_from": info.source, "source_format": info.format, "source_sha256": sources},
                **(meta or {})}
    return save_atomic({"model": dict(info.state_dict), "meta": meta}, path)


def export_timm(src, path: str | Path) -> Path:
    """Write the encoder (and head) as the bare state dict timm's `VisionTransformer` loads.

    `.safetensors` (as timm's hub files) or any other suffix for `torch.save`. The decoder is left
    out: timm has none. `CheckpointInfo.timm_kwargs()` gives the matching model arguments.
    """
    info = as_info(src)
    sd = {k: v for k, v in info.state_dict.items() if not k.startswith(DECODER_PREFIXES)}
    path = Path(path)
    if path.suffix == ".safetensors":  # safetensors has room for what the weights cannot say
        known = {"layer_norm_eps": info.arch["layer_norm_eps"]}
        if not info.arch["heads_guessed"]:
            known["num_heads"] = info.arch["num_heads"]
        return save_safetensors(sd, path, metadata={ARCH_METADATA_KEY: json.dumps(known)})
    return save_atomic(sd, path)


def export_hf(src, folder: str | Path, kind: str | None = None, *, layout: str = "legacy",
              mask_ratio: float | None = None) -> Path:
    """Write a folder (config.json + model.safetensors) that transformers' `from_pretrained` loads offline.

    kind: "pretraining" (ViTMAEForPreTraining, needs the decoder), "model" (ViTMAEModel, the encoder),
    "classification" (ViTForImageClassification: a cls-token head after the final norm); None picks
    from the contents. The legacy key layout is what the Hub holds and every transformers version reads.
    `mask_ratio` goes into the config (HF reads it from there): the source config's, else 0.75.
    """
    info = as_info(src)
    a, sd = info.arch, info.state_dict
    kind = kind or ("pretraining" if a["has_decoder"] else "classification" if a["has_head"] else "model")
    if kind not in HF_KINDS:
        raise ValueError(f"kind must be one of {', '.join(HF_KINDS)}, got {kind!r}")
    problem = _hf_export_problem(a, kind)
    if problem:
        raise CheckpointFormatError(f"cannot export {info.source} as a Hugging Face {HF_KINDS[kind]}: {problem}")
    if kind == "classification":
        encoder = {k: v for k, v in sd.items() if not k.startswith(("head.", *DECODER_PREFIXES))}
        hf_sd = mae_to_hf_state_dict(encoder, target="pretraining", layout=layout)  # `vit.` prefix, as ViT's
        hf_sd.update({"classifier." + k.split(".", 1)[1]: v for k, v in sd.items() if k.startswith("head.")})
        config = hf_vit_config(a)
    else:
        hf_sd = mae_to_hf_state_dict(sd, target=kind, layout=layout)
        if mask_ratio is None:
            mask_ratio = info.meta.get("mask_ratio", 0.75) if info.format.startswith("hf-") else 0.75
        config = hf_config_from_mae(info.mae_kwargs(), mask_ratio=mask_ratio, layer_norm_eps=a["layer_norm_eps"],
                                    qkv_bias=a["qkv_bias"], architectures=[HF_KINDS[kind]])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    save_safetensors(hf_sd, folder / "model.safetensors")
    return folder


def _hf_export_problem(a: dict, kind: str) -> str | None:
    """Why this architecture cannot be the HF class `kind` (None if it can)."""
    if a["fc_norm"] or not a["has_norm"]:
        return ("it ends in fc_norm (global average pooling, the official fine-tuned layout), but HF's ViT "
                "classifies the cls token after its final norm: export it to timm instead")
    if kind == "pretraining" and not a["has_decoder"]:
        return "it has no decoder: export it with kind='model' (ViTMAEModel)"
    if kind == "classification" and not a["has_head"]:
        return "it has no classification head"
    if kind != "classification" and a["has_head"]:
        return "its classification head has no place in ViTMAE: use kind='classification'"
    return None
