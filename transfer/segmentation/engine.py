"""Prepare a run (config.py's config + data, classes, seed, device, `--init`) and train / evaluate it with
mmengine's `Runner`.

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
from mmengine.dist import barrier, get_world_size, init_dist, is_distributed, is_main_process
from mmengine.model import is_model_wrapper
from mmengine.runner import find_latest_checkpoint
from mmseg.registry import MODELS

from mae_core.checkpoints import LoadReport
from mae_core.ckpt_io import load_file, save_atomic, sha256_file
from mae_core.errors import ArchitectureMismatchError, CheckpointFormatError, ClassCountMismatchError
from mae_core.provenance import now_iso
from mae_core.result import RunResult
from transfer.encoder_init import EncoderInit, read_encoder

from .config import DATALOADERS, adapt_to_device, arch_name, config_classes, load_config, set_classes, set_max_iters
from .data import check_ade20k
from .hooks import MetricsHistoryHook  # importing hooks and resume registers our components with mmengine
from .resume import SegRunner
from .weights import check_arch, convert_for_backbone, unexpected_new

SEGMENTOR_FILE = "segmentor.pth"
INIT_FILE = "init_weights.pth"


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
    cfg, work_dir = setup.cfg, Path(setup.cfg.work_dir)
    last = find_latest_checkpoint(str(work_dir)) if resume and work_dir.is_dir() else None
    setup.init, setup.init_arg = read_encoder(init), str(init)
    if last:
        cfg.resume, cfg.load_from, setup.resumed_from = True, last, last
        return
    if setup.init.is_scratch:
        return
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
    barrier()
    cfg.load_from = str(work_dir / INIT_FILE)


# ----------------------------------------------------------------------------- distributed
def resolve_launcher(launcher: str) -> str:
    """`torchrun` sets WORLD_SIZE: a multi-process run is distributed even without --launcher pytorch."""
    if launcher == "none" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "pytorch"
    return launcher


def init_distributed(launcher: str) -> None:
    """Start the process group (env:// of torchrun) before the Runner, which then uses it as it is: rank 0 alone
    writes the converted init before the Runner exists. On GPUs mmengine's `init_dist`; on CPU a gloo group
    (`init_dist` sets a CUDA device first, which a CPU-only machine refuses).
    """
    if launcher == "none" or is_distributed():
        return
    if torch.cuda.is_available():
        init_dist(launcher, backend="nccl")
    else:
        torch.distributed.init_process_group("gloo")


# ----------------------------------------------------------------------------- train / eval
def _history_hook(runner) -> MetricsHistoryHook:
    return next(h for h in runner.hooks if isinstance(h, MetricsHistoryHook))


def _runner(cfg) -> SegRunner:
    return SegRunner.from_cfg(cfg)


def train(setup: RunSetup) -> RunResult:
    """Train with mmengine; evaluate every `val_interval` and at the end; write a tensor-only segmentor.pth."""
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
