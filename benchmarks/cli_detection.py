"""`maet detect train` / `maet detect eval`: COCO detection + instance segmentation with ViTDet Mask R-CNN.

A thin layer over `transfer.detection.engine` (detectron2 is imported inside the handlers, so `maet
--help` stays fast). Every evaluation writes a run record (task `detection`) whose metrics hold all
12 COCO numbers of bbox and segm; under detectron2's `launch` only rank 0 writes.
"""

from __future__ import annotations

import argparse
import time

from mae_core.errors import OptionError
from transfer.detection.config import PROTOCOLS

from .cli_args import Number, PathArg, ProtocolArg
from .cli_common import add_record_args, dataset_name, init_name, write_record

PROTOCOL_HELP = ("protocol: tiny (CPU, synthetic COCO), b / l / h (ViTDet's published ViT-B/L/H Mask R-CNN), "
                 "or a LazyConfig file")


def _record_evaluation(job, evaluation: dict) -> dict:
    """`on_evaluation` callback of the engine: one run record per evaluation."""
    from transfer.detection.evaluator import record_metrics

    from .records import make_record

    meta = job.record_meta
    metrics, dropped = record_metrics(evaluation["results"])
    record = make_record(
        task="detection", dataset=meta["dataset"], init=meta["init"], arch=evaluation["arch"], metrics=metrics,
        config={"job": job.to_dict(), "protocol": evaluation["protocol"]},
        checkpoint_sha256=evaluation["checkpoint_sha256"], seed=evaluation["seed"], device=evaluation["device"],
        started_at=meta["started_at"], duration_s=round(time.time() - meta["t0"], 3),
        mode="eval" if job.eval_only else "train", iteration=evaluation["iteration"],
        world_size=evaluation["world_size"], init_report=evaluation["init_report"],
        dropped_metrics=dropped,
        dropped_reason=("pycocotools gives -1 (detectron2: NaN) where a sub-metric has no ground truth, e.g. APs/ARs "
                        "on a set without small objects; such entries are left out") if dropped else None,
        output={"dir": job.output_dir, "weights": job.weights})
    return write_record(argparse.Namespace(results_dir=meta["results_dir"], protocol=meta["protocol"]), record)


def _job(args, eval_only: bool):
    from mae_core.provenance import now_iso
    from transfer.detection.engine import DetectionJob

    job = DetectionJob(
        config=args.config, data_root=args.data_root, output_dir=args.output_dir,
        init=getattr(args, "init", "scratch"), weights=args.weights, eval_only=eval_only,
        resume=getattr(args, "resume", False) and not eval_only, max_iter=getattr(args, "max_iter", None),
        device=args.device,
        seed=args.seed, overrides=list(args.opts), num_processes=args.num_processes,
        num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url,
        crash_after_iter=getattr(args, "crash_after_iter", None),
        on_evaluation=_record_evaluation if args.record else None)
    source = args.weights if eval_only else job.init
    job.record_meta = {"dataset": dataset_name(args, args.data_root), "init": init_name(args, source),
                       "results_dir": args.results_dir, "protocol": args.protocol, "started_at": now_iso(),
                       "t0": time.time()}
    return job


def _train_handler(args) -> None:
    from transfer.detection.engine import run

    eval_only = args.eval_only
    if eval_only and not args.weights:
        raise OptionError("--eval-only needs --weights (a detectron2 model file to evaluate)")
    run(_job(args, eval_only))


def _eval_handler(args) -> None:
    from transfer.detection.engine import run

    run(_job(args, eval_only=True))


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny", type=ProtocolArg(PROTOCOLS), help=PROTOCOL_HELP + " (default: tiny)")
    p.add_argument("--data-root", required=True, type=PathArg("dir"),
                   help="COCO-layout root: annotations/instances_{train,val}2017.json + {train,val}2017/ images")
    p.add_argument("--output-dir", required=True, type=PathArg("output"),
                   help="checkpoints, metrics.json, log.txt, inference/")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="cuda, cpu, or auto (cuda when torch sees one)")
    p.add_argument("--seed", type=Number(int, 0), default=None,
                   help="seed of the weights' init, data order and augmentation (default: the config's train.seed, 0)")
    g = p.add_argument_group("processes (detectron2's launch)")
    g.add_argument("--num-processes", "--num-gpus", type=Number(int, 1), default=1,
                   help="processes per machine: one per GPU on CUDA (NCCL), or CPU processes (gloo)")
    g.add_argument("--num-machines", type=Number(int, 1), default=1, help="machines taking part in the run")
    g.add_argument("--machine-rank", type=Number(int, 0), default=0, help="this machine's index among them")
    g.add_argument("--dist-url", default="auto", help="e.g. tcp://HOST:PORT for several machines (default: auto)")
    add_record_args(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="detectron2 LazyConfig overrides, key=value (e.g. model.roi_heads.num_classes=3 "
                        "dataloader.train.total_batch_size=16)")


def add_detection_commands(subparsers) -> None:
    """Register `maet detect` on the `maet` parser (benchmarks/cli.py)."""
    det = subparsers.add_parser("detect", help="COCO detection + instance segmentation: ViTDet Mask R-CNN "
                                               "through detectron2")
    sub = det.add_subparsers(dest="detect_command", required=True)

    p = sub.add_parser("train", help="train from an MAE / timm / HF / classifier checkpoint or scratch, then evaluate")
    p.add_argument("--init", default="scratch", type=PathArg("init"),
                   help="encoder checkpoint of any format `maet inspect` reads, or 'scratch' (default)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from the last checkpoint in --output-dir if there is one (default: yes, like the "
                        "project's other engines; detectron2's own default is --no-resume)")
    p.add_argument("--max-iter", type=Number(int, 1), default=None, help="iterations (the lr milestones scale with it)")
    p.add_argument("--eval-only", action="store_true", help="only evaluate --weights (as `maet detect eval`)")
    p.add_argument("--weights", default=None, type=PathArg("exists"),
                   help="with --eval-only: the detectron2 model file to evaluate")
    p.add_argument("--crash-after-iter", type=Number(int, 1), default=None, help=argparse.SUPPRESS)
    _common_args(p)
    p.set_defaults(func=_train_handler)

    p = sub.add_parser("eval", help="evaluate a detectron2 model file (ours or a published ViTDet .pkl/.pth) "
                                    "on a COCO-layout folder")
    p.add_argument("--weights", required=True, type=PathArg("exists"),
                   help="model_final.pth of a run, or a published ViTDet model file")
    _common_args(p)
    p.set_defaults(func=_eval_handler)
