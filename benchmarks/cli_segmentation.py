"""`maet segment train` / `maet segment eval`: ADE20K semantic segmentation with mmseg's UperNet.

mmseg is imported inside the handlers, so `maet --help` stays fast. Each finished training run and each
evaluation appends one run record (under torchrun, rank 0 only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mae_core.errors import OptionError
from transfer.segmentation import CONFIG_DIR, PROTOCOLS

from .cli_args import Number, PathArg, ProtocolArg
from .cli_classification import _dataset_name, _init_name, _record_args, _write
from .records import make_record

DEFAULT_CONFIG = "tiny"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, type=ProtocolArg(PROTOCOLS, CONFIG_DIR),
                   help="tiny | vit-b | vit-l (transfer/segmentation/configs/) or a path to an mmseg config "
                        f"(default: {DEFAULT_CONFIG})")
    p.add_argument("--data-root", required=True, type=PathArg("dir"),
                   help="the ADEChallengeData2016 folder, or its parent")
    p.add_argument("--work-dir", default=None, type=PathArg("output"),
                   help="checkpoints and logs (default: work_dirs/segment/<config>)")
    p.add_argument("--num-classes", type=Number(int, 1), default=None,
                   help="classes after reduce_zero_label (default: the config's; ADE20K 150, synthetic 7)")
    p.add_argument("--launcher", choices=["none", "pytorch"], default="none",
                   help="pytorch under torchrun (chosen automatically when WORLD_SIZE > 1)")
    p.add_argument("--check-labels", action=argparse.BooleanOptionalAction, default=True,
                   help="read every label PNG once to check its values against the class count (default: yes)")
    p.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE",
                   help="override config entries, as in mmseg's tools (e.g. train_dataloader.num_workers=8)")
    _record_args(p)


def _cfg_options(args) -> dict | None:
    """KEY=VALUE pairs parsed as mmengine's DictAction does (lists, tuples, numbers, booleans)."""
    if not args.cfg_options:
        return None
    from mmengine.config import DictAction

    pairs = [kv.split("=", 1) for kv in args.cfg_options]
    if any(len(kv) != 2 for kv in pairs):
        raise OptionError(f"--cfg-options takes KEY=VALUE pairs, got {args.cfg_options}")
    return {k: DictAction._parse_iterable(v) for k, v in pairs}


def _work_dir(args) -> str:
    return args.work_dir or str(Path("work_dirs") / "segment" / Path(str(args.config)).stem)


def _record_config(args, setup, extra: dict) -> dict:
    cfg = setup.cfg
    return {"config": str(args.config), "cfg_options": args.cfg_options, "work_dir": cfg.work_dir,
            "data_root": str(setup.data_root), "num_classes": len(setup.classes),
            "crop_size": list(cfg.model.data_preprocessor.get("size") or []),
            "max_iters": cfg.train_cfg.max_iters, "batch_size_per_process": cfg.train_dataloader.batch_size,
            "optimizer": cfg.optim_wrapper.optimizer.to_dict(),
            "paramwise_cfg": cfg.optim_wrapper.paramwise_cfg.to_dict(),
            "test_cfg": cfg.model.test_cfg.to_dict(), "images": setup.summary, **extra}


def _train(args) -> dict | None:
    from transfer.segmentation import engine

    launcher = engine.resolve_launcher(args.launcher)
    engine.init_distributed(launcher)
    setup = engine.prepare(args.config, data_root=args.data_root, work_dir=_work_dir(args),
                           num_classes=args.num_classes, max_iters=args.max_iters, val_interval=args.val_interval,
                           batch_size=args.batch_size, seed=args.seed, launcher=launcher, amp=args.amp,
                           check_labels=args.check_labels, cfg_options=_cfg_options(args))
    engine.attach_init(setup, args.init, resume=args.resume)
    result = engine.train(setup)
    m = result.metrics
    if result.is_main:
        print(f"segmentation {setup.cfg.work_dir}: mIoU {m['mIoU']:.2f}  mAcc {m['mAcc']:.2f}  aAcc {m['aAcc']:.2f} "
              f"-> {result.segmentor}")
    if not (args.record and result.is_main):
        return None
    init = setup.init
    return _write(args, make_record(
        task="segmentation", dataset=_dataset_name(args, args.data_root), init=_init_name(args, args.init),
        arch=engine.arch_name(setup.cfg), metrics=result.metrics,
        config=_record_config(args, setup, {"init": str(args.init), "resumed_from": setup.resumed_from,
                                            "init_load": setup.report.compact() if setup.report else None}),
        checkpoint_sha256=init.sha256 if init else None, seed=args.seed, device=result.device,
        started_at=result.started_at, duration_s=round(result.duration_s, 3), mode="train",
        world_size=result.world_size, history=result.history, output={"checkpoint": str(result.segmentor)}))


def _eval(args) -> dict | None:
    from mae_core.ckpt_io import sha256_file
    from transfer.segmentation import engine

    launcher = engine.resolve_launcher(args.launcher)
    engine.init_distributed(launcher)
    work_dir = args.work_dir or str(Path(args.checkpoint).resolve().parent / "eval")
    setup = engine.prepare(args.config, data_root=args.data_root, work_dir=work_dir, num_classes=args.num_classes,
                           launcher=launcher, check_labels=args.check_labels, cfg_options=_cfg_options(args),
                           splits=("validation",))
    result = engine.evaluate(setup, args.checkpoint)
    m = result.metrics
    if result.is_main:
        print(f"{args.checkpoint}: mIoU {m['mIoU']:.2f}  mAcc {m['mAcc']:.2f}  aAcc {m['aAcc']:.2f}")
    if not (args.record and result.is_main):
        return None
    meta = engine.read_segmentor(args.checkpoint).get("meta", {})
    return _write(args, make_record(
        task="segmentation", dataset=_dataset_name(args, args.data_root),
        init=args.init_name or meta.get("init") or Path(args.checkpoint).name, arch=engine.arch_name(setup.cfg),
        metrics=result.metrics, config=_record_config(args, setup, {"checkpoint": str(args.checkpoint)}),
        checkpoint_sha256=sha256_file(args.checkpoint), seed=None, device=result.device,
        started_at=result.started_at, duration_s=round(result.duration_s, 3), mode="eval",
        world_size=result.world_size))


def add_segmentation_commands(subparsers) -> None:
    """Register `maet segment {train,eval}` on the `maet` parser (benchmarks/cli.py)."""
    p = subparsers.add_parser("segment", help="ADE20K semantic segmentation: UperNet on a ViT (mmsegmentation)")
    sub = p.add_subparsers(dest="segment_command", required=True)

    t = sub.add_parser("train", help="train UperNet from --init (any MAE/timm/HF/supervised checkpoint, or scratch)")
    _common(t)
    t.add_argument("--init", default="scratch", type=PathArg("init"),
                   help="checkpoint file / HF or timm folder, or 'scratch'")
    t.add_argument("--max-iters", type=Number(int, 1), default=None, help="schedule length (default: the config's)")
    t.add_argument("--val-interval", type=Number(int, 1), default=None,
                   help="evaluate and checkpoint every N iterations")
    t.add_argument("--batch-size", type=Number(int, 1), default=None, help="images per process (default: the config's)")
    t.add_argument("--seed", type=Number(int, 0), default=0,
                   help="seed of the weights' init, data order and augmentation")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --work-dir")
    t.add_argument("--amp", action="store_true", help="mixed precision (AmpOptimWrapper; GPU only)")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="mIoU / mAcc / aAcc of a trained segmentor.pth on the validation split")
    _common(e)
    e.add_argument("--checkpoint", required=True, type=PathArg("exists"),
                   help="the segmentor.pth a `maet segment train` run wrote")
    e.set_defaults(func=_eval)
