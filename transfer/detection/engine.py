"""Train and evaluate a ViTDet Mask R-CNN: detectron2's `tools/lazyconfig_train_net.py`, plus our init and records.

`run(job)` is what `maet detect train|eval` calls. It hands `main` to detectron2's `launch`, the
engine detectron2 users already run: one process per GPU (or CPU process, with gloo), any number of
machines via `--num-machines/--machine-rank/--dist-url`. Each process then does what
lazyconfig_train_net's `do_train` / `do_test` do (same trainer, hooks, checkpointer, writers), with
four additions: the COCO root is checked and registered (data.py), `--init` is mapped into the
backbone with a report (weights.py), `ResumeState` makes resume exact (resume.py), and the run returns
a `RunResult` holding every evaluation (`maet detect` writes a run record from each). Under `launch` the
processes are children: rank 0 leaves the result in `<output_dir>/run_result.json`, which `run` reads back.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, hooks, launch
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter

from mae_core.ckpt_io import sha256_file
from mae_core.errors import MAETransferError
from mae_core.models_vit import arch_name
from mae_core.provenance import now_iso
from mae_core.result import RunResult
from mae_core.train.distributed import device_type
from transfer.encoder_init import read_encoder

from .checkpoint import SafeDetectionCheckpointer, model_state
from .config import backbone_summary, config_file, load_config, set_max_iter
from .data import CocoSplit, check_class_count, check_split, register
from .evaluator import COCOEvaluator12, record_metrics
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

    def to_dict(self) -> dict:
        return asdict(self)


RESULT_FILE = "run_result.json"
NO_GROUND_TRUTH = ("pycocotools gives -1 (detectron2: NaN) where a sub-metric has no ground truth, e.g. APs/ARs on a "
                   "set without small objects; such entries are left out")


def check_data(job: DetectionJob) -> dict[str, CocoSplit]:
    """The COCO splits the run reads, checked once (before any process is spawned)."""
    splits = {"val": check_split(job.data_root, "val")}
    if not job.eval_only:
        splits["train"] = check_split(job.data_root, "train")
    return splits


def build_config(job: DetectionJob, splits: dict[str, CocoSplit] | None = None):
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
    splits = splits or check_data(job)
    for split in splits.values():
        check_class_count(split, num_classes)
    val = splits["val"]
    cfg.dataloader.test.dataset.names = register(val)
    cfg.dataloader.evaluator = L(COCOEvaluator12)(dataset_name=val.name,
                                                  output_dir=str(Path(job.output_dir) / "inference"))
    uses_rle = val.uses_rle
    if not job.eval_only:
        train = splits["train"]
        if [c["id"] for c in train.categories] != [c["id"] for c in val.categories]:
            raise MAETransferError(f"train and val JSON list different category ids ({train.json_file}, "
                                   f"{val.json_file}); detectron2 maps ids to classes per file, so they must agree")
        cfg.dataloader.train.dataset.names = register(train)
        uses_rle = uses_rle or train.uses_rle
    if uses_rle:  # RLE masks (the synthetic set, crowd-free custom sets) need bitmasks; polygons work either way
        cfg.dataloader.train.mapper.instance_mask_format = "bitmask"

    if job.eval_only:  # the model's pos-embed grid is the one its training started from: read it off the file
        if not job.weights or not Path(job.weights).is_file():
            raise MAETransferError(f"--checkpoint {job.weights!r}: no such file (a detectron2 model: model_final.pth "
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


def do_train(job: DetectionJob, cfg, enc) -> list[dict]:
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
        evaluations.append({"iteration": min(trainer.iter + 1, trainer.max_iter), "results": results})
        return results

    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        ResumeState(sampler, images_per_rank, cfg.train.checkpointer.period),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, evaluate),
        hooks.PeriodicWriter([CommonMetricPrinter(cfg.train.max_iter),
                              JSONWriter(str(Path(cfg.train.output_dir) / "metrics.json")),
                              TensorboardXWriter(cfg.train.output_dir)],  # as lazyconfig_train_net's default_writers
                             period=cfg.train.log_period) if comm.is_main_process() else None,
    ])
    # --init is already in the model; resume (if a checkpoint exists) replaces everything, else nothing is loaded
    checkpointer.resume_or_load("", resume=job.resume)
    start_iter = trainer.iter + 1 if job.resume and checkpointer.has_checkpoint() else 0
    if start_iter:
        logger.info(f"resuming from {checkpointer.get_checkpoint_file()} at iteration {start_iter}")
    trainer.train(start_iter, cfg.train.max_iter)
    for e in evaluations:
        e["init_report"] = report.compact()
    return evaluations


def do_eval(job: DetectionJob, cfg) -> list[dict]:
    """lazyconfig_train_net's `--eval-only`, loading the model file safely and strictly."""
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    model = create_ddp_model(model, **_ddp_kwargs(cfg, {}))
    SafeDetectionCheckpointer(model, strict=True).load(job.weights)
    model.eval()
    return [{"iteration": None, "results": do_test(cfg, model), "init_report": None}]


def _result(job: DetectionJob, cfg, enc, evaluations: list[dict], started_at: str, t0: float) -> RunResult:
    """Every evaluation as record-ready metrics; the last one is the headline."""
    for e in evaluations:
        e["metrics"], e["dropped_metrics"] = record_metrics(e.pop("results"))
    last = evaluations[-1] if evaluations else {"metrics": {}, "dropped_metrics": [], "iteration": None}
    net = cfg.model.backbone.net
    arch = arch_name({"embed_dim": net.embed_dim, "depth": net.depth, "patch_size": net.patch_size})
    return RunResult(
        task="detection", metrics=last["metrics"], arch=arch + "_vitdet_mask_rcnn",
        config={"job": job.to_dict(), "protocol": backbone_summary(cfg)},
        checkpoint=job.weights if job.eval_only else str(Path(job.output_dir) / "model_final.pth"),
        seed=cfg.train.get("seed"), duration_s=round(time.time() - t0, 3), iterations=last["iteration"],
        mode="eval" if job.eval_only else "train",
        measured_sha256=sha256_file(job.weights) if job.eval_only else (enc.sha256 if enc else None),
        device=cfg.train.device, world_size=comm.get_world_size(), started_at=started_at,
        extra={"evaluations": evaluations, "output": {"dir": job.output_dir, "weights": job.weights}})


def main(job: DetectionJob, splits: dict[str, CocoSplit] | None = None) -> RunResult | None:
    """Body of every launched process (lazyconfig_train_net's `main`); rank 0 returns the result and leaves it
    in the output folder."""
    started_at, t0 = now_iso(), time.time()
    cfg, enc = build_config(job, splits)
    default_setup(cfg, _SetupArgs(job))
    evaluations = do_eval(job, cfg) if job.eval_only else do_train(job, cfg, enc)
    if not comm.is_main_process():
        return None
    result = _result(job, cfg, enc, evaluations, started_at, t0)
    Path(job.output_dir, RESULT_FILE).write_text(json.dumps(result.to_dict(), default=str))
    return result


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


def run(job: DetectionJob) -> RunResult | None:
    """Launch `main` on `num_processes` x `num_machines` processes (detectron2's `launch`); returns rank 0's
    result (None on the other machines of a multi-machine run)."""
    splits = check_data(job)  # bad input fails here, once, before any process is spawned
    if job.num_processes * job.num_machines == 1:
        return main(job, splits)
    result_file = Path(job.output_dir, RESULT_FILE)
    result_file.unlink(missing_ok=True)
    launch(main, job.num_processes, num_machines=job.num_machines, machine_rank=job.machine_rank,
           dist_url=job.dist_url, args=(job, splits))
    if job.machine_rank != 0 or not result_file.is_file():
        return None
    return RunResult.from_dict(json.loads(result_file.read_text()))
