"""MAE pretraining engine: the official recipe on CUDA (AMP, DDP via torchrun) and on CPU.

Recipe defaults (PRETRAIN.md of the official repo): AdamW betas (0.9, 0.95), weight decay 0.05
(none on biases, norms, pos-embeds and tokens), lr = blr x effective batch / 256 with blr 1.5e-4,
per-iteration linear warm-up then half-cycle cosine, RandomResizedCrop(0.2-1) + flip, mask 0.75.

A run writes into its output folder: `checkpoint-last.pth` (resumable, atomic, every
`save_every` epochs), `checkpoint-EPOCH.pth` every `keep_every` epochs, `mae_pretrain.pth`
(final weights, our format, decoder included), `log.jsonl` (step, loss, lr, img/s) and
`config.json`. Started again on the same folder it resumes where it stopped, bitwise.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..checkpoints import save_mae_checkpoint
from ..data import ImageFolderDataset, build_pretrain_transform
from ..mae import MAE_PRESETS, MaskedAutoencoder
from ..provenance import git_commit, now_iso, versions
from ..result import RunResult
from ..visualize import grid_image, load_image_files, seeded_panels
from .configs import PretrainConfig
from .distributed import (
    DistInfo,
    barrier,
    cleanup,
    init_distributed,
    train_loader,
)
from .fast import build_adamw, choose_attention, maybe_compile
from .metrics import MetricsLog
from .optim import lr_at, param_groups_weight_decay, scaled_lr, set_lr
from .precision import autocast, grad_scaler, resolve_precision
from .seeded import SeededMaskingDataset
from .state import LAST, find_resume, restore_training_state, save_training_state
from .step import backward_and_update, global_loss

FINAL = "mae_pretrain.pth"
VIS_IMAGES = 4  # rows of the reconstruction grid in TensorBoard


def _model_kwargs(cfg: PretrainConfig) -> dict:
    return {**MAE_PRESETS[cfg.model], "img_size": cfg.img_size, "norm_pix_loss": cfg.norm_pix_loss,
            **cfg.model_kwargs}


def _meta(cfg: PretrainConfig, kwargs: dict, epoch: int, run: dict) -> dict:
    return {"format": "mae-transfer/1", "arch": cfg.model, "model_kwargs": kwargs, "img_size": kwargs["img_size"],
            "patch_size": kwargs["patch_size"], "norm_pix_loss": kwargs["norm_pix_loss"], "epoch": epoch,
            "run": run}


def train_one_epoch(model, loader, optimizer, scaler, epoch: int, cfg: PretrainConfig, info: DistInfo,
                    precision: str, peak_lr: float, log: MetricsLog, last_good: Path | None) -> dict:
    model.train()
    steps = len(loader)
    bar = tqdm(loader, desc=f"pretrain epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=not (cfg.progress and info.is_main), dynamic_ncols=True)
    losses, seen, t0 = [], 0, time.perf_counter()
    for step, (imgs, _, noise) in enumerate(bar):
        if step % cfg.accum_iter == 0:  # per-iteration schedule, as the official code
            lr = lr_at(step / steps + epoch, peak_lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs)
            set_lr(optimizer, lr)
        imgs = imgs.to(info.device, non_blocking=True)
        noise = noise.to(info.device, non_blocking=True)
        with autocast(info.device, precision):
            loss = model(imgs, mask_ratio=cfg.mask_ratio, noise=noise).loss
        loss_value = global_loss(loss, info, epoch, step, last_good)
        backward_and_update(model, loss, optimizer, scaler, step, cfg.accum_iter, info)
        losses.append(loss_value)
        seen += imgs.shape[0] * info.world_size
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
            log.write(epoch=epoch, step=epoch * steps + step + 1, loss=loss_value,
                      lr=optimizer.param_groups[0]["lr"], img_per_s=seen / (time.perf_counter() - t0))
    return {"loss": sum(losses) / max(len(losses), 1), "img_per_s": seen / (time.perf_counter() - t0)}


def log_reconstructions(log: MetricsLog, model, dataset, img_size: int, mask_ratio: float, epoch: int) -> None:
    """The reconstruction grid of the first training images (eval transform, fixed masks) into TensorBoard."""
    if log.writer is None:
        return
    images = load_image_files([path for path, _ in dataset.samples[:VIS_IMAGES]], img_size)
    grid = grid_image(seeded_panels(model, images, mask_ratio), cell=max(img_size, 64))
    log.image("reconstruction", np.asarray(grid), epoch)


def pretrain(cfg: PretrainConfig) -> RunResult:
    """Run (or resume) pretraining; returns the final weights (`checkpoint`) and the last epoch's loss."""
    info = init_distributed(cfg.device)
    try:
        return _pretrain(cfg, info)
    finally:
        cleanup(info)


def _pretrain(cfg: PretrainConfig, info: DistInfo) -> RunResult:
    t_start, out = time.perf_counter(), Path(cfg.output_dir)
    precision = resolve_precision(cfg.precision, info.device)
    kwargs = _model_kwargs(cfg)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = MaskedAutoencoder(**kwargs).to(info.device)

    dataset = ImageFolderDataset(cfg.data_path, "train", build_pretrain_transform(kwargs["img_size"]),
                                 skip_corrupt=cfg.skip_corrupt)
    seeded = SeededMaskingDataset(dataset, model.patch_embed.num_patches, cfg.seed)
    sampler, loader = train_loader(seeded, cfg.batch_size, cfg.num_workers, cfg.seed, info)

    effective_batch = cfg.batch_size * cfg.accum_iter * info.world_size
    peak_lr = cfg.lr if cfg.lr is not None else scaled_lr(cfg.blr, effective_batch)
    optimizer, adamw = build_adamw(param_groups_weight_decay(model, cfg.weight_decay), info.device, lr=peak_lr,
                                   betas=(0.9, 0.95))
    scaler = grad_scaler(info.device, precision)
    attention = choose_attention(model, info.device, precision)
    # this process's fast paths: recorded fresh, also over a resumed run's record
    paths = {"optimizer": f"AdamW ({adamw})", "attention": attention, "compile": cfg.compile}

    run = {"run_id": uuid.uuid4().hex[:12], "git_commit": git_commit(), "started_at": now_iso(),
           "seed": cfg.seed, "config": cfg.to_dict(), "versions": versions(), "device": str(info.device),
           "world_size": info.world_size, "effective_batch": effective_batch, "lr": peak_lr,
           "precision": precision, **paths}
    start_epoch, resume_path = 0, find_resume(cfg.resume_from, out, cfg.resume)
    if resume_path is not None:
        start_epoch, saved = restore_training_state(resume_path, model, optimizer, scaler, kwargs)
        run = {**saved["meta"].get("run", {}), "resumed_at": now_iso(), "resumed_from_epoch": start_epoch, **paths}
    ddp_model = maybe_compile(DistributedDataParallel(model) if info.enabled else model, cfg.compile)

    log = MetricsLog(out / "log.jsonl", enabled=info.is_main)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(run, indent=2, default=str))
        log.truncate_from_epoch(start_epoch)
        print(f"pretraining {cfg.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params) on "
              f"{len(dataset)} images, {info.world_size} process(es) on {info.device}, {precision}, "
              f"AdamW ({adamw}), {attention} attention{', compiled' if cfg.compile else ''}, "
              f"effective batch {effective_batch}, "
              f"lr {peak_lr:.3g}, epochs {start_epoch + 1}..{cfg.epochs}")

    last_good, stats = resume_path, {}
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        seeded.set_epoch(epoch)
        stats = train_one_epoch(ddp_model, loader, optimizer, scaler, epoch, cfg, info, precision, peak_lr,
                                log, last_good)
        if info.is_main:
            log.write(epoch=epoch, epoch_loss=stats["loss"], img_per_s=stats["img_per_s"])
            print(f"epoch {epoch + 1}/{cfg.epochs}: loss {stats['loss']:.4f}, {stats['img_per_s']:.1f} img/s")
            meta = _meta(cfg, kwargs, epoch, run)
            if (epoch + 1) % cfg.save_every == 0 or epoch + 1 == cfg.epochs:
                last_good = save_training_state(out / LAST, model, meta, optimizer, scaler, epoch)
            if cfg.keep_every and (epoch + 1) % cfg.keep_every == 0:
                save_mae_checkpoint(out / f"checkpoint-{epoch + 1}.pth", model, meta)
            if (cfg.vis_every and (epoch + 1) % cfg.vis_every == 0) or epoch + 1 == cfg.epochs:
                log_reconstructions(log, model, dataset, kwargs["img_size"], cfg.mask_ratio, epoch + 1)
        barrier(info)

    final = out / FINAL
    if info.is_main:
        save_mae_checkpoint(final, model, _meta(cfg, kwargs, cfg.epochs - 1, {**run, "finished_at": now_iso()}))
        print(f"final weights: {final}")
    barrier(info)
    return RunResult(task="pretrain", metrics={"loss": stats["loss"]} if stats else {}, arch=cfg.model,
                     config=cfg.to_dict(), checkpoint=str(final), seed=cfg.seed,
                     duration_s=round(time.perf_counter() - t_start, 3), epochs=cfg.epochs, is_main=info.is_main,
                     device=str(info.device), world_size=info.world_size, started_at=run["started_at"],
                     provenance={"run_id": run["run_id"], "git_commit": run["git_commit"], "versions": run["versions"],
                                 "precision": precision})
