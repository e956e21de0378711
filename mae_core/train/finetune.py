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

from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ..data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from ..models_vit import (
    CLASSIFIER_PRESETS,
    build_classifier,
    classifier_kwargs,
    init_head,
    load_init_checkpoint,
)
from .classification import ClassifierRun, Recipe, train_classifier
from .distributed import DistInfo
from .ema import build_model_ema
from .fast import build_adamw
from .layer_decay import param_groups_layer_decay
from .options import RunOptions, opt


@dataclass
class FinetuneConfig(RunOptions):
    data_path: str = opt(help="ImageNet-layout root: train/<class>/ and val/<class>/ image folders", path="dir")
    output_dir: str = opt(help="run folder: checkpoints, log.jsonl, config.json; a second run here resumes",
                          path="output")
    init: str = opt(help="encoder checkpoint (any format `maet inspect` reads), or 'scratch'", path="init")
    model: str = opt("vit_base_patch16", "classifier preset", choices=CLASSIFIER_PRESETS)
    model_kwargs: dict = opt(help='JSON overrides of the preset, e.g. \'{"depth": 6}\'', factory=dict)
    img_size: int = opt(224, "input resolution (pixels, square)", min=1)
    num_classes: int | None = opt(None, "classes of the head (default: the class folders of train/)", min=1)
    global_pool: bool = opt(True, "mean of patch tokens + fc_norm (the official fine-tune); no: cls token + norm")
    drop_path: float = opt(0.1, "stochastic depth rate", min=0.0, max=1.0)
    epochs: int = opt(50, "training epochs", min=1)
    warmup_epochs: float = opt(5, "linear lr warm-up epochs (per iteration), then cosine", min=0)
    batch_size: int = opt(64, "images per process per micro-batch", min=1)
    accum_iter: int = opt(1, "micro-batches per optimiser step (effective batch = batch x accum x processes)",
                          min=1)
    blr: float = opt(1e-3, "base lr: lr = blr x effective batch / 256", min=0)
    lr: float | None = opt(None, "absolute peak lr (overrides --blr)", min=0)
    min_lr: float = opt(1e-6, "lr at the end of the cosine", min=0)
    weight_decay: float = opt(0.05, "AdamW weight decay (none on biases, norms, position embeddings, tokens)",
                              min=0)
    beta2: float = opt(0.999, "AdamW beta2 (0.999 as the official fine-tune; the paper's from-scratch recipe: "
                              "0.95)", min=0.0, max=0.9999)
    layer_decay: float = opt(0.75, "layer-wise lr decay (0.65 for ViT-B in the official recipe; 1: off)",
                             min=0.0, max=1.0)
    clip_grad: float | None = opt(None, "clip the gradient norm to this (default: no clipping)", min=0)
    smoothing: float = opt(0.1, "label smoothing", min=0.0, max=1.0)
    mixup: float = opt(0.8, "Mixup alpha (0: off)", min=0)
    cutmix: float = opt(1.0, "CutMix alpha (0: off)", min=0)
    mixup_prob: float = opt(1.0, "probability of applying Mixup or CutMix to a batch", min=0.0, max=1.0)
    mixup_switch_prob: float = opt(0.5, "probability of CutMix instead of Mixup when both are on",
                                   min=0.0, max=1.0)
    mixup_mode: str = opt("batch", "Mixup/CutMix per batch, pair or element (timm)",
                          choices=("batch", "pair", "elem"))
    aa: str = opt("rand-m9-mstd0.5-inc1", "timm auto-augment policy string; 'none': off")
    reprob: float = opt(0.25, "random-erasing probability", min=0.0, max=1.0)
    remode: str = opt("pixel", "random-erasing fill (timm)", choices=("const", "rand", "pixel"))
    recount: int = opt(1, "random-erasing regions per image", min=1)
    crop_min_scale: float = opt(0.08, "RandomResizedCrop's smallest area fraction (timm's and the official 0.08)",
                                min=0.0, max=1.0)
    model_ema: bool = opt(False, "keep an EMA of the weights (timm's ModelEmaV3), evaluated every epoch; its "
                                 "top-1 becomes the headline and finetuned.pth holds it (the official fine-tune "
                                 "has none; the paper's from-scratch recipe uses 0.9999)")
    model_ema_decay: float = opt(0.9999, "EMA decay per optimiser step", min=0.0, max=1.0)
    model_ema_warmup: bool = opt(False, "timm's EMA decay warm-up (1 - step^(-2/3), capped at the decay): for runs "
                                        "of a few thousand steps, where a fixed 0.9999 stays near the early weights")
    compile: bool = opt(False, "run the training step through torch.compile (a one-off compile first; "
                               "checkpoints keep the plain key names)")

    @property
    def mixup_active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


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
        report = {}
        if cfg.init != "scratch":
            report = load_init_checkpoint(model, cfg.init)
            init_head(model, std=2e-5)
        model.to(info.device)
        groups = param_groups_layer_decay(model, cfg.weight_decay, cfg.layer_decay)
        optimizer, adamw = build_adamw(groups, info.device, lr=lr, betas=(0.9, cfg.beta2))
        ema = build_model_ema(model, cfg.model_ema_decay, cfg.model_ema_warmup) if cfg.model_ema else None
        return Recipe(model=model, model_kwargs=kwargs, optimizer=optimizer, criterion=build_criterion(cfg),
                      mixup=build_mixup(cfg, num_classes), clip_grad=cfg.clip_grad, init_report=report,
                      model_ema=ema, compile=cfg.compile, optimizer_impl=f"AdamW ({adamw})")
    return recipe


def finetune(cfg: FinetuneConfig) -> ClassifierRun:
    """Fine-tune (or resume fine-tuning) end to end; returns the final checkpoint and its metrics."""
    return train_classifier(cfg, "finetune", build_train_transform(cfg), make_recipe(cfg))
