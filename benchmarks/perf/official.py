"""The official MAE (`models_mae.py` of facebookresearch/mae) from a checkout, for the benchmarks only.

The official code targets timm 0.3.2 and an older numpy: its `Block(..., qk_scale=None)` and
`np.float` no longer exist. We make them work at import time, in this process only, without editing
the checkout: a `Block` that drops `qk_scale` (None there: the default scale, as timm's Block) and a
`np.float` alias of `float`. Never vendored: pass the path of a checkout (`--official PATH`).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

_CTOR = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "decoder_embed_dim",
         "decoder_depth", "decoder_num_heads", "mlp_ratio", "norm_pix_loss")


def _patch_timm_block() -> None:
    import timm.models.vision_transformer as tvt

    if "qk_scale" in inspect.signature(tvt.Block.__init__).parameters or getattr(tvt.Block, "_drops_qk_scale", 0):
        return
    base = tvt.Block

    class Block(base):  # timm >= 0.4 has no qk_scale; the official code passes None (the default scale)
        _drops_qk_scale = True

        def __init__(self, *args, qk_scale=None, **kwargs):
            if qk_scale is not None:
                raise ValueError("the official MAE passes qk_scale=None; another scale is not supported")
            super().__init__(*args, **kwargs)

    tvt.Block = Block


def load_models_mae(path: str | Path):
    """Import `models_mae` (and its `util` package) from an official checkout; returns the module."""
    root = Path(path).expanduser().resolve()
    if not (root / "models_mae.py").is_file():
        raise FileNotFoundError(f"{root} has no models_mae.py: pass a checkout of facebookresearch/mae")
    _patch_timm_block()
    if not hasattr(np, "float"):
        np.float = float  # util/pos_embed.py: np.arange(..., dtype=np.float), removed in numpy 1.24
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # models_mae imports util.pos_embed
    spec = importlib.util.spec_from_file_location("official_models_mae", root / "models_mae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_official(path: str | Path, kwargs: dict, state_dict: dict) -> nn.Module:
    """The official `MaskedAutoencoderViT` of the same configuration, carrying `state_dict` (our keys are theirs)."""
    model = load_models_mae(path).MaskedAutoencoderViT(
        **{k: kwargs[k] for k in _CTOR if k in kwargs}, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    model.load_state_dict(state_dict, strict=True)
    return model


def official_loss(model: nn.Module, imgs: torch.Tensor, mask_ratio: float, noise_seed: int) -> torch.Tensor:
    """The official forward draws its masking noise with `torch.rand(N, L)` on the input's device, the first
    random draw of the step: seeding just before it gives the noise `seeded_noise` gives our model."""
    torch.manual_seed(noise_seed)
    return model(imgs, mask_ratio=mask_ratio)[0]


def seeded_noise(batch: int, length: int, device: str, noise_seed: int) -> torch.Tensor:
    torch.manual_seed(noise_seed)
    return torch.rand(batch, length, device=device)
