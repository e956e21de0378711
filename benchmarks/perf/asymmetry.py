"""The MAE paper's Table 2 claim: an encoder on the visible patches only makes pretraining several times faster.

The paper (ViT-L, 224 px, mask 75 %): against the same network with the mask tokens run through the
encoder, MAE's step is 2.8x faster with an 8-block decoder and 3.7x with a 1-block one (3.3x fewer FLOPs).
Here both variants are our MAE with the same weights, images and masking noise; the "mask tokens in the
encoder" variant (`MaskTokenEncoderMAE`) replaces the removed patches' embeddings by a learned mask token,
adds the position embeddings and runs the encoder over all L tokens (+ cls); its decoder is the usual one,
on all tokens, so the two differ only in what the encoder sees. A step is forward, loss, backward, AdamW.
Each case runs in a fresh process (memory = peak RSS of the step minus RSS after building, as
`pretrain_step`); the FLOPs of one forward+backward come from torch's FlopCounterMode.

    python -m benchmarks.perf.asymmetry --batch 4 --steps 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from mae_core.mae import MAE_PRESETS, MaskedAutoencoder
from mae_core.train.fast import build_adamw
from mae_core.train.optim import param_groups_weight_decay

from .memory import peak_rss_mb, start_rss_peak
from .pretrain_step import CONFIGS as STEP_CONFIGS
from .pretrain_step import cpu_native_bf16

VARIANTS = ("mae", "mask_tokens_in_encoder")
CONFIGS = {"vit_large": ("mae_vit_large_patch16", {}, 224), "tiny": STEP_CONFIGS["tiny"]}
PAPER = {8: 2.8, 1: 3.7}  # Table 2's wall-clock speed-ups (and 3.3x in FLOPs)
MASK_RATIO = 0.75


class MaskTokenEncoderMAE(MaskedAutoencoder):
    """The baseline of Table 2: the encoder sees all L patches, the removed ones as a (learned) mask token."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.encoder_mask_token = torch.nn.Parameter(torch.zeros(1, 1, self.pos_embed.shape[-1]))
        torch.nn.init.normal_(self.encoder_mask_token, std=0.02)

    def forward_encoder(self, imgs, mask_ratio, noise=None):
        x = self.patch_embed(imgs)
        _, mask, ids_restore = self.random_masking(x, mask_ratio, noise)  # the same mask as MAE's
        x = torch.lerp(x, self.encoder_mask_token.to(x.dtype).expand_as(x), mask.unsqueeze(-1).to(x.dtype))
        x = x + self.pos_embed[:, 1:, :]
        x = torch.cat(((self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1), x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        x = self.decoder_embed(x) + self.decoder_pos_embed  # all tokens already in patch order
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]


def build(variant: str, config: str, decoder_depth: int, seed: int = 0) -> MaskedAutoencoder:
    """Both variants from the same seed: identical shared weights (the baseline adds its encoder mask token)."""
    preset, overrides, img = CONFIGS[config]
    kwargs = {**MAE_PRESETS[preset], **overrides, "img_size": img, "norm_pix_loss": True,
              "decoder_depth": decoder_depth}
    torch.manual_seed(seed)
    return (MaskTokenEncoderMAE if variant == VARIANTS[1] else MaskedAutoencoder)(**kwargs)


def inputs(model: MaskedAutoencoder, batch: int, n: int, seed: int, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    side = model.patch_embed.img_size[0]
    imgs = torch.randn(batch, 3, side, side, generator=g).to(device)
    return imgs, [torch.rand(batch, model.patch_embed.num_patches, generator=g).to(device) for _ in range(n)]


def step_flops(model: MaskedAutoencoder, imgs: torch.Tensor, noise: torch.Tensor) -> int:
    """FLOPs of one forward + backward (matmuls, convolutions, attention), counted by torch."""
    with FlopCounterMode(display=False) as counter:
        model(imgs, mask_ratio=MASK_RATIO, noise=noise).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def encoder_tokens(model: MaskedAutoencoder, imgs: torch.Tensor, noise: torch.Tensor) -> int:
    """How many tokens the first encoder block receives (cls included), seen by a hook on the block."""
    seen = []
    hook = model.blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        model(imgs, mask_ratio=MASK_RATIO, noise=noise)
    hook.remove()
    return seen[0]


def measure(variant: str, config: str, decoder_depth: int, batch: int, steps: int, warmup: int,
            precision: str = "fp32", seed: int = 0, device: str = "cpu") -> dict:
    """Time `steps` training steps (after `warmup`) of one variant in this process.
    Memory: on CUDA the peak allocated; on CPU the peak RSS of the steps minus the RSS after building."""
    model = build(variant, config, decoder_depth, seed).to(device).train()
    imgs, noises = inputs(model, batch, warmup + steps, seed, device)
    flops = step_flops(model, imgs[:1], noises[0][:1]) * batch
    rss_before, method = start_rss_peak()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_mb = torch.cuda.memory_allocated() / 2**20
    opt, impl = build_adamw(param_groups_weight_decay(model, 0.05), device, lr=1.5e-4, betas=(0.9, 0.95))
    times, cpu, losses = [], [], []
    for i in range(warmup + steps):
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(imgs, mask_ratio=MASK_RATIO, noise=noises[i]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        losses.append(loss.item())
    return dict(variant=variant, decoder_depth=decoder_depth, batch=batch, precision=precision, step_s=times,
                img_per_s=batch / statistics.median(times), cpu_s=cpu,
                img_per_cpu_s=batch / statistics.median(cpu), flops_per_step=flops, loss_first=losses[0],
                encoder_tokens=encoder_tokens(model, imgs[:1], noises[0][:1]),
                mem_mb=(torch.cuda.max_memory_allocated() / 2**20 - base_mb) if device == "cuda"
                else peak_rss_mb(method) - rss_before, adamw=impl, device=device)


def run_case(variant: str, depth: int, args: argparse.Namespace) -> dict:
    """`measure` in a fresh interpreter, so each case's memory peak is its own."""
    cmd = [sys.executable, "-m", "benchmarks.perf.asymmetry", "--case", f"{variant}:{depth}",
           "--config", args.config, "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--precision", args.precision,
           "--device", args.device]
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if done.returncode:
        raise RuntimeError(f"case {variant}:{depth} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(cases: list[dict]) -> list[dict]:
    """Per decoder depth: speed-up (img/s of MAE over the baseline), memory and FLOP ratios (baseline / MAE)."""
    rows = []
    for depth in sorted({c["decoder_depth"] for c in cases}, reverse=True):
        mae, base = (next(c for c in cases if (c["variant"], c["decoder_depth"]) == (v, depth)) for v in VARIANTS)
        rows.append(dict(decoder_depth=depth, mae_img_per_s=mae["img_per_s"], baseline_img_per_s=base["img_per_s"],
                         speed_up=mae["img_per_s"] / base["img_per_s"],
                         speed_up_cpu_time=mae["img_per_cpu_s"] / base["img_per_cpu_s"],
                         memory_ratio=base["mem_mb"] / mae["mem_mb"] if mae["mem_mb"] > 0 else None,
                         flop_ratio=base["flops_per_step"] / mae["flops_per_step"], paper_speed_up=PAPER.get(depth),
                         encoder_tokens=dict(mae=mae["encoder_tokens"], baseline=base["encoder_tokens"])))
    return rows


def parser() -> argparse.ArgumentParser:
    """The command line (scripts/gpu_check.sh's invocations are parsed against it in the tests)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="vit_large",
                   help="vit_large: the paper's ViT-L/16 at 224 px; tiny: a smoke test in seconds")
    p.add_argument("--depths", type=int, nargs="+", default=[8, 1], help="decoder depths to compare")
    p.add_argument("--batch", type=int, default=4, help="images per step")
    p.add_argument("--steps", type=int, default=3, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="fp32, or bf16 CPU autocast")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="intra-op threads")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where to run (default: cuda if available)")
    p.add_argument("--json", metavar="OUT", help="also write the report here")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: VARIANT:DEPTH, one case, JSON on stdout
    return p


def main(argv: list[str] | None = None) -> dict | None:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.case:
        variant, depth = args.case.split(":")
        print(json.dumps(measure(variant, args.config, int(depth), args.batch, args.steps, args.warmup,
                                 args.precision, device=args.device)))
        return None

    cases = [run_case(v, d, args) for d in args.depths for v in VARIANTS]
    rows = compare(cases)
    env = dict(torch=torch.__version__, cpu_capability=torch.backends.cpu.get_cpu_capability(),
               cpu_native_bf16=cpu_native_bf16(), threads=args.threads, device=args.device,
               device_name=torch.cuda.get_device_name() if args.device == "cuda" else None)
    where = env["device_name"] if args.device == "cuda" else f"{env['cpu_capability']}, {args.threads} threads"
    print(f"MAE step vs mask tokens in the encoder: {args.config}, batch {args.batch}, {args.precision}, {where}")
    for r in rows:
        paper = f" (paper: {r['paper_speed_up']}x)" if r["paper_speed_up"] else ""
        mem = "n/a" if r["memory_ratio"] is None else f"{r['memory_ratio']:.2f}x"
        print(f"decoder depth {r['decoder_depth']}: speed-up {r['speed_up']:.2f}x{paper}, "
              f"{r['mae_img_per_s']:.2f} vs {r['baseline_img_per_s']:.2f} img/s, memory ratio {mem}, "
              f"FLOPs ratio {r['flop_ratio']:.2f}x, speed-up in CPU time {r['speed_up_cpu_time']:.2f}x, "
              f"encoder tokens {r['encoder_tokens']['mae']} vs "
              f"{r['encoder_tokens']['baseline']}")
    report = dict(benchmark="asymmetry", env=env, config=vars(args), results=rows, cases=cases)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
