"""`maet segment train` / `maet segment eval`: ADE20K semantic segmentation with mmseg's UperNet.

mmseg is imported inside the handlers, so `maet --help` stays fast. Each finished training run and each
evaluation appends one run record (under torchrun, rank 0 only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transfer.segmentation.config import CONFIG_DIR, PROTOCOLS

from .cli_args import CfgOptions, Number, PathArg, ProtocolArg
from .cli_common import add_record_args, dataset_name, init_name, write_record
from .records import record_from_result

DEFAULT_CONFIG = "tiny"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, type=ProtocolArg(PROTOCOLS, CONFIG_DIR),
                   help="tiny | vit-b | vit-l (transfer/segmentation/configs/) or a path to an mmseg config "
                        f"(default: {DEFAULT_CONFIG})")
    p.add_argument("--data-path", "--data-root", required=True, type=PathArg("dir"),
                   help="the ADEChallengeData2016 folder, or its parent")
    p.add_argument("--output-dir", "--work-dir", default=None, type=PathArg("output"),
                   help="checkpoints and logs (default: work_dirs/segment/<config>; eval: eval/ beside --checkpoint)")
    p.add_argument("--num-classes", type=Number(int, 1), default=None,
                   help="classes after reduce_zero_label (default: the config's; ADE20K 150, synthetic 7)")
    p.add_argument("--launcher", choices=["none", "pytorch"], default="none",
                   help="pytorch under torchrun (chosen automatically when WORLD_SIZE > 1)")
    p.add_argument("--check-labels", action=argparse.BooleanOptionalAction, default=True,
                   help="read every label PNG once to check its values against the class count (default: yes)")
    p.add_argument("--cfg-options", nargs="+", default=None, action=CfgOptions, metavar="KEY=VALUE",
                   help="override config entries, parsed by mmengine's DictAction as in mmseg's tools "
                        "(e.g. train_dataloader.num_workers=8)")
    add_record_args(p)


def _output_dir(args) -> str:
    return args.output_dir or str(Path("work_dirs") / "segment" / Path(str(args.config)).stem)


def _train(args) -> dict | None:
    from transfer.segmentation import engine

    launcher = engine.resolve_launcher(args.launcher)
    engine.init_distributed(launcher)
    setup = engine.prepare(args.config, data_root=args.data_path, work_dir=_output_dir(args),
                           num_classes=args.num_classes, max_iters=args.max_iters, val_interval=args.val_interval,
                           batch_size=args.batch_size, seed=args.seed, launcher=launcher, amp=args.amp,
                           check_labels=args.check_labels, cfg_options=args.cfg_options)
    engine.attach_init(setup, args.init, resume=args.resume)
    result = engine.train(setup)
    m = result.metrics
    if result.is_main:
        print(f"segmentation {setup.cfg.work_dir}: mIoU {m['mIoU']:.2f}  mAcc {m['mAcc']:.2f}  aAcc {m['aAcc']:.2f} "
              f"-> {result.checkpoint}")
    if not (args.record and result.is_main):
        return None
    return write_record(args, record_from_result(result, dataset=dataset_name(args, args.data_path),
                                                 init=init_name(args, args.init)))


def _eval(args) -> dict | None:
    from transfer.segmentation import engine

    launcher = engine.resolve_launcher(args.launcher)
    engine.init_distributed(launcher)
    work_dir = args.output_dir or str(Path(args.checkpoint).resolve().parent / "eval")
    setup = engine.prepare(args.config, data_root=args.data_path, work_dir=work_dir, num_classes=args.num_classes,
                           launcher=launcher, check_labels=args.check_labels, cfg_options=args.cfg_options,
                           splits=("validation",))
    result = engine.evaluate(setup, args.checkpoint)
    m = result.metrics
    if result.is_main:
        print(f"{args.checkpoint}: mIoU {m['mIoU']:.2f}  mAcc {m['mAcc']:.2f}  aAcc {m['aAcc']:.2f}")
    if not (args.record and result.is_main):
        return None
    meta = result.extra.pop("segmentor_meta")
    init = args.init_name or meta.get("init") or Path(args.checkpoint).name
    return write_record(args, record_from_result(result, dataset=dataset_name(args, args.data_path), init=init))


def add_segmentation_commands(subparsers) -> None:
    """Register `maet segment {train,eval}` on the `maet` parser (benchmarks/cli.py)."""
    p = subparsers.add_parser("segment", help="ADE20K semantic segmentation: UperNet on a ViT (mmsegmentation)")
    sub = p.add_subparsers(dest="segment_command", required=True)

    t = sub.add_parser("train", help="train UperNet from --init (any MAE/timm/HF/supervised checkpoint, or scratch)")
    _common(t)
    t.add_argument("--init", default="scratch", type=PathArg("init"),
                   help="checkpoint file / HF or timm folder, or 'scratch'")
    t.add_argument("--max-iters", type=Number(int, 1), default=None,
                   help="schedule length in iterations (default: the config's; the lr schedule scales with it)")
    t.add_argument("--val-interval", type=Number(int, 1), default=None,
                   help="evaluate and checkpoint every N iterations")
    t.add_argument("--batch-size", type=Number(int, 1), default=None, help="images per process (default: the config's)")
    t.add_argument("--seed", type=Number(int, 0), default=0,
                   help="seed of the weights' init, data order and augmentation")
    t.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from the last checkpoint in --output-dir if there is one (default: yes; mmseg's "
                        "own default is no); --no-resume starts over from --init")
    t.add_argument("--amp", action="store_true", help="mixed precision (AmpOptimWrapper; GPU only)")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="mIoU / mAcc / aAcc of a trained segmentor.pth on the validation split")
    _common(e)
    e.add_argument("--checkpoint", required=True, type=PathArg("exists"),
                   help="the segmentor.pth a `maet segment train` run wrote")
    e.set_defaults(func=_eval)
