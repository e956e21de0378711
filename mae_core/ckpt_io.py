"""Checkpoint files on disk: read without unpickling code, write atomically, hash.

Every file a user hands us is opened with `torch.load(weights_only=True)` (or safetensors, which
holds nothing executable): nothing is unpickled beyond tensors and plain containers. Writes go to
a temporary file that is renamed into place, so a killed run never leaves half a checkpoint.
`FORMATS` lives here because every read error lists the formats we know; `formats.sniff` tells
them apart.
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

from .errors import CheckpointFormatError

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


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """safetensors' own loader (tensors only); a broken file becomes a CheckpointFormatError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file as st_load_file

    try:
        return st_load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointFormatError(
            f"cannot read {path} as safetensors ({type(e).__name__}: {e}); the file may be truncated. "
            "Known formats: " + "; ".join(KNOWN_FORMATS)) from e


# ----------------------------------------------------------------------------- safetensors
ARCH_METADATA_KEY = "mae_transfer.arch"  # safetensors metadata: what the weights cannot say (heads, eps)


def is_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then the JSON header; torch files start 'PK'/0x80."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100 << 20


def safetensors_hints(path: Path) -> dict:
    """Heads / eps that `export_timm` records in the safetensors metadata (timm ignores it)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        recorded = (f.metadata() or {}).get(ARCH_METADATA_KEY)
    try:
        hints = json.loads(recorded) if recorded else {}
    except ValueError:
        return {}
    return {k: hints[k] for k in ("num_heads", "layer_norm_eps") if k in hints} if isinstance(hints, dict) else {}


def save_safetensors(sd: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """safetensors' save_file, atomically; tensors that share storage are copied (safetensors refuses them)."""
    from safetensors.torch import save_file

    path, seen, out = Path(path), set(), {}
    for k, v in sd.items():
        v = v.detach().contiguous()
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen and v.numel() else v
        seen.add(ptr)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(out, tmp, metadata={"format": "pt", **(metadata or {})})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
