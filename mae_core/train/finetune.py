"""End-to-end fine-tuning with the official recipe (FINETUNE.md / `main_finetune.py`).

Defaults are the official ones: global average pooling with `fc_norm`, drop path 0.1, AdamW,
blr 1e-3 (lr = blr x effective batch / 256; FINETUNE.md uses 5e-4 for ViT-B), layer-wise lr decay
0.75 (0.65 for ViT-B), weight decay 0.05, 5 warm-up epochs then cosine to 1e-6 per iteration,
RandAugment `rand-m9-mstd0.5-inc1` + random erasing 0.25 through timm's transform factory
(bicubic), Mixup 0.8 / CutMix 1.0 with label smoothing 0.1. `--init` is any checkpoint the loader
reads (its encoder; the head is new, trunc-normal std 2e-5) or `scratch`, which with the same
loop trains the supervised baseline. The paper's from-scratch recipe (P Table 11) is options of this
command: `--beta2 0.95 --model-ema` (EMA 0.9999, `ema.py`), blr 1e-4, wd 0.3, no layer decay, no random
erasing, 300 / 200 epochs (pipelines/published_vit_*.yaml spell it out).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ..data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from ..models_vit import (
    build_classifier,
    classifier_kwargs,
    init_head,
)
from ..result import RunResult
from .classification import Recipe, train_classifier
from .configs import FinetuneConfig
from .distributed import DistInfo
from .ema import build_model_ema
from .fast import build_adamw
from .init_report import load_classifier_init
from .layer_decay import param_groups_layer_decay


def build_train_transform(cfg: FinetuneConfig):
    """The official `build_transform(is_train=True)`: timm's factory with RandAugment and random erasing."""
    return create_transform(input_size=cfg.img_size, is_training=True, color_jitter=None,
                            auto_augment=None if cfg.aa in ("", "none") else cfg.aa, interpolation="bicubic",
                            re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount,
                            scale=(cfg.crop_min_scale, 1.0), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)


def build_mixup(cfg: FinetuneConfig, num_classes: int) -> Mixup | None:
    if not cfg.mixup_active:
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                 switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                 num_classes=num_classes)


def build_criterion(cfg: FinetuneConfig) -> nn.Module:
    """Soft targets with Mixup (smoothing is inside them), else label smoothing, else plain cross-entropy."""
    if cfg.mixup_active:
        return SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


def make_recipe(cfg: FinetuneConfig):
    def recipe(num_classes: int, info: DistInfo, lr: float) -> Recipe:
        if cfg.mixup_active and cfg.batch_size % 2:
            raise ValueError(f"Mixup/CutMix pair images within a batch: --batch-size must be even, got "
                             f"{cfg.batch_size} (or turn them off with --mixup 0 --cutmix 0)")
        kwargs = classifier_kwargs(cfg.model, img_size=cfg.img_size, num_classes=num_classes,
                                   global_pool=cfg.global_pool, drop_path_rate=cfg.drop_path, **cfg.model_kwargs)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = build_classifier(**kwargs)
        report = load_classifier_init(model, cfg.init)
        if cfg.init != "scratch":
            init_head(model, std=2e-5)
        model.to(info.device)
        groups = param_groups_layer_decay(model, cfg.weight_decay, cfg.layer_decay)
        optimizer, adamw = build_adamw(groups, info.device, lr=lr, betas=(0.9, cfg.beta2))
        ema = build_model_ema(model, cfg.model_ema_decay, cfg.model_ema_warmup) if cfg.model_ema else None
        return Recipe(model=model, model_kwargs=kwargs, optimizer=optimizer, criterion=build_criterion(cfg),
                      mixup=build_mixup(cfg, num_classes), clip_grad=cfg.clip_grad, init_report=report,
                      model_ema=ema, compile=cfg.compile, optimizer_impl=f"AdamW ({adamw})")
    return recipe


def finetune(cfg: FinetuneConfig) -> RunResult:
    """Fine-tune (or resume fine-tuning) end to end; returns the final checkpoint and its metrics."""
    return train_classifier(cfg, "finetune", build_train_transform(cfg), make_recipe(cfg))
