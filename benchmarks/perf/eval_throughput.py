"""Evaluation throughput: `maet eval` (our `evaluate_checkpoint`) against timm's own model in a plain loop.

Same checkpoint, folder, eval transform, batch size, workers and precision. The baseline is what a
user would write by hand: `timm.create_model` (the registered `vit_*` name when the size is a
preset, else timm's `VisionTransformer` class), `torchvision.datasets.ImageFolder`, and
`argmax(model(x)) == y` under `inference_mode`. Correctness first: both must count the same top-1
hits, or no speed is reported. The two cases alternate over `--repeats` rounds (after one untimed
warm-up pass each) so background load hits both alike; img/s is over a whole pass, data loading
included, which is what a user waits for.

    python -m benchmarks.perf.eval_throughput --checkpoint finetuned.pth --data-path /data/imagenet \
        --batch 256 --workers 10 --repeats 3 --json eval_perf.json
    python -m benchmarks.perf.eval_throughput --tiny      # generated folder + tiny random checkpoint (smoke)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch
import torchvision
from timm.models.vision_transformer import VisionTransformer

from mae_core.checkpoints import save_mae_checkpoint
from mae_core.data import build_eval_transform, write_synthetic
from mae_core.models_vit import arch_name, build_classifier, build_classifier_from_checkpoint
from mae_core.train.distributed import pick_device
from mae_core.train.evaluate import EvalConfig, evaluate_checkpoint
from mae_core.train.precision import autocast, resolve_precision

CASES = ("maet", "timm")
TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=6, global_pool=True)


def timm_model(kwargs: dict) -> torch.nn.Module:
    """timm's own classifier of these dimensions (no code of ours involved)."""
    name = f"{arch_name(kwargs)}_{kwargs['img_size']}"
    common = dict(num_classes=kwargs["num_classes"], global_pool="avg" if kwargs["global_pool"] else "token")
    if name in timm.list_models():
        return timm.create_model(name, pretrained=False, **common)
    return VisionTransformer(img_size=kwargs["img_size"], patch_size=kwargs["patch_size"],
                             embed_dim=kwargs["embed_dim"], depth=kwargs["depth"], num_heads=kwargs["num_heads"],
                             mlp_ratio=kwargs.get("mlp_ratio", 4.0), qkv_bias=True, **common)


def run_timm(checkpoint: str, data_path: str, split: str, batch: int, workers: int, device: str,
             precision: str) -> dict:
    """The hand-written baseline: timm model + ImageFolder + a plain loop."""
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    _, loaded = build_classifier_from_checkpoint(checkpoint)  # only to read the sizes and the state dict
    kwargs = loaded["model_kwargs"]
    if kwargs.get("linear_probe"):
        raise ValueError("the timm baseline has no BatchNorm head: benchmark a fine-tuned checkpoint")
    model = timm_model(kwargs)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("model", state))
    model.to(dev).eval()
    dataset = torchvision.datasets.ImageFolder(str(Path(data_path) / split), build_eval_transform(kwargs["img_size"]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers,
                                         pin_memory=dev.type == "cuda")
    hits, n, t0 = torch.zeros((), dtype=torch.long, device=dev), 0, time.perf_counter()
    with torch.inference_mode(), autocast(dev, precision):
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            hits += (model(x).argmax(dim=1) == y).sum()
            n += len(y)
    hits = int(hits)  # synchronises
    seconds = time.perf_counter() - t0
    return {"top1_hits": hits, "num_images": n, "top1": 100.0 * hits / n, "img_per_s": n / seconds,
            "seconds": seconds}


def run_maet(checkpoint: str, data_path: str, split: str, batch: int, workers: int, device: str,
             precision: str) -> dict:
    res = evaluate_checkpoint(EvalConfig(data_path=data_path, checkpoint=checkpoint, split=split, batch_size=batch,
                                         num_workers=workers, device=device, precision=precision, progress=False))
    m = res.metrics
    hits = round(m["top1"] * m["num_images"] / 100)
    return {"top1_hits": hits, "num_images": m["num_images"], "top1": m["top1"], "img_per_s": m["img_per_s"],
            "seconds": m["num_images"] / m["img_per_s"]}


RUNNERS = {"maet": run_maet, "timm": run_timm}


def make_tiny(root: Path, num_val: int = 96) -> tuple[str, str]:
    """A generated ImageNet-layout folder and a tiny random fine-tuned checkpoint (our format)."""
    write_synthetic(root / "data", seed=0, num_train=TINY["num_classes"], num_val=num_val, img_size=TINY["img_size"],
                    layouts=("imagenet",))
    torch.manual_seed(0)
    model = build_classifier(**TINY)
    ckpt = save_mae_checkpoint(root / "tiny_finetuned.pth", model, {"model_kwargs": TINY, "arch": arch_name(TINY)})
    return str(ckpt), str(root / "data" / "imagenet")


def benchmark(checkpoint: str, data_path: str, split: str = "val", batch: int = 128, workers: int = 4,
              device: str = "auto", precision: str = "fp32", repeats: int = 3) -> dict:
    args = (checkpoint, data_path, split, batch, workers, device, precision)
    warm = {case: RUNNERS[case](*args) for case in CASES}  # untimed: file cache, allocator, workers
    same = all(warm["maet"][k] == warm["timm"][k] for k in ("top1_hits", "num_images"))
    if not same:
        raise AssertionError(f"maet eval and the timm baseline disagree: {warm}; no speed is reported")
    passes: dict[str, list[float]] = {case: [] for case in CASES}
    for r in range(repeats):
        for case in (CASES if r % 2 == 0 else CASES[::-1]):
            passes[case].append(RUNNERS[case](*args)["img_per_s"])
    median = {case: statistics.median(v) for case, v in passes.items()}
    return {
        "checkpoint": checkpoint, "data_path": data_path, "split": split, "batch": batch, "workers": workers,
        "precision": precision, "repeats": repeats,
        "sanity": {"top1": warm["maet"]["top1"], "top1_hits": warm["maet"]["top1_hits"],
                   "num_images": warm["maet"]["num_images"], "same_top1": True},
        "img_per_s": passes, "img_per_s_median": median,
        "speed_maet_over_timm": median["maet"] / median["timm"],
        "env": {"torch": torch.__version__, "timm": timm.__version__, "device": str(pick_device(device)),
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()},
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="the fine-tuned classifier file both cases evaluate")
    p.add_argument("--data-path", help="an ImageFolder root (holding --split)")
    p.add_argument("--split", default="val", help="the folder under --data-path to evaluate")
    p.add_argument("--tiny", action="store_true", help="generate a tiny folder and checkpoint (smoke test)")
    p.add_argument("--batch", type=int, default=128, help="images per batch, both cases")
    p.add_argument("--workers", type=int, default=4, help="data-loader worker processes, both cases")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when there is one)")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "fp16", "bf16"],
                   help="autocast precision of both cases")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds, the two cases alternating")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the report here")
    return p


def main(argv: list[str] | None = None) -> dict:
    p = parser()
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            args.checkpoint, args.data_path = make_tiny(Path(tmp))
        elif not (args.checkpoint and args.data_path):
            p.error("give --checkpoint and --data-path, or --tiny")
        report = benchmark(args.checkpoint, args.data_path, args.split, args.batch, args.workers, args.device,
                           args.precision, args.repeats)
    med = report["img_per_s_median"]
    print(f"eval throughput, {report['sanity']['num_images']} images, batch {args.batch}, {args.workers} workers, "
          f"{args.precision} on {report['env']['device']} (top-1 {report['sanity']['top1']:.3f}, same in both)")
    for case in CASES:
        runs = ", ".join(f"{v:.1f}" for v in report["img_per_s"][case])
        print(f"  {case:5s} median {med[case]:9.1f} img/s   ({runs})")
    print(f"  maet/timm speed: {report['speed_maet_over_timm']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
