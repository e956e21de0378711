"""The loop that fine-tuning and linear probing share (the official `engine_finetune.py` + main loop).

A protocol (finetune.py, linprobe.py) decides the model, optimizer, loss, Mixup and train
transform: a `Recipe`. This module runs it: per-iteration warm-up + cosine lr (scaled per group
by `lr_scale`), AMP, gradient accumulation, DDP, an EMA of the weights if the recipe keeps one
(`ema.py`: its numbers are then the headline and its weights the final file), an evaluation after
every epoch, and the same
run folder as pretraining: `checkpoint-last.pth` (atomic, resumable bitwise: data augmentation,
Mixup and drop path are seeded per sample / per step), final weights in our format, `log.jsonl`
and `config.json`. Started again on the same folder, a run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..checkpoints import LoadReport, save_mae_checkpoint
from ..ckpt_io import sha256_file
from ..data import ImageFolderDataset, build_eval_transform
from ..errors import ClassCountMismatchError, DatasetLayoutError
from ..models_vit import arch_name
from ..provenance import git_commit, now_iso, versions
from ..result import RunResult
from .distributed import DistInfo, barrier, cleanup, init_distributed, train_loader
from .ema import summarise, update_count
from .evaluate import checkpoint_sha256, eval_loader, evaluate  # noqa: F401  (checkpoint_sha256: public here)
from .fast import choose_attention, maybe_compile
from .metrics import MetricsLog
from .optim import lr_at, scaled_lr, set_lr
from .precision import autocast, grad_scaler, resolve_precision
from .seeded import SeededSampleDataset, seed_step
from .state import LAST, find_resume, restore_training_state, save_training_state
from .step import backward_and_update, global_loss

FINAL = {"finetune": "finetuned.pth", "linprobe": "linprobe.pth"}


@dataclass
class Recipe:
    """What a protocol decides; everything else is the shared loop."""

    model: nn.Module  # on the training device, not yet wrapped in DDP
    model_kwargs: dict  # `models_vit.build_classifier` arguments: rebuilds it (resume check, eval)
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    mixup: Callable | None = None  # (images, labels) -> (mixed images, soft targets)
    clip_grad: float | None = None
    init_report: LoadReport = field(default_factory=LoadReport)  # the --init load, tensor by tensor
    model_ema: nn.Module | None = None  # timm's ModelEmaV3 of `model`, updated after each optimiser step
    feature: dict | None = None  # a probe's feature (features.FeatureChoice.as_dict()), for the record's config
    compile: bool = False  # train through torch.compile (saving and evaluation use `model` itself)
    optimizer_impl: str | None = None  # e.g. 'AdamW (fused)': recorded in config.json


MakeRecipe = Callable[[int, DistInfo, float], Recipe]  # (num_classes, dist info, peak lr) -> Recipe


def sync_buffers(model: nn.Module, info: DistInfo) -> None:
    """Give every process rank 0's buffers (the linear probe's BN running statistics, which each rank
    updated from its own last batch), so the sharded evaluation measures the model rank 0 saves."""
    if info.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def train_one_epoch(model, recipe: Recipe, loader, scaler, epoch: int, cfg, info: DistInfo, precision: str,
                    peak_lr: float, log: MetricsLog, last_good: Path | None) -> dict:
    model.train(True)
    optimizer, steps = recipe.optimizer, len(loader)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=not (cfg.progress and info.is_main), dynamic_ncols=True)
    losses, seen, t0 = [], 0, time.perf_counter()
    for step, (imgs, target) in enumerate(bar):
        if step % cfg.accum_iter == 0:  # per-iteration schedule, as the official code
            set_lr(optimizer, lr_at(step / steps + epoch, peak_lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs))
        seed_step(cfg.seed, epoch, step, info.rank)  # Mixup and drop path draw from here
        imgs = imgs.to(info.device, non_blocking=True)
        target = target.to(info.device, non_blocking=True)
        if recipe.mixup is not None:
            imgs, target = recipe.mixup(imgs, target)
        with autocast(info.device, precision):
            loss = recipe.criterion(model(imgs), target)
        loss_value = global_loss(loss, info, epoch, step, last_good, hint="--clip-grad, ")
        stepped = backward_and_update(model, loss, optimizer, scaler, step, cfg.accum_iter, info, recipe.clip_grad)
        if stepped and recipe.model_ema is not None:  # as timm's train.py: after the step, counted from 1
            recipe.model_ema.update(recipe.model, step=update_count(epoch, step, steps, cfg.accum_iter))
        losses.append(loss_value)
        seen += imgs.shape[0] * info.world_size
        lr = max(g["lr"] for g in optimizer.param_groups)  # the head's (unscaled) lr, as the official log
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
        if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
            log.write(epoch=epoch, step=epoch * steps + step + 1, loss=loss_value, lr=lr,
                      img_per_s=seen / (time.perf_counter() - t0))
    return {"loss": sum(losses) / max(len(losses), 1), "img_per_s": seen / (time.perf_counter() - t0)}


def classifier_result(task: str, cfg, run: dict, *, arch: str, metrics: dict, checkpoint: Path, is_main: bool,
                      duration_s: float, report: LoadReport, feature: dict | None = None, **extra) -> RunResult:
    """A finished fine-tune or probe as every engine hands it back (mae_core/result.py). `run` is the provenance
    of the run's first part (a resumed run keeps it); `metrics` of the last epoch (the EMA's if any, then also
    *_ema, *_raw), best_top1, ...; `extra` become record fields."""
    config = cfg.to_dict()
    if feature:  # the feature the probe read (what `--feature auto` resolved to) and its norm
        config.update(feature=feature["kind"], feature_option=cfg.feature, feature_norm=feature["norm"])
    output = {"checkpoint": str(checkpoint), **({"sha256": sha256_file(checkpoint)} if is_main else {})}
    return RunResult(task=task, metrics={k: v for k, v in metrics.items() if v is not None}, arch=arch,
                     config=config, checkpoint=str(checkpoint), seed=cfg.seed, duration_s=round(duration_s, 3),
                     is_main=is_main, measured_sha256=run.get("init_sha256"), device=run.get("device"),
                     world_size=run.get("world_size") or 1, started_at=run.get("started_at"),
                     provenance={k: run.get(k) for k in ("run_id", "git_commit", "versions", "precision")},
                     extra={**extra, "output": output, "init_report": report.compact()})


def train_classifier(cfg, task: str, train_transform, make_recipe: MakeRecipe) -> RunResult:
    """Run (or resume) a fine-tune or linear probe described by `cfg` and `make_recipe`."""
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, task, train_transform, make_recipe, info)
    finally:
        cleanup(info)


def classification_datasets(cfg, train_transform, img_size: int) -> tuple[ImageFolderDataset, ImageFolderDataset, int]:
    train = ImageFolderDataset(cfg.data_path, "train", train_transform, skip_corrupt=cfg.skip_corrupt)
    val = ImageFolderDataset(cfg.data_path, "val", build_eval_transform(img_size), skip_corrupt=cfg.skip_corrupt)
    if train.classes != val.classes:
        only = sorted(set(train.classes) ^ set(val.classes))[:5]
        raise DatasetLayoutError(f"train/ and val/ of {cfg.data_path} hold different class folders (e.g. {only}); "
                                 "the labels are the sorted folder names, so both splits need the same ones")
    num_classes = cfg.num_classes or len(train.classes)
    if num_classes != len(train.classes):
        raise ClassCountMismatchError(f"--num-classes {num_classes} but {train.split_dir} holds "
                                      f"{len(train.classes)} class folders; leave --num-classes unset to use them")
    return train, val, num_classes


def _train(cfg, task: str, train_transform, make_recipe: MakeRecipe, info: DistInfo) -> RunResult:
    t_start, out = time.perf_counter(), Path(cfg.output_dir)
    precision = resolve_precision(cfg.precision, info.device)
    train_set, val_set, num_classes = classification_datasets(cfg, train_transform, cfg.img_size)
    seeded = SeededSampleDataset(train_set, cfg.seed)
    sampler, loader = train_loader(seeded, cfg.batch_size, cfg.num_workers, cfg.seed, info)
    val_loader = eval_loader(val_set, cfg.batch_size, cfg.num_workers, info)

    effective_batch = cfg.batch_size * cfg.accum_iter * info.world_size
    peak_lr = cfg.lr if cfg.lr is not None else scaled_lr(cfg.blr, effective_batch)
    recipe = make_recipe(num_classes, info, peak_lr)
    scaler = grad_scaler(info.device, precision)

    init_sha256 = checkpoint_sha256(cfg.init) if cfg.init != "scratch" and info.is_main else None
    run = {"run_id": uuid.uuid4().hex[:12], "task": task, "git_commit": git_commit(), "started_at": now_iso(),
           "seed": cfg.seed, "config": cfg.to_dict(), "versions": versions(), "device": str(info.device),
           "world_size": info.world_size, "precision": precision, "effective_batch": effective_batch, "lr": peak_lr,
           "init": cfg.init, "init_sha256": init_sha256,
           "init_report": recipe.init_report.compact(), "classes": train_set.classes}
    start_epoch, elapsed, best = 0, 0.0, {"top1": -1.0, "epoch": -1}
    resume_path = find_resume(cfg.resume_from, out, cfg.resume)
    if resume_path is not None:
        start_epoch, saved = restore_training_state(resume_path, recipe.model, recipe.optimizer, scaler,
                                                    recipe.model_kwargs, what=task, ema=recipe.model_ema)
        meta = saved["meta"]
        run = {**meta.get("run", {}), "config": cfg.to_dict(), "resumed_at": now_iso(),
               "resumed_from_epoch": start_epoch}
        elapsed, best = meta.get("elapsed_s", 0.0), meta.get("best", best)
    if recipe.model_ema is not None:  # a copy made before this: its evaluation takes the same path
        choose_attention(recipe.model_ema.module, info.device, precision)
    run.update(optimizer=recipe.optimizer_impl or type(recipe.optimizer).__name__, compile=recipe.compile,
               attention=choose_attention(recipe.model, info.device, precision))
    model = maybe_compile(DistributedDataParallel(recipe.model) if info.enabled else recipe.model, recipe.compile)

    log = MetricsLog(out / "log.jsonl", enabled=info.is_main)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(run, indent=2, default=str))
        recipe.init_report.sha256 = init_sha256
        recipe.init_report.write(out)
        log.truncate_from_epoch(start_epoch)
        trainable = sum(p.numel() for p in recipe.model.parameters() if p.requires_grad)
        print(f"{task} {arch_name(recipe.model_kwargs)} ({trainable / 1e6:.2f}M trainable params) from {cfg.init} "
              f"on {len(train_set)} images / {num_classes} classes, {info.world_size} process(es) on {info.device}, "
              f"{precision}, effective batch {effective_batch}, lr {peak_lr:.3g}, "
              f"epochs {start_epoch + 1}..{cfg.epochs}")

    ema = recipe.model_ema
    # Which weights the headline numbers and the final file are: the EMA's when the run keeps one.
    weights = {"weights": "ema" if ema is not None else "model"}
    if ema is not None:
        weights["model_ema"] = {"decay": ema.decay, "warmup": ema.use_warmup}

    def measure() -> dict:
        raw = evaluate(recipe.model, val_loader, info.device, precision, info)
        return summarise(raw, evaluate(ema.module, val_loader, info.device, precision, info) if ema else None)

    def meta_at(epoch: int, **extra) -> dict:
        return {"format": "mae-transfer/1", "task": task, "arch": arch_name(recipe.model_kwargs),
                "model_kwargs": recipe.model_kwargs, "img_size": cfg.img_size, "classes": train_set.classes,
                "epoch": epoch, "best": best, "elapsed_s": elapsed + time.perf_counter() - t_start, "run": run,
                **extra}

    last_good, stats, test = resume_path, {}, {}
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        seeded.set_epoch(epoch)
        stats = train_one_epoch(model, recipe, loader, scaler, epoch, cfg, info, precision, peak_lr, log, last_good)
        sync_buffers(recipe.model, info)
        test = measure()
        if test["top1"] > best["top1"]:
            best = {"top1": test["top1"], "epoch": epoch}
        if info.is_main:
            log.write(epoch=epoch, train_loss=stats["loss"], **{f"test_{k}": v for k, v in test.items()},
                      best_top1=best["top1"], img_per_s=stats["img_per_s"])
            raw = f" (model without EMA: {test['top1_raw']:.2f})" if ema else ""
            print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {stats['loss']:.4f}, val top-1 {test['top1']:.2f}{raw} "
                  f"top-5 {test['top5']:.2f} (best {best['top1']:.2f}), {stats['img_per_s']:.1f} img/s")
            if (epoch + 1) % cfg.save_every == 0 or epoch + 1 == cfg.epochs:
                last_good = save_training_state(out / LAST, recipe.model, meta_at(epoch), recipe.optimizer,
                                                scaler, epoch, ema=ema)
        barrier(info)

    if not test:  # resumed a run that had already finished: measure its weights again
        test = measure()
    metrics = {**test, "best_top1": best["top1"], "best_epoch": best["epoch"] + 1, "train_loss": stats.get("loss"),
               "epochs": cfg.epochs}
    final = out / FINAL[task]
    duration = elapsed + time.perf_counter() - t_start
    if info.is_main:
        save_mae_checkpoint(final, ema.module if ema else recipe.model,
                            meta_at(cfg.epochs - 1, metrics=metrics, run={**run, "finished_at": now_iso()}, **weights))
        print(f"{task} finished: val top-1 {metrics['top1']:.2f}{' (EMA)' if ema else ''} (best {best['top1']:.2f}); "
              f"weights{' (the EMA)' if ema else ''}: {final}")
    barrier(info)
    return classifier_result(task, cfg, run, arch=arch_name(recipe.model_kwargs), metrics=metrics, checkpoint=final,
                             is_main=info.is_main, duration_s=duration, report=recipe.init_report,
                             feature=recipe.feature, headline_weights=weights["weights"])
