"""Build the mmseg config of a run, and train / evaluate it with mmengine's `Runner`.

What this adds to mmseg's own `tools/train.py` / `tools/test.py`, and why:
- `--init` is read by our safe loader and converted in memory (weights.py); the run writes the converted
  tensors to `<work_dir>/init_weights.pth` and hands mmengine that file as `load_from` (tensor-only, so
  torch's safe loader reads it), with the load report beside it (`init_report.json`).
- Resume (resume.py): only from checkpoints of the run's own work dir (they hold pickled objects), and exact on
  every rank: torch's generator is seeded per (seed, rank, iteration), mmengine replays the data order.
- Each rank draws its own augmentations and drop path (seed + rank, as the official MAE code and detectron2);
  the samplers keep the shared seed, so the ranks still split one data order.
- Evaluation reads a tensor-only `segmentor.pth` (written at the end of training), never a pickle.
- CPU: NCCL becomes gloo, SyncBN becomes BN, and DDP gets no `device_ids` (mmengine passes the local rank,
  which a CPU module refuses), so `torchrun --nproc-per-node 2` runs on a laptop as on GPUs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mae_core.checkpoints import LoadReport
from mae_core.ckpt_io import load_file, save_atomic, sha256_file
from mae_core.errors import ArchitectureMismatchError, CheckpointFormatError, ClassCountMismatchError, MAETransferError
from mae_core.provenance import now_iso
from mae_core.result import RunResult
from mae_core.vit import arch_for_width_depth
from transfer.encoder_init import EncoderInit, read_encoder

from . import CONFIG_DIR, PROTOCOLS
from .data import check_ade20k
from .weights import check_arch, convert_for_backbone, unexpected_new

SEGMENTOR_FILE = "segmentor.pth"
INIT_FILE = "init_weights.pth"
DATALOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")
_registered = False


class SegmentationConfigError(MAETransferError):
    """A --config / option combination that cannot make a run (unknown config, AMP without a GPU, ...)."""


# ----------------------------------------------------------------------------- mmseg / mmengine additions
def register() -> None:
    """Register our small mmengine components in mmseg's registries (once; imports mmseg)."""
    global _registered
    if _registered:
        return
    import mmseg.models  # noqa: F401  (registers mmseg's modules)
    from mmengine.hooks import Hook
    from mmengine.model import MMDistributedDataParallel
    from mmengine.registry import MODEL_WRAPPERS  # the root registry: Runner.wrap_model looks there
    from mmseg.registry import HOOKS

    from . import resume  # noqa: F401  (registers SegRunner and StepSeedHook)

    @HOOKS.register_module(force=True)
    class MetricsHistoryHook(Hook):
        """Keep every evaluation's metrics in memory, for the run record."""

        def __init__(self):
            self.history: list[dict] = []

        def after_val_epoch(self, runner, metrics=None) -> None:
            if metrics:
                self.history.append({"iter": runner.iter, **{k: round(float(v), 4) for k, v in metrics.items()}})

    @MODEL_WRAPPERS.register_module(force=True)
    class CPUDistributedDataParallel(MMDistributedDataParallel):
        """mmengine's DDP wrapper for CPU processes (gloo): `device_ids=None`, and BN for SyncBN (GPU only).

        (A single process needs neither: mmengine itself reverts SyncBN when not distributed.)
        """

        def __init__(self, module, device_ids=None, **kwargs):
            from mmengine.model import revert_sync_batchnorm

            super().__init__(module=revert_sync_batchnorm(module), device_ids=None, **kwargs)

    _registered = True


# ----------------------------------------------------------------------------- config
def config_path(config: str | Path) -> Path:
    """A protocol name (tiny, vit-b, vit-l), a file name in our configs folder, or any config path."""
    config = str(config)
    for candidate in (CONFIG_DIR / PROTOCOLS.get(config, config), CONFIG_DIR / f"{config}.py", Path(config)):
        if candidate.is_file():
            return candidate
    raise SegmentationConfigError(f"no config {config!r}: use one of {', '.join(PROTOCOLS)}, a file of "
                                  f"{CONFIG_DIR}, or a path to an mmseg config")


def load_config(config: str | Path, cfg_options: dict | None = None):
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
        register()
        from mmseg.registry import DATASETS

        names = DATASETS.get(ds.type).METAINFO["classes"]
    return list(names)


def set_classes(cfg, classes: list[str]) -> None:
    """Heads and datasets for these classes; ADE20KDataset (150 fixed names) becomes its ADE-layout base class."""
    register()
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
    b = cfg.model.backbone
    name = arch_for_width_depth(b.embed_dims, b.num_layers) or f"vit_w{b.embed_dims}_d{b.num_layers}"
    return f"{name}_patch{b.patch_size}_upernet"


@dataclass
class RunSetup:
    """A ready config plus what the run record needs to say about it."""

    cfg: object
    data_root: Path
    classes: list[str]
    init: EncoderInit | None = None
    report: LoadReport | None = None
    resumed_from: str | None = None
    summary: dict = field(default_factory=dict)
    config: str = ""  # --config as given
    cfg_options: dict | None = None
    init_arg: str | None = None  # --init as given


def prepare(config: str | Path, *, data_root: str | Path, work_dir: str | Path, num_classes: int | None = None,
            max_iters: int | None = None, val_interval: int | None = None, batch_size: int | None = None,
            seed: int = 0, launcher: str = "none", amp: bool = False, check_labels: bool = True,
            cfg_options: dict | None = None, splits=("training", "validation")) -> RunSetup:
    """The config of a run: data, classes, schedule, seed, work dir and device; the dataset checked first."""
    register()
    cfg = load_config(config, cfg_options)
    classes = config_classes(cfg)
    if num_classes is not None and num_classes != len(classes):
        classes = [f"class_{i}" for i in range(num_classes)]
    set_classes(cfg, classes)
    summary = check_ade20k(data_root, len(classes), splits=splits, check_labels=check_labels)
    root = summary.pop("root")
    for name in DATALOADERS:
        cfg[name].dataset.data_root = str(root)
        if batch_size and name == "train_dataloader":
            cfg[name].batch_size = batch_size
    if max_iters:
        set_max_iters(cfg, max_iters)
    if val_interval:
        cfg.train_cfg.val_interval = val_interval
        cfg.default_hooks.checkpoint.interval = val_interval
    cfg.work_dir = str(Path(work_dir).resolve())
    cfg.randomness = dict(seed=seed, diff_rank_seed=True)  # seed + rank
    for name in DATALOADERS:  # mmengine would draw a sampler seed under diff_rank_seed: keep the shared one
        if cfg[name].get("sampler"):
            cfg[name].sampler.seed = seed
    cfg.launcher = launcher
    cfg.custom_hooks = [*cfg.get("custom_hooks", []), dict(type="StepSeedHook"), dict(type="MetricsHistoryHook")]
    adapt_to_device(cfg, launcher != "none", amp)
    return RunSetup(cfg=cfg, data_root=root, classes=classes, summary=summary, config=str(config),
                    cfg_options=cfg_options)


def attach_init(setup: RunSetup, init: str | Path, resume: bool) -> None:
    """`--init` -> `<work_dir>/init_weights.pth` + report, or the run's own last checkpoint when resuming."""
    from mmengine.runner import find_latest_checkpoint

    cfg, work_dir = setup.cfg, Path(setup.cfg.work_dir)
    last = find_latest_checkpoint(str(work_dir)) if resume and work_dir.is_dir() else None
    setup.init, setup.init_arg = read_encoder(init), str(init)
    if last:
        cfg.resume, cfg.load_from, setup.resumed_from = True, last, last
        return
    if setup.init.is_scratch:
        return
    from mmseg.registry import MODELS

    check_arch(setup.init.arch, cfg.model.backbone)
    backbone = MODELS.build(cfg.model.backbone)
    target = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state_dict, setup.report = convert_for_backbone(
        setup.init.state_dict, target, setup.init.not_encoder, window=tuple(backbone.patch_shape),
        init=setup.init.name, sha256=setup.init.sha256, notes=setup.init.notes)
    if unexpected_new(setup.report):
        raise ArchitectureMismatchError("the converted checkpoint leaves backbone tensors unfilled: "
                                        + ", ".join(unexpected_new(setup.report)))
    if is_main_process():
        work_dir.mkdir(parents=True, exist_ok=True)
        save_atomic({"state_dict": state_dict}, work_dir / INIT_FILE)
        setup.report.write(work_dir)
    _barrier()
    cfg.load_from = str(work_dir / INIT_FILE)


# ----------------------------------------------------------------------------- distributed
def resolve_launcher(launcher: str) -> str:
    """`torchrun` sets WORLD_SIZE: a multi-process run is distributed even without --launcher pytorch."""
    if launcher == "none" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "pytorch"
    return launcher


def init_distributed(launcher: str) -> None:
    """Start the process group (env:// of torchrun) before the Runner, which then uses it as it is.

    Here rather than in mmengine's `init_dist` because that one calls `torch.cuda.set_device` (fails on CPU),
    and because rank 0 alone must write the converted init before the Runner exists.
    """
    import torch.distributed as dist

    if launcher == "none" or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def is_main_process() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------- train / eval
def _history_hook(runner):
    return next(h for h in runner.hooks if type(h).__name__ == "MetricsHistoryHook")


def _runner(cfg):
    register()
    from mmseg.registry import RUNNERS

    return RUNNERS.get("SegRunner").from_cfg(cfg)


def train(setup: RunSetup) -> RunResult:
    """Train with mmengine; evaluate every `val_interval` and at the end; write a tensor-only segmentor.pth."""
    from mmengine.dist import get_world_size
    from mmengine.model import is_model_wrapper

    started, t0 = now_iso(), time.perf_counter()
    runner = _runner(setup.cfg)
    if setup.report is not None:
        runner.logger.info("--init %s -> mmseg MAE backbone:\n%s", setup.init.name, setup.report.summary())
    if setup.resumed_from:
        runner.logger.info("resuming from %s", setup.resumed_from)
    runner.train()
    history = _history_hook(runner).history
    if not history or history[-1]["iter"] != runner.iter:  # the schedule did not end on an evaluation
        history.append({"iter": runner.iter, **{k: round(float(v), 4) for k, v in runner.val_loop.run().items()}})
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    out = Path(setup.cfg.work_dir) / SEGMENTOR_FILE
    main = is_main_process()
    if main:
        save_atomic({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                     "meta": {"classes": list(setup.classes), "iter": int(runner.iter),
                              "arch": arch_name(setup.cfg), "init": setup.init.name if setup.init else None}}, out)
    return RunResult(task="segmentation", metrics=_summary_metrics(history[-1]), arch=arch_name(setup.cfg),
                     config=run_config(setup), checkpoint=str(out), seed=setup.cfg.randomness["seed"],
                     duration_s=round(time.perf_counter() - t0, 3), iterations=int(runner.iter), is_main=main,
                     measured_sha256=setup.init.sha256 if setup.init else None, device=_device(),
                     world_size=get_world_size(), started_at=started,
                     extra={"history": history, "output": {"checkpoint": str(out)}})


def read_segmentor(path: str | Path) -> dict:
    """A `segmentor.pth` of `maet segment train`, through the safe loader (weights and plain meta only)."""
    try:
        obj = load_file(path)
    except CheckpointFormatError as e:
        raise CheckpointFormatError(
            f"{e}\n`maet segment eval` reads the tensor-only {SEGMENTOR_FILE} that `maet segment train` writes "
            "into its work dir; mmengine's iter_*.pth files hold pickled objects and only resume their own run.") from e
    if not isinstance(obj, dict) or not any(k.startswith("decode_head.") for k in obj.get("state_dict", {})):
        raise CheckpointFormatError(f"{path} is not a segmentation model (no decode_head.* tensors under "
                                    f"'state_dict'); evaluate the {SEGMENTOR_FILE} of a `maet segment train` run")
    return obj


def evaluate(setup: RunSetup, checkpoint: str | Path) -> RunResult:
    """mIoU / mAcc / aAcc (mmseg's IoUMetric) of a segmentor.pth on the validation split."""
    from mmengine.dist import get_world_size

    obj = read_segmentor(checkpoint)
    n_out = obj["state_dict"]["decode_head.conv_seg.weight"].shape[0]
    if n_out != len(setup.classes):
        raise ClassCountMismatchError(f"{checkpoint} predicts {n_out} classes, the config has {len(setup.classes)}: "
                                      f"pass --num-classes {n_out} (or the config it was trained with)")
    started, t0 = now_iso(), time.perf_counter()
    setup.cfg.load_from = str(Path(checkpoint).resolve())
    runner = _runner(setup.cfg)
    metrics = runner.test()
    return RunResult(task="segmentation", metrics=_summary_metrics(metrics), arch=arch_name(setup.cfg),
                     config={**run_config(setup), "checkpoint": str(checkpoint)}, checkpoint=str(checkpoint),
                     duration_s=round(time.perf_counter() - t0, 3), is_main=is_main_process(), mode="eval",
                     measured_sha256=sha256_file(checkpoint), device=_device(), world_size=get_world_size(),
                     started_at=started, extra={"segmentor_meta": obj.get("meta", {})})


def run_config(setup: RunSetup) -> dict:
    """What a run record says about the config: the protocol's values that decide the numbers."""
    cfg = setup.cfg
    return {"config": str(setup.config), "cfg_options": setup.cfg_options, "work_dir": cfg.work_dir,
            "data_root": str(setup.data_root), "num_classes": len(setup.classes),
            "crop_size": list(cfg.model.data_preprocessor.get("size") or []),
            "max_iters": cfg.train_cfg.max_iters, "batch_size_per_process": cfg.train_dataloader.batch_size,
            "optimizer": cfg.optim_wrapper.optimizer.to_dict(),
            "paramwise_cfg": cfg.optim_wrapper.paramwise_cfg.to_dict(),
            "test_cfg": cfg.model.test_cfg.to_dict(), "images": setup.summary, "init": setup.init_arg,
            "resumed_from": setup.resumed_from, "init_load": setup.report.compact() if setup.report else None}


def _summary_metrics(metrics: dict) -> dict:
    """mmseg's IoUMetric gives percentages: aAcc, mIoU, mAcc."""
    return {k: round(float(metrics[k]), 4) for k in ("mIoU", "mAcc", "aAcc") if k in metrics}


def _device() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
