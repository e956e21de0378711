"""A pipeline config (pipelines/*.yaml) read and checked: its keys, its inits, its data roots.

`maet pipeline` (pipeline.py) plans stages from what this module returns; nothing here runs anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from mae_core.errors import MAETransferError

TASKS = ("finetune", "linprobe", "detection", "segmentation")
BUILTIN_INITS = ("mae", "supervised", "scratch")
LAYOUT_OF = {"pretrain": "imagenet", "imagenet": "imagenet", "coco": "coco", "ade20k": "ade20k"}


class PipelineError(MAETransferError):
    """A pipeline config or stage that cannot run as asked."""


def merged(base: dict, change: dict) -> dict:
    """`base` with `change` applied: nested mappings merge key by key, a `null` removes the key, the rest replaces."""
    out = dict(base)
    for key, value in change.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The YAML, on top of its `_base_` (a path relative to it, as in mmengine configs) if it names one: a
    variant of a pipeline (another pretraining seed) states only what differs."""
    if not path.is_file():
        raise PipelineError(f"pipeline config {path} does not exist; the shipped ones are in pipelines/")
    cfg = yaml.safe_load(path.read_text()) or {}
    if not isinstance(cfg, dict):
        raise PipelineError(f"{path}: a pipeline config is a mapping of keys (name, data, inits, ...), "
                            f"not a {type(cfg).__name__}")
    base = cfg.pop("_base_", None)
    if base is None:
        return cfg
    base_path = (path.parent / str(base)).resolve()
    if base_path in seen:
        raise PipelineError(f"{path}: _base_ {base} leads back to itself")
    return merged(read_yaml(base_path, (*seen, path.resolve())), cfg)


def load_config(path: str | Path) -> dict:
    path = Path(path)
    cfg = read_yaml(path)
    unknown = set(cfg) - {"name", "description", "output_dir", "results_dir", "tables_dir", "seeds", "launcher",
                          "slurm", "jobs", "data", "pretrain", "supervised", "inits", *TASKS}
    if unknown:
        raise PipelineError(f"{path}: unknown keys {sorted(unknown)}")
    for required in ("name", "data", "inits"):
        if required not in cfg:
            raise PipelineError(f"{path}: the config needs '{required}'")
    cfg.setdefault("output_dir", f"output/pipelines/{cfg['name']}")
    cfg.setdefault("seeds", [0])
    return cfg


def inits_of(cfg: dict) -> dict[str, str]:
    """Init name -> 'mae' | 'supervised' | 'scratch' | a checkpoint path (published files)."""
    inits = {}
    for item in cfg["inits"]:
        if isinstance(item, str) and item in BUILTIN_INITS:
            inits[item] = item
        elif isinstance(item, dict) and len(item) == 1:
            (name, path), = item.items()
            inits[str(name)] = str(path)
        else:
            raise PipelineError(f"inits: {item!r} is neither one of {BUILTIN_INITS} nor {{name: checkpoint path}}")
    return inits


def scratch_row_is_supervised(cfg: dict, roots: dict[str, Path]) -> bool:
    """Whether the fine-tune table's scratch row is the supervised stage's run (`finetune: {scratch_row:
    supervised}`): one run, not two, when both would train the same ViT from scratch on the same ImageNet
    with the same recipe. Refused where the two data roots differ: the row must be measured on its own data."""
    finetune = cfg.get("finetune") or {}
    if "scratch_row" not in finetune:
        return False
    if finetune["scratch_row"] != "supervised":
        raise PipelineError(f"finetune.scratch_row: {finetune['scratch_row']!r}; the only stage it can name is "
                            "'supervised' (leave it out to fine-tune the scratch row on its own)")
    if "supervised" not in cfg:
        raise PipelineError("finetune.scratch_row: supervised needs a `supervised:` section (the recipe of that run)")
    pretrain, imagenet = roots.get("pretrain"), roots.get("imagenet")
    if pretrain is None or imagenet is None or Path(pretrain).resolve() != Path(imagenet).resolve():
        raise PipelineError(f"finetune.scratch_row: supervised reuses the supervised stage, which trains on "
                            f"data.pretrain ({pretrain}), as the scratch row of the fine-tune table on data.imagenet "
                            f"({imagenet}); that needs one folder for both. Leave scratch_row out to train the row "
                            "on its own data.")
    return "scratch" in finetune.get("inits", list(inits_of(cfg)))


def data_roots(cfg: dict, out: Path) -> dict[str, Path]:
    """The roots per layout: generated under the output folder, or the real ones (checked to exist)."""
    data = cfg["data"]
    if "generate" in data:
        gen = data["generate"]
        key = content_key({"generate": gen})[:10]
        base = out / f"data-{key}"
        return {"pretrain": base / "pretrain" / "imagenet", "imagenet": base / "downstream" / "imagenet",
                "coco": base / "downstream" / "coco", "ade20k": base / "downstream" / "ade20k"}
    return {name: Path(data[name]) for name in LAYOUT_OF if name in data}


def tables_dir(cfg: dict) -> Path:
    """Where the pipeline's tables go: the config's `tables_dir`, else results/tables."""
    return Path(cfg.get("tables_dir") or "results/tables")


def content_key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
