"""`maet finetune`, `maet linprobe`, `maet eval`: the classification commands; each writes a run record
(`maet linprobe --probe cached` two: the linear probe's and, as task `knn`, the k-NN one on the same features).

A training record says which weights its headline metrics (`top1`, `top5`, `loss`) measure:
`headline_weights` is 'ema' for a fine-tune with `--model-ema` (the EMA's numbers, as the paper reports
for its from-scratch baselines; the trained model's are `top1_raw` ...), else 'model'.

`add_classification_commands(subparsers)` registers them on the `maet` parser (benchmarks/cli.py).
Under torchrun only rank 0 writes the record.
"""

from __future__ import annotations

import time

from .cli_common import add_record_args, dataset_name, init_name, write_record
from .records import make_record


def _train_handler(task: str):
    def handler(args) -> dict | None:
        from mae_core.ckpt_io import sha256_file

        from .cli_args import dataclass_from_args

        if task == "finetune":
            from mae_core.train.finetune import FinetuneConfig as Config
            from mae_core.train.finetune import finetune as engine
        else:
            from mae_core.train.linprobe import LinprobeConfig as Config
            from mae_core.train.linprobe import linprobe as engine
        cfg = dataclass_from_args(Config, args)
        result = engine(cfg)
        if not (args.record and result.is_main):
            return None
        run, config = result.run, cfg.to_dict()
        feature = (run.get("init_report") or {}).get("feature")
        if feature:  # the feature the probe read (what `--feature auto` resolved to) and its norm
            config.update(feature=feature["kind"], feature_option=cfg.feature, feature_norm=feature["norm"])
        common = dict(dataset=dataset_name(args, cfg.data_path), init=init_name(args, cfg.init), arch=result.arch,
                      config=config, checkpoint_sha256=run.get("init_sha256"), seed=cfg.seed,
                      device=run.get("device"), started_at=run.get("started_at"),
                      duration_s=round(result.duration_s, 3), git_commit=run.get("git_commit"),
                      versions=run.get("versions"), world_size=run.get("world_size"), precision=run.get("precision"))
        metrics = {k: v for k, v in result.metrics.items() if v is not None}
        record = write_record(args, make_record(task=task, metrics=metrics, run_id=run.get("run_id"), **common,
                                          headline_weights=result.weights, output={
            "checkpoint": str(result.checkpoint), "sha256": sha256_file(result.checkpoint)}))
        if getattr(result, "knn", None):  # the cached probe: k-NN on the same features, a record of its own
            write_record(args, make_record(task="knn", metrics=result.knn, linprobe_run_id=run.get("run_id"), **common))
        return record
    return handler


def _eval_handler(args) -> dict | None:
    from mae_core.provenance import now_iso
    from mae_core.train.classification import checkpoint_sha256
    from mae_core.train.evaluate import EvalConfig, evaluate_checkpoint

    from .cli_args import dataclass_from_args

    cfg = dataclass_from_args(EvalConfig, args)
    started, t0 = now_iso(), time.perf_counter()
    res = evaluate_checkpoint(cfg)
    if not res["is_main"]:
        return None
    print(f"{cfg.checkpoint}: top-1 {res['top1']:.3f}  top-5 {res['top5']:.3f}  loss {res['loss']:.4f}  "
          f"({res['num_images']} images, {res['img_per_s']:.1f} img/s, {res['precision']} on {res['device']})")
    if not args.record:
        return None
    metrics = {k: res[k] for k in ("top1", "top5", "loss", "num_images", "img_per_s")}
    return write_record(args, make_record(
        task=args.task or ("linprobe" if res["linear_probe"] else "finetune"),
        dataset=dataset_name(args, cfg.data_path), init=init_name(args, cfg.checkpoint), arch=res["arch"],
        metrics=metrics, config=cfg.to_dict(), checkpoint_sha256=checkpoint_sha256(cfg.checkpoint), seed=None,
        device=res["device"], started_at=started, duration_s=round(time.perf_counter() - t0, 3), mode="eval",
        world_size=res["world_size"], precision=res["precision"], checkpoint_format=res["format"]))


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
