"""The engines' configs (pretraining, fine-tuning, linear probing, evaluation), in a module without torch.

`maet --help` describes every option from these declarations; keeping them apart from the engines
(which re-export them: `mae_core.train.pretrain.PretrainConfig` still works) lets the help be built without
importing torch or timm. The preset names are spelled out here for the same reason;
tests/test_cli_fast_help.py checks them against `MAE_PRESETS` and `CLASSIFIER_PRESETS`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .options import DEVICES, PRECISIONS, RunOptions, check_options, default_num_workers, opt

_SIZES = [("vit_tiny", 16), ("vit_small", 16), ("vit_base", 16), ("vit_large", 16), ("vit_huge", 14)]
MAE_PRESET_NAMES = tuple(f"mae_{arch}_patch{patch}" for arch, patch in _SIZES)
CLASSIFIER_PRESET_NAMES = tuple(f"{arch}_patch{patch}" for arch, patch in _SIZES)
FEATURES = ("auto", "cls", "avg")  # the probe's feature (features.py)


@dataclass
class PretrainConfig(RunOptions):
    data_path: str = opt(help="ImageNet-layout root: images under train/<class>/ (labels unused)", path="dir")
    output_dir: str = opt(help="run folder: checkpoints, log.jsonl, config.json; a second run here resumes",
                          path="output")
    model: str = opt("mae_vit_base_patch16", "MAE preset", choices=MAE_PRESET_NAMES)
    model_kwargs: dict = opt(help='JSON overrides of the preset, e.g. \'{"depth": 4}\'', factory=dict)
    img_size: int = opt(224, "input resolution (pixels, square)", min=1)
    norm_pix_loss: bool = opt(True, "reconstruct per-patch normalised pixels (the paper's default, Table 1c)")
    mask_ratio: float = opt(0.75, "fraction of patches removed", min=0.0, max=0.99)
    epochs: int = opt(400, "training epochs", min=1)
    warmup_epochs: float = opt(40, "linear lr warm-up epochs (per iteration), then half-cycle cosine", min=0)
    batch_size: int = opt(64, "images per process per micro-batch", min=1)
    accum_iter: int = opt(1, "micro-batches per optimiser step (effective batch = batch x accum x processes)",
                          min=1)
    blr: float = opt(1.5e-4, "base lr: lr = blr x effective batch / 256", min=0)
    lr: float | None = opt(None, "absolute peak lr (overrides --blr)", min=0)
    min_lr: float = opt(0.0, "lr at the end of the cosine", min=0)
    weight_decay: float = opt(0.05, "AdamW weight decay (none on biases, norms, position embeddings, tokens)",
                              min=0)
    keep_every: int = opt(20, "also keep checkpoint-EPOCH.pth every N epochs (0: never)", min=0)
    vis_every: int = opt(0, "add the reconstruction grid of a few training images to TensorBoard every N epochs "
                            "(0: only at the end; it is always added at the end)", min=0)
    compile: bool = opt(False, "run the training step through torch.compile (a one-off compile first; "
                               "checkpoints keep the plain key names)")


@dataclass
class FinetuneConfig(RunOptions):
    data_path: str = opt(help="ImageNet-layout root: train/<class>/ and val/<class>/ image folders", path="dir")
    output_dir: str = opt(help="run folder: checkpoints, log.jsonl, config.json; a second run here resumes",
                          path="output")
    init: str = opt(help="encoder checkpoint (any format `maet inspect` reads), or 'scratch'", path="init")
    model: str = opt("vit_base_patch16", "classifier preset", choices=CLASSIFIER_PRESET_NAMES)
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


PROBES = ("official", "cached")


@dataclass
class LinprobeConfig(RunOptions):
    data_path: str = opt(help="ImageNet-layout root: train/<class>/ and val/<class>/ image folders", path="dir")
    output_dir: str = opt(help="run folder: checkpoints, log.jsonl, config.json; a second run here resumes",
                          path="output")
    init: str = opt(help="encoder checkpoint (any format `maet inspect` reads), or 'scratch' (random features: "
                         "a floor, not a result)", path="init")
    model: str = opt("vit_base_patch16", "classifier preset", choices=CLASSIFIER_PRESET_NAMES)
    model_kwargs: dict = opt(help="JSON overrides of the preset", factory=dict)
    img_size: int = opt(224, "input resolution (pixels, square)", min=1)
    num_classes: int | None = opt(None, "classes of the head (default: the class folders of train/)", min=1)
    probe: str = opt("official", "official: LARS over augmented images for --epochs (the published protocol); "
                                 "cached: the frozen features computed once, the head fitted to convergence by "
                                 "L-BFGS, and weighted k-NN on the same features (a second record, task knn)",
                     choices=PROBES)
    feature: str = opt("auto", "cls: cls token + norm (the official probe); avg: mean of patch tokens + fc_norm "
                               "(the file's norm if it has no fc_norm); auto: avg for a file with fc_norm (a "
                               "global-pool classifier), else cls", choices=FEATURES)
    epochs: int = opt(90, "training epochs (official probe)", min=1)
    warmup_epochs: float = opt(10, "linear lr warm-up epochs (per iteration), then cosine (official probe)", min=0)
    batch_size: int = opt(512, "images per process per micro-batch (cached probe: per feature-extraction batch)", min=1)
    accum_iter: int = opt(1, "micro-batches per optimiser step (effective batch = batch x accum x processes; "
                             "official probe)", min=1)
    blr: float = opt(0.1, "base lr of LARS: lr = blr x effective batch / 256 (official probe)", min=0)
    lr: float | None = opt(None, "absolute peak lr (overrides --blr; official probe)", min=0)
    min_lr: float = opt(0.0, "lr at the end of the cosine (official probe)", min=0)
    weight_decay: float = opt(0.0, "LARS weight decay (official probe)", min=0)
    cached_steps: int = opt(1000, "--probe cached: L-BFGS iterations at most (it stops once converged)", min=1)
    cached_wd: float | None = opt(None, "--probe cached: L2 penalty on the linear weights (per mean cross-entropy); "
                                        "default: the best of 1e-5, 1e-4, ..., 1 by 5-fold cross-validation on train",
                                  min=0)
    knn_k: int = opt(20, "--probe cached: neighbours of the weighted k-NN (DINO: 20)", min=1)
    knn_temperature: float = opt(0.07, "--probe cached: temperature T of the k-NN vote weights exp(cos / T) "
                                       "(DINO: 0.07)", min=1e-4)


@dataclass
class EvalConfig:
    data_path: str = opt(help="ImageNet-layout root with <split>/<class>/ image folders", path="dir")
    checkpoint: str = opt(help="fine-tuned or linear-probe classifier: ours, official, timm or HF", path="exists")
    split: str = opt("val", "sub-folder of --data-path to evaluate")
    img_size: int | None = opt(None, "input resolution (default: the checkpoint's own)", min=1)
    num_heads: int | None = opt(None, "attention heads, only for files without meta whose width is no preset's",
                                min=1)
    batch_size: int = opt(128, "images per process per batch", min=1)
    num_workers: int = opt(help="data-loader worker processes (default: min(8, CPUs))", factory=default_num_workers,
                           min=0)
    device: str = opt("auto", "cuda, cpu, or auto (cuda when torch sees one)", choices=DEVICES)
    precision: str = opt("auto", "fp32, fp16 (CUDA), bf16, or auto (fp16 on CUDA, fp32 on CPU)",
                         choices=("auto", *PRECISIONS))
    skip_corrupt: bool = opt(False, "skip unreadable images (counted) instead of stopping")
    progress: bool = opt(True, "show a progress bar")

    def __post_init__(self):
        check_options(self)

    def to_dict(self) -> dict:
        return asdict(self)
