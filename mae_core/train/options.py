"""Options every training engine shares (pretraining, fine-tuning, linear probing), declared once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .distributed import default_num_workers


@dataclass(kw_only=True)
class RunOptions:
    """Seeding, hardware, checkpointing and logging; engine configs add their recipe on top."""

    seed: int = 0
    num_workers: int = field(default_factory=default_num_workers)
    device: str = "auto"
    precision: str = "auto"  # fp32 | fp16 | bf16; auto = fp16 on CUDA, fp32 on CPU
    save_every: int = 1
    log_every: int = 10
    resume: str | None = None  # a checkpoint-last.pth; None = auto-resume from output_dir if present
    skip_corrupt: bool = False
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
