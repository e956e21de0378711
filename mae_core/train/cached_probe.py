"""`maet linprobe --probe cached`: a linear probe on features computed once, trained to convergence, and k-NN.

Why: the official probe (linprobe.py: 90 epochs of LARS over augmented images) stops far from its
optimum at demo scale (400 images, a few epochs) and left every init near chance. Here the frozen
encoder runs once over train and val with the official eval transform; the head is the official
one, `BatchNorm1d(affine=False)` + linear, with the BN statistics set to the train features' exact
mean and variance (what its running averages estimate), and the linear layer fitted by full-batch
L-BFGS to the cross-entropy plus an L2 penalty on its weights: a convex problem, solved to
convergence (seconds at demo scale), from a zero init with no random draw, so the same features
always give the same head. Solved to convergence, the penalty decides how closely a few hundred
images are fitted: it is chosen by 5-fold cross-validation on the train features (seeded folds;
val is never looked at), as SimCLR and BYOL chose theirs on held-out train images, unless
`--cached-wd` sets it (on ImageNet, where 30 fits cost more than one). Weighted k-NN (knn.py)
reads the same features. The saved classifier has the official probe's layout (`head.0` BN,
`head.1` linear): `maet eval` measures it again.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoints import save_mae_checkpoint
from ..data import build_eval_transform
from ..errors import OptionError
from ..models_vit import arch_name
from ..provenance import git_commit, now_iso, versions
from ..result import RunResult
from .classification import FINAL, checkpoint_sha256, classification_datasets, classifier_result
from .distributed import DistInfo, cleanup, init_distributed
from .evaluate import eval_loader, topk_correct
from .features import extract, probe_classifier
from .knn import knn_classify
from .metrics import MetricsLog
from .precision import resolve_precision

WD_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # the L2 penalties cross-validation chooses from


def fit_head(head: nn.Sequential, x: torch.Tensor, y: torch.Tensor, steps: int = 1000, weight_decay: float = 1e-3,
             chunk: int = 1 << 16) -> dict:
    """Fit `head` = (BN without affine, Linear) to features `x` and labels `y`; returns loss, train top-1, steps.

    Minimises mean cross-entropy + weight_decay / 2 * |W|^2 (no penalty on the bias) with L-BFGS
    (strong-Wolfe line search) until the gradient or the change is negligible or `steps` iterations.
    The loss is summed over chunks of `chunk` rows: ImageNet's logits never sit in memory at once.
    """
    bn, linear = head
    with torch.no_grad():
        bn.running_mean.copy_(x.mean(0))
        bn.running_var.copy_(x.var(0, unbiased=False))
        bn.eval()
        z = bn(x)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=steps, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")
    n = len(y)

    def closure():
        opt.zero_grad()
        total = torch.zeros((), device=z.device)
        for start in range(0, n, chunk):
            part = F.cross_entropy(linear(z[start:start + chunk]), y[start:start + chunk], reduction="sum") / n
            part.backward()
            total += part.detach()
        penalty = 0.5 * weight_decay * linear.weight.square().sum()
        penalty.backward()
        return total + penalty.detach()

    with torch.enable_grad():
        opt.step(closure)
        loss = closure().item()
    with torch.no_grad():
        hits = sum(topk_correct(linear(z[s:s + chunk]), y[s:s + chunk], ks=(1,))[0].item() for s in range(0, n, chunk))
    return {"train_loss": loss, "train_top1": 100.0 * hits / n, "steps": opt.state[linear.weight]["n_iter"]}


def new_head(dim: int, num_classes: int, device=None) -> nn.Sequential:
    """The official probe's head: BN without affine, then a linear layer."""
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes)).to(device)


def choose_weight_decay(x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int, steps: int = 1000,
                        folds: int = 5, grid=WD_GRID) -> tuple[float, float]:
    """The L2 penalty with the best mean held-out top-1 over `folds` seeded folds of the train features
    (ties: the stronger penalty); returns it and that top-1. The val features are never looked at."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(y.device)
    parts = order.chunk(folds)
    score = {}
    for wd in grid:
        hits = 0.0
        for i, held in enumerate(parts):
            fit_on = torch.cat([p for j, p in enumerate(parts) if j != i])
            head = new_head(x.shape[1], num_classes, x.device)
            fit_head(head, x[fit_on], y[fit_on], steps, wd)
            hits += evaluate_head(head, x[held], y[held])["top1"] * len(held)
        score[wd] = hits / len(y)
    best = max(grid, key=lambda wd: (score[wd], wd))
    return best, score[best]


@torch.no_grad()
def evaluate_head(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    head.eval()
    logits = head(x)
    top1, top5 = topk_correct(logits, y)
    return {"top1": 100.0 * top1.item() / len(y), "top5": 100.0 * top5.item() / len(y),
            "loss": F.cross_entropy(logits, y).item()}


def cached_linprobe(cfg) -> RunResult:
    """Extract the features of `cfg.init`'s frozen encoder, fit the head, run k-NN, save the classifier.

    Returns the linear probe's result; the k-NN one on the same features (task `knn`) is in its `related`.
    """
    info = init_distributed(cfg.device)
    try:
        if info.enabled:
            raise OptionError("--probe cached runs in one process (it extracts the features once, then fits in "
                              "seconds): start it without torchrun")
        return _run(cfg, info)
    finally:
        cleanup(info)


def _run(cfg, info: DistInfo) -> RunResult:
    t_start, out = time.perf_counter(), Path(cfg.output_dir)
    precision = resolve_precision(cfg.precision, info.device)
    train_set, val_set, num_classes = classification_datasets(cfg, build_eval_transform(cfg.img_size), cfg.img_size)
    model, kwargs, report, choice = probe_classifier(cfg.model, cfg.model_kwargs, cfg.img_size, num_classes,
                                                     cfg.init, cfg.feature, cfg.seed)
    model.to(info.device)
    arch, feature = arch_name(kwargs), choice.as_dict()
    run = {"run_id": uuid.uuid4().hex[:12], "task": "linprobe", "probe": "cached", "git_commit": git_commit(),
           "started_at": now_iso(), "seed": cfg.seed, "config": cfg.to_dict(), "versions": versions(),
           "device": str(info.device), "world_size": 1, "precision": precision, "init": cfg.init,
           "init_sha256": checkpoint_sha256(cfg.init) if cfg.init != "scratch" else None,
           "init_report": report.compact(), "feature": feature, "classes": train_set.classes}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(run, indent=2, default=str))
    report.sha256 = run["init_sha256"]
    report.write(out)
    print(f"linprobe (cached features) {arch} from {cfg.init} on {len(train_set)} images / {num_classes} classes, "
          f"{info.device}, {precision}; feature {feature['kind']}: {feature['why']}")

    progress = cfg.progress
    train_x, train_y = extract(model, eval_loader(train_set, cfg.batch_size, cfg.num_workers, info), info.device,
                               precision, progress, desc="train features")
    val_x, val_y = extract(model, eval_loader(val_set, cfg.batch_size, cfg.num_workers, info), info.device,
                           precision, progress, desc="val features")
    t_fit = time.perf_counter()
    wd, cv = cfg.cached_wd, {}
    if wd is None:
        wd, cv_top1 = choose_weight_decay(train_x, train_y, num_classes, cfg.seed, cfg.cached_steps)
        cv = {"cv_top1": cv_top1}
    fit = fit_head(model.head, train_x, train_y, cfg.cached_steps, wd)
    lin = evaluate_head(model.head, val_x, val_y)
    knn = knn_classify(train_x, train_y, val_x, val_y, num_classes, cfg.knn_k, cfg.knn_temperature)
    duration = time.perf_counter() - t_start
    metrics = {**lin, **fit, "weight_decay": wd, **cv, "feature_dim": train_x.shape[1],
               "fit_s": time.perf_counter() - t_fit}
    MetricsLog(out / "log.jsonl").write(**metrics, knn_top1=knn["top1"], knn_top5=knn["top5"])
    final = out / FINAL["linprobe"]
    meta = {"format": "mae-transfer/1", "task": "linprobe", "arch": arch, "model_kwargs": kwargs,
            "img_size": cfg.img_size, "classes": train_set.classes, "metrics": metrics, "knn": knn,
            "elapsed_s": duration, "run": {**run, "finished_at": now_iso()}}
    save_mae_checkpoint(final, model, meta)
    chosen = f" by 5-fold cross-validation ({cv['cv_top1']:.2f} held out)" if cv else ""
    print(f"linprobe (cached) finished: val top-1 {lin['top1']:.2f} (train top-1 {fit['train_top1']:.2f}, L2 {wd:g}"
          f"{chosen}, {fit['steps']} L-BFGS steps); k-NN (k={cfg.knn_k}, T={cfg.knn_temperature}) top-1 "
          f"{knn['top1']:.2f}; weights: {final}")
    result = classifier_result("linprobe", cfg, run, arch=arch, metrics=metrics, checkpoint=final, is_main=True,
                               duration_s=duration, report=report, feature=feature, headline_weights="model")
    knn_extra = {"linprobe_run_id": run["run_id"], "init_report": result.extra["init_report"]}
    result.related = [dataclasses.replace(result, task="knn", metrics=knn, extra=knn_extra,
                                          provenance={**result.provenance, "run_id": None})]
    return result
