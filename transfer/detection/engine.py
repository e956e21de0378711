"""Train and evaluate a ViTDet Mask R-CNN: detectron2's `tools/lazyconfig_train_net.py`, plus our init and records.

`run(job)` is what `maet detect train|eval` calls. It hands `main` to detectron2's `launch`, the
engine detectron2 users already run: one process per GPU (or CPU process, with gloo), any number of
machines via `--num-machines/--machine-rank/--dist-url`. Each process then does what
lazyconfig_train_net's `do_train` / `do_test` do (same trainer, hooks, checkpointer, writers), with
four additions: the COCO root is checked and registered (data.py), `--init` is mapped into the
backbone with a report (weights.py), `ResumeState` makes resume exact (resume.py), and rank 0 writes
its evaluations to a callback (`maet detect` writes a run record from each).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, HookBase, SimpleTrainer, default_setup, hooks, launch
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter

from mae_core.ckpt_io import sha256_file
from mae_core.errors import MAETransferError
from mae_core.models_vit import arch_name
from mae_core.train.distributed import device_type
from transfer.encoder_init import read_encoder

from .checkpoint import SafeDetectionCheckpointer, model_state
from .config import backbone_summary, config_file, load_config, set_max_iter
from .data import check_split, register
from .evaluator import COCOEvaluator12
from .resume import ResumableTrainingSampler, ResumeState
from .weights import check_architecture, load_encoder, pretrain_img_size

logger = logging.getLogger("detectron2")


@dataclass
class DetectionJob:
    """Everything `maet detect` passes to each launched process (picklable, for `launch`'s spawn)."""

    config: str
    data_root: str
    output_dir: str
    init: str = "scratch"  # train: an MAE / timm / HF / classifier checkpoint, or scratch
    weights: str | None = None  # eval: a detectron2 model file (.pth or model-zoo .pkl)
    eval_only: bool = False
    resume: bool = False
    max_iter: int | None = None
    device: str = "auto"
    seed: int | None = None
    overrides: list[str] = field(default_factory=list)
    num_processes: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"
    on_evaluation: Callable | None = None  # called on rank 0 as f(job, evaluation) after every evaluation
    record_meta: dict = field(default_factory=dict)  # what the caller wants back in its callback (names, times)
    crash_after_iter: int | None = None  # tests: SIGKILL the run after this iteration (a killed job)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["on_evaluation"] = getattr(self.on_evaluation, "__qualname__", None)
        return d


def build_config(job: DetectionJob):
    """The LazyConfig of this run: protocol + overrides + data + device, and the checked `--init`."""
    cfg = load_config(job.config, job.overrides)
    if job.max_iter:
        set_max_iter(cfg, job.max_iter)
    if job.seed is not None:
        cfg.train.seed = job.seed
    cfg.train.output_dir = str(job.output_dir)
    cfg.train.device = device_type(job.device)
    on_cuda = cfg.train.device == "cuda"
    cfg.train.amp.enabled = bool(cfg.train.amp.enabled) and on_cuda  # AMP (and fp16 all-reduce) are CUDA-only
    cfg.train.ddp.fp16_compression = bool(cfg.train.ddp.fp16_compression) and on_cuda

    num_classes = cfg.model.roi_heads.num_classes
    val = check_split(job.data_root, "val", num_classes)
    cfg.dataloader.test.dataset.names = register(val)
    cfg.dataloader.evaluator = L(COCOEvaluator12)(dataset_name=val.name,
                                                  output_dir=str(Path(job.output_dir) / "inference"))
    uses_rle = val.uses_rle
    if not job.eval_only:
        train = check_split(job.data_root, "train", num_classes)
        if [c["id"] for c in train.categories] != [c["id"] for c in val.categories]:
            raise MAETransferError(f"train and val JSON list different category ids ({train.json_file}, "
                                   f"{val.json_file}); detectron2 maps ids to classes per file, so they must agree")
        cfg.dataloader.train.dataset.names = register(train)
        uses_rle = uses_rle or train.uses_rle
    if uses_rle:  # RLE masks (the synthetic set, crowd-free custom sets) need bitmasks; polygons work either way
        cfg.dataloader.train.mapper.instance_mask_format = "bitmask"

    if job.eval_only:  # the model's pos-embed grid is the one its training started from: read it off the file
        if not job.weights or not Path(job.weights).is_file():
            raise MAETransferError(f"--weights {job.weights!r}: no such file (a detectron2 model: model_final.pth "
                                   "of a `maet detect train` run, or a published ViTDet .pkl/.pth)")
        pos = model_state(job.weights).get("backbone.net.pos_embed")
        if pos is not None:
            side = int(round((pos.shape[1] - 1) ** 0.5))
            cfg.model.backbone.net.pretrain_img_size = side * cfg.model.backbone.net.patch_size
        return cfg, None
    enc = read_encoder(job.init, patch_size=cfg.model.backbone.net.patch_size)  # ViT-H MAE p14 -> ViTDet-H p16
    check_architecture(enc, cfg.model.backbone.net)
    if not enc.is_scratch:
        cfg.model.backbone.net.pretrain_img_size = pretrain_img_size(enc)
    return cfg, enc


def _ddp_kwargs(cfg, ddp) -> dict:
    """detectron2's `create_ddp_model` passes `device_ids=[local_rank]`, which DDP refuses for CPU modules."""
    return {**ddp, "device_ids": None} if cfg.train.device == "cpu" else dict(ddp)


def do_test(cfg, model) -> dict:
    ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    print_csv_format(ret)
    return ret


def _train_loader(cfg):
    """`build_detection_train_loader` as configured, with a sampler that `ResumeState` can fast-forward."""
    spec = cfg.dataloader.train
    dataset = instantiate(spec.dataset)
    seed = cfg.train.get("seed", -1)
    sampler = ResumableTrainingSampler(len(dataset), seed=None if seed is None or seed < 0 else seed)
    kwargs = {k: instantiate(v) for k, v in spec.items() if k not in ("_target_", "dataset", "sampler")}
    loader = spec._target_(dataset=dataset, sampler=sampler, **kwargs)
    return loader, sampler, spec.total_batch_size // comm.get_world_size()


class CrashAfter(HookBase):
    """SIGKILL this process after iteration `after_iter`: how the resume test kills a run mid-training."""

    def __init__(self, after_iter: int):
        self.after_iter = after_iter

    def after_step(self):
        if self.trainer.iter == self.after_iter:
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)


def do_train(job: DetectionJob, cfg, enc) -> dict:
    """lazyconfig_train_net's `do_train` with `--init` loaded first and `ResumeState` among the hooks."""
    model = instantiate(cfg.model)
    report = load_encoder(model, enc)
    logger.info(report.summary())
    if comm.is_main_process():
        report.write(cfg.train.output_dir)
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader, sampler, images_per_rank = _train_loader(cfg)

    model = create_ddp_model(model, **_ddp_kwargs(cfg, cfg.train.ddp))
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = SafeDetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    evaluations = []

    def evaluate():
        results = do_test(cfg, model)
        evaluations.append(results)
        report_evaluation(job, cfg, results, enc=enc, iteration=min(trainer.iter + 1, trainer.max_iter),
                          init_report=report)
        return results

    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        ResumeState(sampler, images_per_rank),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        CrashAfter(job.crash_after_iter) if job.crash_after_iter is not None else None,
        hooks.EvalHook(cfg.train.eval_period, evaluate),
        hooks.PeriodicWriter([CommonMetricPrinter(cfg.train.max_iter),
                              JSONWriter(str(Path(cfg.train.output_dir) / "metrics.json"))],
                             period=cfg.train.log_period) if comm.is_main_process() else None,
    ])
    # --init is already in the model; resume (if a checkpoint exists) replaces everything, else nothing is loaded
    checkpointer.resume_or_load("", resume=job.resume)
    start_iter = trainer.iter + 1 if job.resume and checkpointer.has_checkpoint() else 0
    if start_iter:
        logger.info(f"resuming from {checkpointer.get_checkpoint_file()} at iteration {start_iter}")
    trainer.train(start_iter, cfg.train.max_iter)
    return evaluations[-1] if evaluations else {}


def do_eval(job: DetectionJob, cfg) -> dict:
    """lazyconfig_train_net's `--eval-only`, loading the model file safely and strictly."""
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    model = create_ddp_model(model, **_ddp_kwargs(cfg, {}))
    SafeDetectionCheckpointer(model, strict=True).load(job.weights)
    model.eval()
    results = do_test(cfg, model)
    report_evaluation(job, cfg, results, enc=None, iteration=None, init_report=None)
    return results


def report_evaluation(job: DetectionJob, cfg, results: dict, *, enc, iteration, init_report) -> None:
    """Rank 0 hands every evaluation to `job.on_evaluation` (`maet detect` writes a run record from it)."""
    if job.on_evaluation is None or not comm.is_main_process():
        return
    net = cfg.model.backbone.net
    job.on_evaluation(job, {
        "results": results, "iteration": iteration, "protocol": backbone_summary(cfg),
        "arch": arch_name({"embed_dim": net.embed_dim, "depth": net.depth, "patch_size": net.patch_size})
        + "_vitdet_mask_rcnn",
        "checkpoint_sha256": sha256_file(job.weights) if job.eval_only else (enc.sha256 if enc else None),
        "seed": cfg.train.get("seed"), "device": cfg.train.device, "world_size": comm.get_world_size(),
        "init_report": init_report.compact() if init_report else None})


def main(job: DetectionJob) -> dict:
    """Body of every launched process (lazyconfig_train_net's `main`)."""
    cfg, enc = build_config(job)
    default_setup(cfg, _SetupArgs(job))
    if job.eval_only:
        return do_eval(job, cfg)
    return do_train(job, cfg, enc)


@dataclass
class _SetupArgs:
    """What `default_setup` logs as the command line (it reads `config_file` and `eval_only`)."""

    job: DetectionJob

    @property
    def eval_only(self) -> bool:
        return self.job.eval_only

    @property
    def config_file(self) -> str:
        return str(config_file(self.job.config))

    def __str__(self) -> str:
        return json.dumps(self.job.to_dict(), default=str)


def run(job: DetectionJob) -> dict | None:
    """Launch `main` on `num_processes` x `num_machines` processes (detectron2's `launch`); returns the last
    evaluation's results when everything ran in this process."""


    # Fail on bad input here, once, before any process is spawned.
    check_split(job.data_root, "val")
    if not job.eval_only:
        check_split(job.data_root, "train")
    if job.num_processes * job.num_machines == 1:
        return main(job)
    launch(main, job.num_processes, num_machines=job.num_machines, machine_rank=job.machine_rank,
           dist_url=job.dist_url, args=(job,))
    return None
