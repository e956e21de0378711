"""Options every training engine shares (pretraining, fine-tuning, linear probing), declared once.

Each field carries its own help and its valid range (`opt`), so the command line, the Python API and
the docs read one declaration: `maet` turns the metadata into argparse types that refuse a bad value
before any work starts, and `check_options` refuses the same values from Python.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OptionError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")  # no torch here: `maet --help` reads this module (precision.py uses it)
# What a path option must be: an existing folder, an existing file or folder, a folder we can create,
# or a checkpoint / 'scratch'.
PATH_KINDS = ("dir", "exists", "output", "init")


def default_num_workers() -> int:
    """Data-loader workers per process: the official 8, or fewer on a machine with fewer cores."""
    return max(1, min(8, (os.cpu_count() or 1)))


def opt(default=dataclasses.MISSING, help: str = "", *, factory=None, min=None, max=None, choices=None,
        path: str | None = None):
    """A dataclass field with its help text and the values it accepts (min/max inclusive)."""
    assert path is None or path in PATH_KINDS, path
    meta = {"help": help, "min": min, "max": max, "choices": tuple(choices) if choices else None, "path": path}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def value_problem(value, *, min=None, max=None, choices=None, path=None) -> str | None:
    """What is wrong with one option value, or None: the one rule `check_options` and maet's argparse types share
    (`path` here: the input kinds dir / exists / init; whether an output folder can be made is the CLI's probe)."""
    if choices and value not in choices:
        return f"must be one of {', '.join(map(str, choices))}; got {value!r}"
    if min is not None and value < min:
        return f"must be >= {min}; got {value}"
    if max is not None and value > max:
        return f"must be <= {max}; got {value}"
    if path in ("dir", "exists") or (path == "init" and value != "scratch"):
        p = Path(value).expanduser()
        if not p.exists():
            return f"no such {'folder' if path == 'dir' else 'file or folder'}: {value}"
        if path == "dir" and not p.is_dir():
            return f"{value} is a file; a folder is expected"
    return None


def check_options(cfg) -> None:
    """Refuse out-of-range numbers, unknown choices and missing input paths of a config (Python API users)."""
    for f in dataclasses.fields(cfg):
        m, value = f.metadata, getattr(cfg, f.name)
        if not m or value is None:
            continue
        problem = value_problem(value, min=m.get("min"), max=m.get("max"), choices=m.get("choices"),
                                path=m.get("path"))
        if problem:
            name = "--" + f.name.replace("_", "-")
            raise OptionError(f"{name}{' ' if problem.startswith('must') else ': '}{problem}")


@dataclass(kw_only=True)
class RunOptions:
    """Seeding, hardware, checkpointing and logging; engine configs add their recipe on top."""

    seed: int = opt(0, "seed of the weights' init, the data order, augmentation and masking", min=0)
    num_workers: int = opt(help="data-loader worker processes per training process (default: min(8, CPUs))",
                           factory=default_num_workers, min=0)
    device: str = opt("auto", "cuda, cpu, or auto (cuda when torch sees one)", choices=DEVICES)
    precision: str = opt("auto", "fp32, fp16 (CUDA, with a grad scaler), bf16, or auto (fp16 on CUDA, fp32 on "
                                 "CPU); bf16 is fast only on CPUs with native bf16 (AVX-512 BF16, AMX)",
                         choices=("auto", *PRECISIONS))
    save_every: int = opt(1, "write the resumable checkpoint-last.pth every N epochs", min=1)
    log_every: int = opt(10, "write a log.jsonl line every N steps", min=1)
    resume: bool = opt(True, "continue from checkpoint-last.pth in --output-dir if a run left one (--no-resume: "
                             "start over)")
    resume_from: str | None = opt(None, "resume from this checkpoint-last.pth instead of the one in --output-dir",
                                  path="exists")
    skip_corrupt: bool = opt(False, "skip unreadable images (listed in the log) instead of stopping")
    progress: bool = opt(True, "show a progress bar")

    def __post_init__(self):
        check_options(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
