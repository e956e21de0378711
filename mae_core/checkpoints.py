"""Read and write MAE checkpoints safely: ours, and the official MAE files (with or without decoder).

Our file is `{'model': state_dict, 'meta': {...}}` with the official key names (DESIGN.md
contract), so the official code, timm and detectron2's ViTDet loader read it unchanged. Every file
a user hands us is opened with `torch.load(weights_only=True)`: nothing is unpickled beyond
tensors and plain containers.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from .errors import ArchitectureMismatchError, CheckpointFormatError
from .mae import MAE_PRESETS, MaskedAutoencoder
from .vit import arch_for_width_depth, resize_pos_embed

KNOWN_FORMATS = (
    "mae-transfer ({'model', 'meta'})",
    "official MAE pretrain / visualize / full ({'model': ...} with cls_token, pos_embed, blocks.N.*)",
)
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
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line]
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
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    grid = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5)) if "pos_embed" in sd else 224 // patch_size
    kwargs = dict(img_size=grid * patch_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                  depth=depth, mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim)
    if "decoder_embed.weight" in sd:
        kwargs["decoder_embed_dim"] = sd["decoder_embed.weight"].shape[0]
        kwargs["decoder_depth"] = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("decoder_blocks."))
    return kwargs


def describe_arch(kwargs: dict) -> str:
    name = arch_for_width_depth(kwargs["embed_dim"], kwargs["depth"]) or "custom ViT"
    return (f"{name} (width {kwargs['embed_dim']}, depth {kwargs['depth']}, patch {kwargs['patch_size']}, "
            f"{kwargs['img_size']} px)")


def load_mae_weights(model: MaskedAutoencoder, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> dict:
    """Load an official-layout state dict into `model`, resizing pos-embeds; report missing/unexpected keys.

    A tensor whose shape differs for another reason (another width, patch size...) is an architecture
    mismatch and raises, naming both architectures. Returns {'missing': [...], 'unexpected': [...]}.
    """
    own = model.state_dict()
    sd = dict(sd)
    for key in POS_EMBED_KEYS:
        if key in sd and key in own and sd[key].shape != own[key].shape and sd[key].shape[-1] == own[key].shape[-1]:
            sd[key] = resize_pos_embed(sd[key], model.grid_size)
    mismatched = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if mismatched:
        found, expected = describe_arch(infer_mae_kwargs(sd)), describe_arch(
            dict(embed_dim=model.pos_embed.shape[-1], depth=len(model.blocks), patch_size=model.patch_size,
                 img_size=model.img_size))
        k = mismatched[0]
        raise ArchitectureMismatchError(
            f"{source} holds a {found}, but the model is a {expected}: e.g. {k} is {tuple(sd[k].shape)} in the "
            f"file and {tuple(own[k].shape)} in the model ({len(mismatched)} tensors differ). "
            "Pick the preset that matches the checkpoint.")
    result = model.load_state_dict(sd, strict=False)
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}


def build_mae_from_checkpoint(path: str | Path, **overrides) -> tuple[MaskedAutoencoder, dict]:
    """Rebuild the MAE a checkpoint describes (from its meta, else from tensor shapes) and load it."""
    obj = load_file(path)
    sd = mae_state_dict(obj, source=str(path))
    meta = obj.get("meta", {}) if isinstance(obj.get("meta"), dict) else {}
    kwargs = dict(meta.get("model_kwargs") or infer_mae_kwargs(sd))
    if "model_kwargs" not in meta:
        preset = MAE_PRESETS.get(meta.get("arch", ""), {})
        kwargs = {**{k: v for k, v in preset.items() if k.startswith("decoder_")}, **kwargs}
        kwargs.setdefault("num_heads", _guess_heads(kwargs["embed_dim"]))
        kwargs.setdefault("norm_pix_loss", bool(meta.get("norm_pix_loss", False)))
    kwargs.update(overrides)
    model = MaskedAutoencoder(**kwargs)
    report = load_mae_weights(model, sd, source=str(path))
    return model, {"meta": meta, "model_kwargs": kwargs, **report}


def _guess_heads(embed_dim: int) -> int:
    """Heads are not visible in a state dict; official presets use 64-wide heads (80 for ViT-H)."""
    return {1280: 16}.get(embed_dim, max(1, embed_dim // 64))


def save_mae_checkpoint(path: str | Path, model: nn.Module, meta: dict, **extra) -> Path:
    """Write our format: {'model': state_dict, 'meta': meta, **extra}, atomically."""
    return save_atomic({"model": model.state_dict(), "meta": meta, **extra}, path)
