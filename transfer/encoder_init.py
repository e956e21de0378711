"""What `--init` means for a transfer run: a pretrained ViT encoder in the official key layout, or scratch.

Detection and segmentation both start here: any checkpoint `mae_core.formats.sniff` reads (ours,
official pretrain / full / fine-tuned, timm, Hugging Face, a supervised classifier of `maet
finetune`) becomes the official encoder keys (`cls_token`, `pos_embed`, `patch_embed.proj.*`,
`blocks.N.*`, `norm.*`/`fc_norm.*`) plus the list of what is not an encoder tensor (decoder, mask
token, classifier head). Each adapter then maps these names onto its framework and reports, by
name, which of its keys were new and which of ours it did not use: nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mae_core.checkpoints import sha256_file
from mae_core.formats import DECODER_PREFIXES, CheckpointInfo, sniff

SCRATCH = "scratch"
NOT_ENCODER_PREFIXES = (*DECODER_PREFIXES, "head.")  # fc_norm stays: fine-tuned files keep their last norm there


@dataclass
class EncoderInit:
    """An init for a transfer backbone; `state_dict` is empty for scratch."""

    name: str  # "scratch", or the checkpoint's file/folder name (the run record's `init`)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)  # official encoder keys only
    not_encoder: list[str] = field(default_factory=list)  # decoder / mask token / head keys of the file
    info: CheckpointInfo | None = None
    sha256: str | None = None  # of the file (None for scratch and folders)

    @property
    def is_scratch(self) -> bool:
        return self.info is None

    @property
    def arch(self) -> dict:
        return self.info.arch if self.info else {}


def read_encoder(init: str | Path) -> EncoderInit:
    """Read `--init`: 'scratch', or a checkpoint file / HF or timm folder of any known format."""
    if str(init) == SCRATCH:
        return EncoderInit(name=SCRATCH)
    path = Path(init)
    info = sniff(path)
    not_encoder = sorted(k for k in info.state_dict if k.startswith(NOT_ENCODER_PREFIXES))
    encoder = {k: v for k, v in info.state_dict.items() if k not in set(not_encoder)}
    return EncoderInit(name=path.name, state_dict=encoder, not_encoder=not_encoder, info=info,
                       sha256=sha256_file(path) if path.is_file() else None)
