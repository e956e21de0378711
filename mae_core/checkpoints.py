"""Load official-layout weights into a model, and report what each tensor did.

`formats.sniff` reads every format into official MAE / timm key names; here those weights go into
our MAE or a timm ViT (position embeddings resized, other shape differences refused), and our own
file is written: `{'model': state_dict, 'meta': {...}}` (docs/design.md, "Checkpoints on disk").
`LoadReport` is the one account of an `--init` load for the transfer adapters: every tensor loaded,
new, unused (with why) or resized, by name, written to the run's `init_report.json`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .ckpt_io import save_atomic
from .errors import ArchitectureMismatchError
from .formats import CheckpointInfo, as_info, sniff
from .infer import describe_arch, infer_mae_kwargs
from .mae import MaskedAutoencoder
from .target import with_target
from .vit import resize_pos_embed

POS_EMBED_KEYS = ("pos_embed", "decoder_pos_embed")


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
    info = with_target(as_info(src), overrides.pop("norm_pix_loss", None))
    kwargs = {**info.mae_kwargs(), **overrides}
    model = info.build_mae(**overrides)
    report = load_official_weights(model, info.state_dict, source=info.source)
    return model, {"meta": info.meta, "model_kwargs": kwargs, "format": info.format, "notes": info.notes,
                   **report}


def save_mae_checkpoint(path: str | Path, model: nn.Module, meta: dict, **extra) -> Path:
    """Write our format: {'model': state_dict, 'meta': meta, **extra}, atomically."""
    return save_atomic({"model": model.state_dict(), "meta": meta, **extra}, path)


INIT_REPORT = "init_report.json"


@dataclass
class LoadReport:
    """What an `--init` load did to every tensor, by name: nothing is dropped silently.

    One report for every adapter (detectron2, mmseg), so `init_report.json` reads the same for each.
    """

    init: str = ""  # "scratch", or the checkpoint's file / folder name
    loaded: dict[str, str] = field(default_factory=dict)  # checkpoint key -> model key
    new: list[str] = field(default_factory=list)  # model keys the checkpoint has no tensor for (initialised fresh)
    unused: dict[str, str] = field(default_factory=dict)  # checkpoint key -> why the model does not take it
    resized: dict[str, list] = field(default_factory=dict)  # model key -> [checkpoint shape, model shape]
    notes: list[str] = field(default_factory=list)  # what was done to the weights on the way in (resampling)
    sha256: str | None = None  # of the checkpoint file (None for scratch and folders)

    def new_groups(self) -> dict[str, int]:
        """New keys counted by kind: block indices folded (`backbone.layers.*.gamma_1`), else the module."""
        groups: dict[str, int] = {}
        for k in self.new:
            g = re.sub(r"\.\d+(?=\.)", ".*", k)
            g = g if "*" in g else ".".join(k.split(".")[:2])
            groups[g] = groups.get(g, 0) + 1
        return groups

    def summary(self) -> str:
        if not self.loaded:
            return f"init {self.init}: every weight initialised fresh ({len(self.new)} tensors)"
        new = ", ".join(f"{g} ({n})" for g, n in sorted(self.new_groups().items()))
        why: dict[str, list[str]] = {}
        for k, reason in sorted(self.unused.items()):
            why.setdefault(reason, []).append(k)
        lines = [f"init {self.init}: {len(self.loaded)} encoder tensors loaded",
                 f"  new ({len(self.new)}): {new or 'none'}", f"  unused ({len(self.unused)}):"]
        lines += [f"    {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}: {reason}"
                  for reason, keys in why.items()]
        lines += [f"  resized {k}: {a} -> {b}" for k, (a, b) in self.resized.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)

    def compact(self) -> dict:
        """For a run record: counts, and names only where something is not loaded."""
        return {"init": self.init, "loaded": len(self.loaded), "new": self.new_groups(), "unused": sorted(self.unused),
                "resized": self.resized, "notes": self.notes}

    def write(self, folder: str | Path) -> Path:
        """`<folder>/init_report.json`, the full report (every run of every adapter writes it so)."""
        path = Path(folder) / INIT_REPORT
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path
