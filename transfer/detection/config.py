"""The protocols by short name, and the few edits a run makes to a loaded LazyConfig.

A protocol is a detectron2 LazyConfig file under `configs/COCO/` (read them: they are ViTDet's own,
plus the tiny CPU one). Everything else a user may change goes through detectron2's override syntax
(`model.roi_heads.num_classes=3 optimizer.lr=1e-4`), as with `tools/lazyconfig_train_net.py`.
"""

from __future__ import annotations

from pathlib import Path

from mae_core.errors import MAETransferError

CONFIG_DIR = Path(__file__).parent / "configs"
PROTOCOLS = {  # the names `maet segment` gives its protocols too
    "tiny": "COCO/mask_rcnn_vitdet_tiny_synthetic.py",
    "vit-b": "COCO/mask_rcnn_vitdet_b_100ep.py",
    "vit-l": "COCO/mask_rcnn_vitdet_l_100ep.py",
    "vit-h": "COCO/mask_rcnn_vitdet_h_75ep.py",
}
ALIASES = {"b": "vit-b", "l": "vit-l", "h": "vit-h"}  # the names of earlier versions


class DetectionConfigError(MAETransferError):
    """A `--config` that is neither a protocol name nor a readable LazyConfig file, or a bad override."""


def config_file(name: str) -> Path:
    """Path of a protocol (`tiny`, `vit-b`, `vit-l`, `vit-h`) or of a user's own LazyConfig file."""
    name = ALIASES.get(name, name)
    if name in PROTOCOLS:
        return CONFIG_DIR / PROTOCOLS[name]
    path = Path(name)
    if not path.is_file():
        raise DetectionConfigError(f"--config {name!r}: not a protocol ({', '.join(PROTOCOLS)}) and not a file")
    return path


def load_config(name: str, overrides: list[str] | tuple[str, ...] = ()):
    """LazyConfig.load + detectron2's `key=value` overrides."""
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(str(config_file(name)))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise DetectionConfigError(f"overrides must be key=value (detectron2's syntax), got {bad}")
    try:
        return LazyConfig.apply_overrides(cfg, list(overrides))
    except Exception as e:  # omegaconf / hydra parse errors: name the override
        raise DetectionConfigError(f"cannot apply overrides {list(overrides)}: {e}") from e


def set_max_iter(cfg, max_iter: int) -> None:
    """Shorten or lengthen a schedule the way ViTDet's H config turns 100 into 75 epochs: the lr
    milestones scale with it, the warm-up keeps its fraction."""
    old = cfg.train.max_iter
    sched = cfg.lr_multiplier.scheduler
    milestones = []
    for m in sched.milestones:  # strictly increasing and >= 1, as fvcore's MultiStepParamScheduler requires
        milestones.append(max(int(m * max_iter / old), milestones[-1] + 1 if milestones else 1))
    sched.milestones = milestones
    sched.num_updates = max(max_iter, milestones[-1] + 1) if milestones else max_iter  # very short runs
    cfg.train.max_iter = max_iter


def backbone_summary(cfg) -> dict:
    """The values of a protocol that a reader (and tests/test_detection_configs.py) checks against ViTDet."""
    net = cfg.model.backbone.net
    decay = cfg.optimizer.params.lr_factor_func
    return {
        "embed_dim": net.embed_dim, "depth": net.depth, "num_heads": net.num_heads, "patch_size": net.patch_size,
        "window_size": net.window_size,
        "global_blocks": [i for i in range(net.depth) if i not in set(net.window_block_indexes)],
        "use_rel_pos": net.use_rel_pos, "rel_pos_zero_init": net.get("rel_pos_zero_init", True),
        "drop_path_rate": net.drop_path_rate, "img_size": net.img_size,
        "lr_decay_rate": decay.keywords["lr_decay_rate"], "decay_num_layers": decay.keywords["num_layers"],
        "scale_factors": list(cfg.model.backbone.scale_factors), "pyramid_norm": cfg.model.backbone.norm,
        "max_iter": cfg.train.max_iter, "batch_size": cfg.dataloader.train.total_batch_size,
        "amp": cfg.train.amp.enabled,
    }
