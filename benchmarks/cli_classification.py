"""`maet finetune`, `maet linprobe`, `maet eval`: the classification commands; each writes a run record
(`maet linprobe --probe cached` two: the linear probe's and, as task `knn`, the k-NN one on the same features).

A training record says which weights its headline metrics (`top1`, `top5`, `loss`) measure:
`headline_weights` is 'ema' for a fine-tune with `--model-ema` (the EMA's numbers, as the paper reports
for its from-scratch baselines; the trained model's are `top1_raw` ...), else 'model'.

`add_classification_commands(subparsers)` registers them on the `maet` parser (benchmarks/cli.py).
Under torchrun only rank 0 writes the record.
"""

from __future__ import annotations

from .cli_common import add_record_args, dataset_name, init_name, write_record
from .records import record_from_result


def _write_records(args, result, data_path: str, init: str, **fields) -> dict | None:
    """The run's record and one per related result (the cached probe's k-NN); rank 0 only, unless --no-record."""
    if not (args.record and result.is_main):
        return None
    common = dict(dataset=dataset_name(args, data_path), init=init_name(args, init))
    record = write_record(args, record_from_result(result, **common, **fields))
    for other in result.related:
        write_record(args, record_from_result(other, **common))
    return record


def _train_handler(task: str):
    def handler(args) -> dict | None:
        from .cli_args import dataclass_from_args

        if task == "finetune":
            from mae_core.train.finetune import FinetuneConfig as Config
            from mae_core.train.finetune import finetune as engine
        else:
            from mae_core.train.linprobe import LinprobeConfig as Config
            from mae_core.train.linprobe import linprobe as engine
        cfg = dataclass_from_args(Config, args)
        return _write_records(args, engine(cfg), cfg.data_path, cfg.init)
    return handler


def _eval_handler(args) -> dict | None:
    from mae_core.train.evaluate import EvalConfig, evaluate_checkpoint

    from .cli_args import dataclass_from_args

    cfg = dataclass_from_args(EvalConfig, args)
    result = evaluate_checkpoint(cfg)
    if not result.is_main:
        return None
    m = result.metrics
    print(f"{cfg.checkpoint}: top-1 {m['top1']:.3f}  top-5 {m['top5']:.3f}  loss {m['loss']:.4f}  "
          f"({m['num_images']} images, {m['img_per_s']:.1f} img/s, {result.provenance['precision']} on "
          f"{result.device})")
    return _write_records(args, result, cfg.data_path, cfg.checkpoint, **({"task": args.task} if args.task else {}))


def add_classification_commands(subparsers) -> None:
    """Register `finetune`, `linprobe` and `eval` on an argparse subparsers object."""
    from mae_core.train.configs import EvalConfig, FinetuneConfig, LinprobeConfig

    from .cli_args import add_dataclass_args

    p = subparsers.add_parser("finetune", help="fine-tune a ViT classifier from a checkpoint or from scratch "
                                               "(official MAE recipe; torchrun for DDP)")
    add_dataclass_args(p, FinetuneConfig)
    add_record_args(p)
    p.set_defaults(func=_train_handler("finetune"))

    p = subparsers.add_parser("linprobe", help="linear probe on a frozen encoder: the official MAE recipe, or "
                                               "--probe cached (features computed once, + weighted k-NN)")
    add_dataclass_args(p, LinprobeConfig)
    add_record_args(p)
    p.set_defaults(func=_train_handler("linprobe"))

    p = subparsers.add_parser("eval", help="top-1 / top-5 of a fine-tuned or linear-probe checkpoint on an "
                                           "ImageNet-layout folder")
    add_dataclass_args(p, EvalConfig)
    add_record_args(p)
    p.add_argument("--task", choices=["finetune", "linprobe"], default=None,
                   help="protocol the number belongs to in the record (default: linprobe for a BN head, else finetune)")
    p.set_defaults(func=_eval_handler)
