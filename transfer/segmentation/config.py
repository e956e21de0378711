"""The protocols by short name, and the mmengine Config of a run: loaded, overridden, edited.

A protocol is an mmengine config file under `configs/` that `_base_`s mmseg's own `mae/` UperNet config (the
published ViT-B / ViT-L, and the tiny CPU one). Users change anything else with `--cfg-options`, read by
mmengine's `DictAction` and merged with `Config.merge_from_dict`, as mmseg's `tools/train.py` does. As
`transfer/detection/config.py` for detectron2; mmengine and mmseg are imported inside the functions, so
`maet --help` does not load them.
"""

from __future__ import annotations

from pathlib import Path

from mae_core.errors import MAETransferError

CONFIG_DIR = Path(__file__).parent / "configs"
PROTOCOLS = {  # short names for --config, as detection's
    "tiny": "mae_vit_tiny_upernet_synthetic_ade20k_64x64.py",
    "vit-b": "mae_vit_base_upernet_ade20k_512x512_160k.py",
    "vit-l": "mae_vit_large_upernet_ade20k_512x512_160k.py",
}
DATALOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


class SegmentationConfigError(MAETransferError):
    """A --config / option combination that cannot make a run (unknown config, AMP without a GPU, ...)."""


def config_path(config: str | Path) -> Path:
    """A protocol name (tiny, vit-b, vit-l), a file name in our configs folder, or any config path."""
    config = str(config)
    for candidate in (CONFIG_DIR / PROTOCOLS.get(config, config), CONFIG_DIR / f"{config}.py", Path(config)):
        if candidate.is_file():
            return candidate
    raise SegmentationConfigError(f"no config {config!r}: use one of {', '.join(PROTOCOLS)}, a file of "
                                  f"{CONFIG_DIR}, or a path to an mmseg config")


def load_config(config: str | Path, cfg_options: dict | None = None):
    """`Config.fromfile` + the `--cfg-options` dict (mmengine's DictAction output), as mmseg's tools/train.py."""
    from mmengine import Config

    cfg = Config.fromfile(str(config_path(config)))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def config_classes(cfg) -> list[str]:
    """Class names the config trains (its dataset's metainfo, else mmseg's dataset class METAINFO)."""
    ds = cfg.train_dataloader.dataset
    names = (ds.get("metainfo") or {}).get("classes")
    if names is None:
        from mmseg.registry import DATASETS

        names = DATASETS.get(ds.type).METAINFO["classes"]
    return list(names)


def set_classes(cfg, classes: list[str]) -> None:
    """Heads and datasets for these classes; ADE20KDataset (150 fixed names) becomes its ADE-layout base class."""
    from mmseg.datasets import ADE20KDataset

    for head in ("decode_head", "auxiliary_head"):
        if cfg.model.get(head):
            cfg.model[head].num_classes = len(classes)
    for name in DATALOADERS:
        ds = cfg[name].dataset
        if ds.type == "ADE20KDataset" and list(classes) != list(ADE20KDataset.METAINFO["classes"]):
            ds.update(type="BaseSegDataset", img_suffix=".jpg", seg_map_suffix=".png", reduce_zero_label=True)
        ds.metainfo = dict(classes=tuple(classes))


def set_max_iters(cfg, max_iters: int) -> None:
    """Another schedule length: scheduler boundaries scale with it (warm-up stays the same fraction)."""
    old = cfg.train_cfg.max_iters
    cfg.train_cfg.max_iters = max_iters

    def scaled(b: int) -> int:
        return max_iters if b == old else (0 if b == 0 else min(max_iters - 1, max(1, round(b * max_iters / old))))

    for sched in cfg.param_scheduler:
        sched.begin, sched.end = scaled(sched.get("begin", 0)), scaled(sched.get("end", old))
    cfg.train_cfg.val_interval = min(cfg.train_cfg.val_interval, max_iters)
    cfg.default_hooks.checkpoint.interval = min(cfg.default_hooks.checkpoint.interval, max_iters)


def adapt_to_device(cfg, distributed: bool, amp: bool) -> None:
    """CPU: gloo for NCCL, our DDP wrapper (BN for SyncBN, no device_ids). `--amp`: AmpOptimWrapper (GPU)."""
    import torch

    if amp:
        if not torch.cuda.is_available():
            raise SegmentationConfigError("--amp needs a CUDA GPU; leave it off on CPU")
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    if torch.cuda.is_available():
        return
    cfg.env_cfg.dist_cfg = dict(backend="gloo")
    if distributed:
        cfg.model_wrapper_cfg = dict(type="CPUDistributedDataParallel", broadcast_buffers=False)


def arch_name(cfg) -> str:
    """The record's arch: the encoder preset of the backbone's width and depth, then `_upernet`."""
    from mae_core.vit import arch_for_width_depth

    b = cfg.model.backbone
    name = arch_for_width_depth(b.embed_dims, b.num_layers) or f"vit_w{b.embed_dims}_d{b.num_layers}"
    return f"{name}_patch{b.patch_size}_upernet"
