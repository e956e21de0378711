"""`maet detect train` / `maet detect eval`: COCO detection + instance segmentation with ViTDet Mask R-CNN.

A thin layer over `transfer.detection.engine` (detectron2 is imported inside the handlers, so `maet
--help` stays fast). The engine returns a `RunResult` with every evaluation; each becomes a run record
(task `detection`) whose metrics hold all 12 COCO numbers of bbox and segm; only rank 0's result comes back.
"""

from __future__ import annotations

import argparse

from mae_core.errors import OptionError
from transfer.detection.config import ALIASES, PROTOCOLS

from .cli_args import Number, PathArg, ProtocolArg
from .cli_common import add_record_args, dataset_name, init_name, write_record
from .records import record_from_result

PROTOCOL_HELP = ("protocol: tiny (CPU, synthetic COCO), vit-b / vit-l / vit-h (ViTDet's published ViT-B/L/H "
                 "Mask R-CNN), or a LazyConfig file")


def _job(args, eval_only: bool):
    from transfer.detection.engine import DetectionJob

    return DetectionJob(
        config=args.config, data_root=args.data_path, output_dir=args.output_dir,
        init=getattr(args, "init", "scratch"), weights=args.checkpoint, eval_only=eval_only,
        resume=getattr(args, "resume", False) and not eval_only, max_iter=getattr(args, "max_iters", None),
        device=args.device, seed=args.seed, overrides=list(args.cfg_options), num_processes=args.num_processes,
        num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url)


def _run(args, eval_only: bool) -> list[dict]:
    """Run the job; one record per evaluation (its iteration, its 12 + 12 COCO numbers)."""
    from transfer.detection.engine import NO_GROUND_TRUTH, run

    result = run(_job(args, eval_only))
    if result is None or not args.record:
        return []
    common = dict(dataset=dataset_name(args, args.data_path),
                  init=init_name(args, args.checkpoint if eval_only else args.init))
    evaluations = result.extra.pop("evaluations")
    records = []
    for e in evaluations:
        result.metrics, result.iterations = e["metrics"], e["iteration"]
        dropped = e["dropped_metrics"]
        records.append(write_record(args, record_from_result(
            result, **common, init_report=e["init_report"], dropped_metrics=dropped,
            dropped_reason=NO_GROUND_TRUTH if dropped else None)))
    return records


def _train_handler(args) -> None:
    if args.eval_only and not args.checkpoint:
        raise OptionError("--eval-only needs --checkpoint (a detectron2 model file to evaluate)")
    _run(args, args.eval_only)


def _eval_handler(args) -> None:
    _run(args, eval_only=True)


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny", type=ProtocolArg([*PROTOCOLS, *ALIASES]),
                   help=PROTOCOL_HELP + " (default: tiny)")
    p.add_argument("--data-path", "--data-root", required=True, type=PathArg("dir"),
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
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config entries, read by detectron2's LazyConfig.apply_overrides (e.g. "
                        "model.roi_heads.num_classes=3 dataloader.train.total_batch_size=16)")
    add_record_args(p)


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
    p.add_argument("--max-iters", "--max-iter", type=Number(int, 1), default=None,
                   help="schedule length in iterations (default: the config's; the lr milestones scale with it)")
    p.add_argument("--eval-only", action="store_true", help="only evaluate --checkpoint (as `maet detect eval`)")
    p.add_argument("--checkpoint", "--weights", default=None, type=PathArg("exists"),
                   help="with --eval-only: the detectron2 model file to evaluate")
    _common_args(p)
    p.set_defaults(func=_train_handler)

    p = sub.add_parser("eval", help="evaluate a detectron2 model file (ours or a published ViTDet .pkl/.pth) "
                                    "on a COCO-layout folder")
    p.add_argument("--checkpoint", "--weights", required=True, type=PathArg("exists"),
                   help="model_final.pth of a run, or a published ViTDet model file")
    _common_args(p)
    p.set_defaults(func=_eval_handler)
