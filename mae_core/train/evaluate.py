"""Top-1, top-5, loss and img/s of a classifier on an ImageNet-layout folder, as the official `evaluate`.

The transform is the official eval transform (resize by 1/0.875, bicubic; centre crop). A class's
index is its position among the sorted folder names: for ImageNet that is the sorted-synset order
every published head uses. Under DDP each process evaluates its own shard of the folder (no
padding, no duplicates, unlike a DistributedSampler) and the counts are summed, so the numbers are
exact for any number of processes.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ..ckpt_io import sha256_file
from ..data import ImageFolderDataset, build_eval_transform
from ..errors import ClassCountMismatchError
from ..models_vit import arch_name, build_classifier_from_checkpoint, linear_layer
from ..provenance import now_iso
from ..result import RunResult
from .configs import EvalConfig
from .distributed import DistInfo, all_reduce_sum, cleanup, init_distributed
from .precision import autocast, resolve_precision


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the k highest logits, per k (k capped at the class count)."""
    maxk = min(max(ks), logits.shape[1])
    hit = logits.topk(maxk, dim=1).indices.eq(target[:, None])
    return [hit[:, :min(k, maxk)].any(dim=1).sum() for k in ks]


def checkpoint_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint file; of a checkpoint folder (Hugging Face), over its files' names and hashes."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    lines = [f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n" for f in sorted(path.rglob("*")) if f.is_file()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def check_class_count(num_classes: int, dataset: ImageFolderDataset, source: str) -> None:
    found = len(dataset.classes)
    if num_classes != found:
        shown = ", ".join(dataset.classes[:5]) + (", ..." if found > 5 else "")
        raise ClassCountMismatchError(
            f"{source} has a {num_classes}-class head, but {dataset.split_dir} holds {found} class folders "
            f"({shown}). Evaluate it on the data set it was trained for (ImageNet-1k: the 1000 synset folders), "
            f"or train a new head for these classes: maet finetune / maet linprobe --init {source}")


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int, info: DistInfo) -> DataLoader:
    """In order, every image once; this process's shard under DDP."""
    shard = Subset(dataset, range(info.rank, len(dataset), info.world_size)) if info.enabled else dataset
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=info.device.type == "cuda", drop_last=False)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device, precision: str = "fp32",
             info: DistInfo | None = None, progress: bool = False) -> dict:
    """top1 / top5 (percent), mean cross-entropy, images and img/s (data loading included) over `loader`.

    Counts stay on the device until the end: one synchronisation per evaluation, not per batch.
    """
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, summed loss
    seen, t0 = 0, time.perf_counter()
    for imgs, target in tqdm(loader, desc="eval", leave=False, disable=not progress, dynamic_ncols=True):
        imgs, target = imgs.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(imgs)
        logits = logits.float()
        top1, top5 = topk_correct(logits, target)
        sums += torch.stack([top1, top5, F.cross_entropy(logits, target, reduction="sum")]).double()
        seen += len(target)
    local = [seen, *sums.tolist()]  # .tolist() synchronises
    seconds = time.perf_counter() - t0
    n, c1, c5, loss = all_reduce_sum(local, info)
    if n == 0:
        raise ValueError("evaluation saw no images")
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss / n, "num_images": int(n),
            "img_per_s": n / seconds, "seconds": seconds}


def evaluate_checkpoint(cfg: EvalConfig) -> RunResult:
    """`maet eval`: rebuild the classifier a checkpoint holds and evaluate it on `data_path/split`.

    The result's task is the protocol the file belongs to: linprobe for a BN head, else finetune.
    """
    started, t0 = now_iso(), time.perf_counter()
    info = init_distributed(cfg.device)
    try:
        precision = resolve_precision(cfg.precision, info.device)
        model, loaded = build_classifier_from_checkpoint(cfg.checkpoint, cfg.img_size, cfg.num_heads)
        img_size = model.patch_embed.img_size[0]
        dataset = ImageFolderDataset(cfg.data_path, cfg.split, build_eval_transform(img_size),
                                     skip_corrupt=cfg.skip_corrupt)
        check_class_count(linear_layer(model).out_features, dataset, cfg.checkpoint)
        trained_on = loaded["classes"]
        if trained_on and list(trained_on) != dataset.classes and info.is_main:
            print(f"warning: {cfg.checkpoint} was trained on classes {trained_on[:5]}..., the folder holds "
                  f"{dataset.classes[:5]}...; label i is taken to be the i-th sorted folder", file=sys.stderr)
        model.to(info.device)
        metrics = evaluate(model, eval_loader(dataset, cfg.batch_size, cfg.num_workers, info), info.device,
                           precision, info, progress=cfg.progress and info.is_main)
        kwargs = loaded["model_kwargs"]
        return RunResult(
            task="linprobe" if kwargs.get("linear_probe") else "finetune",
            metrics={k: metrics[k] for k in ("top1", "top5", "loss", "num_images", "img_per_s")},
            arch=loaded["meta"].get("arch") or arch_name(kwargs), config=cfg.to_dict(), checkpoint=str(cfg.checkpoint),
            duration_s=round(time.perf_counter() - t0, 3), is_main=info.is_main, mode="eval",
            measured_sha256=checkpoint_sha256(cfg.checkpoint) if info.is_main else None, device=str(info.device),
            world_size=info.world_size, started_at=started, provenance={"precision": precision},
            extra={"checkpoint_format": loaded["format"]})
    finally:
        cleanup(info)
