"""Read and write MAE checkpoints safely, and load official-layout weights into a model.

Our file is `{'model': state_dict, 'meta': {...}}` with the official key names (DESIGN.md
contract), so the official code, timm and detectron2's ViTDet loader read it unchanged. Every file
a user hands us is opened with `torch.load(weights_only=True)`: nothing is unpickled beyond
tensors and plain containers. Telling the formats apart (official, timm, Hugging Face, ours) is
`formats.py`'s job; every reader there ends in an official-layout state dict that this module loads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from .errors import ArchitectureMismatchError, CheckpointFormatError
from .mae import MAE_PRESETS, MaskedAutoencoder
from .safetensors_io import ARCH_METADATA_KEY, save_safetensors
from .vit import arch_for_width_depth, resize_pos_embed

# format name -> what it is; `formats.sniff` returns one of these names, errors list the descriptions
FORMATS = {
    "mae-transfer": "mae-transfer ({'model', 'meta'}, meta.format 'mae-transfer/1')",
    "official-pretrain": "official MAE pretrain, encoder only ({'model': ...} with cls_token, pos_embed, "
                         "blocks.N.*, norm.*; mae_pretrain_vit_*.pth)",
    "official-full": "official MAE visualize / _full, encoder + decoder (mask_token, decoder_*)",
    "official-finetuned": "official MAE fine-tuned ({'model': ...} with fc_norm.* + head.*, no norm.*)",
    "timm": "timm ViT state dict (.pth / .safetensors, e.g. vit_*_patch16_224.mae; or a timm hub folder)",
    "hf-vitmae-pretraining": "Hugging Face ViTMAEForPreTraining folder (config.json + model.safetensors "
                             "or pytorch_model.bin)",
    "hf-vitmae-model": "Hugging Face ViTMAEModel folder",
    "hf-vit-classification": "Hugging Face ViTForImageClassification folder",
    "hf-vit-model": "Hugging Face ViTModel folder",
}
KNOWN_FORMATS = tuple(FORMATS.values())
POS_EMBED_KEYS = ("pos_embed", "decoder_pos_embed")


def save_atomic(obj: dict, path: str | Path) -> Path:
    """torch.save to a temp file in the same folder, fsync, then rename: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_file(path: str | Path) -> dict:
    """Load a checkpoint without executing pickled code; any failure becomes a CheckpointFormatError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"checkpoint {path} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise CheckpointFormatError(f"checkpoint {path} is empty (0 bytes): was the download or save interrupted?")
    try:
        # the official and timm training scripts store their argparse Namespace beside the weights
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = [line.strip() for line in str(e).splitlines() if "unsupported global" in line.lower()]
        if not refused:  # not a pickle at all
            raise CheckpointFormatError(
                f"cannot read {path} as a torch checkpoint (it is not a torch.save file, or it is corrupt). "
                "Known formats: " + "; ".join(KNOWN_FORMATS)) from e
        raise CheckpointFormatError(
            f"{path} needs more than tensors to load ({refused[0]}). We only load checkpoints with "
            "torch.load(weights_only=True), so arbitrary pickled objects are refused rather than executed. "
            "Re-save it as a plain state dict: torch.save({'model': model.state_dict()}, path).") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError, TypeError) as e:
        # torch's safe unpickler fails in many ways on bytes that are not a checkpoint
        raise CheckpointFormatError(
            f"cannot read {path} as a torch checkpoint ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "the file may be truncated or not a checkpoint. Known formats: " + "; ".join(KNOWN_FORMATS)) from e
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{path} holds a {type(obj).__name__}, not a dict of tensors. "
                                    "Known formats: " + "; ".join(KNOWN_FORMATS))
    return obj


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


def load_official_weights(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> dict:
    """Load an official-layout state dict into `model` (our MAE or a timm ViT), resizing pos-embeds.

    Position embeddings are resized bicubically (prefix/cls entries kept apart) to the model's grid.
    A tensor whose shape differs for another reason (another width, patch size...) is an architecture
    mismatch and raises, naming both architectures. Returns {'missing': [...], 'unexpected': [...]}.
    """
    own = model.state_dict()
    sd = dict(sd)
    grid, prefix = tuple(model.patch_embed.grid_size), getattr(model, "num_prefix_tokens", 1)
    for key in POS_EMBED_KEYS:
        if key in sd and key in own and sd[key].shape != own[key].shape and sd[key].shape[-1] == own[key].shape[-1]:
            sd[key] = resize_pos_embed(sd[key], grid, num_prefix_tokens=prefix)
    mismatched = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if mismatched and all(k.startswith("head.") for k in mismatched):
        raise ArchitectureMismatchError(
            f"{source} has a head for {sd['head.weight'].shape[0]} classes, the model one for "
            f"{own['head.weight'].shape[0]}: drop the checkpoint's head to train a new one "
            "(load_encoder_weights(..., drop_head=True)), or build the model with the checkpoint's class count.")
    if mismatched:
        found, expected = describe_arch(infer_mae_kwargs(sd)), describe_arch(infer_mae_kwargs(own))
        k = mismatched[0]
        raise ArchitectureMismatchError(
            f"{source} holds a {found}, but the model is a {expected}: e.g. {k} is {tuple(sd[k].shape)} in the "
            f"file and {tuple(own[k].shape)} in the model ({len(mismatched)} tensors differ). "
            "Pick the preset that matches the checkpoint.")
    result = model.load_state_dict(sd, strict=False)
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}


def load_mae_weights(model: MaskedAutoencoder, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> dict:
    """Load an official-layout state dict into our MAE (see `load_official_weights`)."""
    return load_official_weights(model, sd, source)


def load_encoder_weights(model: nn.Module, src, *, drop_head: bool = False) -> dict:
    """Load any checkpoint `formats.sniff` reads (a path or a CheckpointInfo) into our MAE or a timm ViT.

    Official fine-tuned keys are timm's, so one loader serves both models. `drop_head` leaves the
    model's classifier as initialised (a new task). Returns the missing/unexpected keys by name, the
    pos-embeds that were resized, the dropped keys, and the format that was read.
    """
    from .formats import CheckpointInfo, sniff  # formats builds on this module

    info = src if isinstance(src, CheckpointInfo) else sniff(src)
    dropped = [k for k in info.state_dict if drop_head and k.startswith("head.")]
    sd = {k: v for k, v in info.state_dict.items() if k not in dropped}
    own = model.state_dict()
    resized = [k for k in POS_EMBED_KEYS if k in sd and k in own and sd[k].shape != own[k].shape]
    report = load_official_weights(model, sd, source=info.source)
    return {**report, "resized": resized, "dropped": dropped, "format": info.format}


def build_mae_from_checkpoint(src, **overrides) -> tuple[MaskedAutoencoder, dict]:
    """Rebuild the MAE a checkpoint of any known format describes (meta, config, else shapes) and load it.

    `src` is a path or a CheckpointInfo. `norm_pix_loss` among the overrides states the decoder's
    target (`target.with_target`): needed for a decoder whose file records none and whose name is unknown.
    """
    from .formats import as_info
    from .target import with_target

    info = with_target(as_info(src), overrides.pop("norm_pix_loss", None))
    kwargs = {**info.mae_kwargs(), **overrides}
    model = info.build_mae(**overrides)
    report = load_official_weights(model, info.state_dict, source=info.source)
    return model, {"meta": info.meta, "model_kwargs": kwargs, "format": info.format, "notes": info.notes,
                   **report}


def guess_heads(embed_dim: int, decoder: bool = False) -> int:
    """Heads are not visible in a state dict: the official presets use 64-wide heads (ViT-H: 16 heads)
    in the encoder and 32-wide ones in the decoder (512 wide, 16 heads)."""
    if decoder:
        return max(1, embed_dim // 32)
    return {1280: 16}.get(embed_dim, max(1, embed_dim // 64))


def save_mae_checkpoint(path: str | Path, model: nn.Module, meta: dict, **extra) -> Path:
    """Write our format: {'model': state_dict, 'meta': meta, **extra}, atomically."""
    return save_atomic({"model": model.state_dict(), "meta": meta, **extra}, path)


# ----------------------------------------------------------------------------- writers
HF_KINDS = {"pretraining": "ViTMAEForPreTraining", "model": "ViTMAEModel",
            "classification": "ViTForImageClassification"}


def save_ours(src, path: str | Path, meta: dict | None = None) -> Path:
    """Write any readable checkpoint (path, CheckpointInfo, model or state dict) in our format.

    The meta records what was inferred (model kwargs with heads, layer-norm eps) and where the
    weights came from, so reading it back needs no guessing.
    """
    from .formats import as_info

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
    from .formats import DECODER_PREFIXES, as_info

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
    from .formats import DECODER_PREFIXES, as_info
    from .hf import hf_config_from_mae, hf_vit_config, mae_to_hf_state_dict

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
