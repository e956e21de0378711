"""safetensors files: told apart from torch files by their header, written atomically, with our metadata.

safetensors holds tensors and a string metadata map, nothing executable; `export_timm` uses the map
for what the weights cannot say (heads, layer-norm eps), and timm ignores it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

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
