"""What `--init` means for a transfer run: a pretrained ViT encoder in the official key layout, or scratch.

Detection and segmentation both start here: any checkpoint `mae_core.formats.sniff` reads (ours,
official pretrain / full / fine-tuned, timm, Hugging Face, a supervised classifier of `maet
finetune`) becomes the official encoder keys (`cls_token`, `pos_embed`, `patch_embed.proj.*`,
`blocks.N.*`, `norm.*`/`fc_norm.*`) plus the list of what is not an encoder tensor (decoder, mask
token, classifier head). Each adapter then maps these names onto its framework and reports, by
name, which of its keys were new and which of ours it did not use: nothing is dropped silently.
A backbone of another patch size gets the encoder resampled to its own (`mae_core.resample`: the
published ViT-H is patch 14, ViTDet-H patch 16), with a note saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mae_core.ckpt_io import sha256_file
from mae_core.formats import DECODER_PREFIXES, CheckpointInfo, sniff
from mae_core.resample import resample_patch_size

SCRATCH = "scratch"
NOT_ENCODER_PREFIXES = (*DECODER_PREFIXES, "head.")  # fc_norm stays: fine-tuned files keep their last norm there
NOT_ENCODER_REASON = "decoder / mask token / classifier head: not part of the encoder"  # the reports' line


@dataclass
class EncoderInit:
    """An init for a transfer backbone; `state_dict` is empty for scratch."""

    name: str  # "scratch", or the checkpoint's file/folder name (the run record's `init`)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)  # official encoder keys only
    not_encoder: list[str] = field(default_factory=list)  # decoder / mask token / head keys of the file
    info: CheckpointInfo | None = None
    sha256: str | None = None  # of the file (None for scratch and folders)
    notes: list[str] = field(default_factory=list)  # what was done to the weights on the way in

    @property
    def is_scratch(self) -> bool:
        return self.info is None

    @property
    def arch(self) -> dict:
        return self.info.arch if self.info else {}


def read_encoder(init: str | Path, patch_size: int | None = None) -> EncoderInit:
    """Read `--init`: 'scratch', or a checkpoint file / HF or timm folder of any known format.

    `patch_size`: the backbone's; an encoder of another patch size is resampled to it (noted).
    """
    if str(init) == SCRATCH:
        return EncoderInit(name=SCRATCH)
    path = Path(init)
    info = sniff(path)
    not_encoder = sorted(k for k in info.state_dict if k.startswith(NOT_ENCODER_PREFIXES))
    notes = []
    if patch_size and patch_size != info.arch["patch_size"]:
        old = info.arch["patch_size"]
        info, changes = resample_patch_size(info, patch_size)
        notes = [f"{path.name} is patch {old}, the backbone patch {patch_size}: resampled on the way in (as "
                 "ViTDet-H starts from the patch-14 ViT-H MAE converted to patch 16)", *changes]
    encoder = {k: v for k, v in info.state_dict.items() if k not in set(not_encoder)}
    return EncoderInit(name=path.name, state_dict=encoder, not_encoder=not_encoder, info=info,
                       sha256=sha256_file(path) if path.is_file() else None, notes=notes)
