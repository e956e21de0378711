"""One MAE pretraining step, ours vs Hugging Face `ViTMAEForPreTraining` (and the official code): speed, memory.

A step is forward (same images, same masking noise for both models), loss, backward, AdamW step,
zero_grad. Both models get the same configuration, batch, optimizer, precision and weights (ours,
seeded, converted into HF), and a preflight checks that their losses agree, so we know the two
compute the same network on the same numbers.

Each (model, precision) case runs in a fresh subprocess, so its peak memory is its own: on CUDA
`torch.cuda.max_memory_allocated`; on CPU the peak RSS during the steps minus the RSS after the
model was built, i.e. gradients + AdamW state + the step's activations (the weights are the same
for both). On Linux the kernel's peak mark is reset first (/proc/self/clear_refs), so an earlier
transient peak (imports, building) cannot hide the case's own; elsewhere `ru_maxrss` is used.
Cases run in alternating order over `--repeats` rounds so background load hits both models alike.

`--official PATH` adds the official `models_mae.py` from a checkout of facebookresearch/mae (imported
by `official.py`, never vendored), with our weights (same key names) and the same noise (it draws
`torch.rand` after the same seed). Ours runs as our engine does: the platform's AdamW kernel (fused on
CPU/CUDA) and attention path (timm's eager one on CPU under bf16, else fused SDPA: `fast.py`);
`--ours-compile` adds torch.compile. The others get `torch.optim.AdamW` as their engines
call it (its default kernel: the per-parameter loop on CPU).

    python -m benchmarks.perf.pretrain_step --config vit_base --batch 8 --steps 10 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch
import transformers
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from mae_core.mae import MAE_PRESETS, MaskedAutoencoder
from mae_core.train.fast import build_adamw, choose_attention

from .memory import peak_rss_mb, start_rss_peak
from .official import build_official, official_loss, seeded_noise

MODELS = ("ours", "hf")  # always timed
ALL_MODELS = (*MODELS, "official")  # with --official PATH
PRECISIONS = ("fp32", "bf16")
MASK_RATIO = 0.75
HF_ATTN = "sdpa"  # HF's default; timm's Block also calls F.scaled_dot_product_attention
# (preset, overrides, default image size). Both use norm_pix_loss, as the official ViT-B recipe.
CONFIGS = {
    "vit_base": ("mae_vit_base_patch16", dict(norm_pix_loss=True), 224),
    # as tests/conftest.py's TINY_MODEL: a step in milliseconds, the same code path as ViT-B
    "tiny": ("mae_vit_tiny_patch16", dict(patch_size=8, embed_dim=64, depth=2, num_heads=4,
                                          decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4,
                                          norm_pix_loss=True), 32),
}
OPTIMIZER = dict(lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)  # the MAE pretraining recipe


def model_kwargs(config: str, img_size: int | None = None) -> dict:
    """Constructor kwargs of our MAE for a named benchmark config."""
    preset, overrides, default_img = CONFIGS[config]
    return {**MAE_PRESETS[preset], **overrides, "img_size": img_size or default_img}


def hf_config(kwargs: dict) -> ViTMAEConfig:
    """The ViTMAEConfig of the same network (mae_core.hf's mapping if present, else the same by hand)."""
    try:
        from mae_core.hf import hf_config_from_mae
    except ImportError:
        hf_config_from_mae = None
    if hf_config_from_mae is not None:
        return hf_config_from_mae(kwargs, mask_ratio=MASK_RATIO, attn_implementation=HF_ATTN)
    k, mlp = kwargs, kwargs.get("mlp_ratio", 4.0)
    return ViTMAEConfig(
        hidden_size=k["embed_dim"], num_hidden_layers=k["depth"], num_attention_heads=k["num_heads"],
        intermediate_size=int(k["embed_dim"] * mlp), decoder_hidden_size=k["decoder_embed_dim"],
        decoder_num_hidden_layers=k["decoder_depth"], decoder_num_attention_heads=k["decoder_num_heads"],
        decoder_intermediate_size=int(k["decoder_embed_dim"] * mlp), patch_size=k["patch_size"],
        image_size=k["img_size"], num_channels=3, mask_ratio=MASK_RATIO, layer_norm_eps=1e-6, qkv_bias=True,
        norm_pix_loss=k.get("norm_pix_loss", False), hidden_act="gelu", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation=HF_ATTN)


def build(model: str, kwargs: dict, seed: int = 0, official: str | None = None) -> torch.nn.Module:
    """Both models carry the same weights (ours, seeded, converted for HF), so both compute on the same numbers.

    HF's own fresh init is not used: in transformers 5.x it leaves the position embeddings and the mask
    token at zero, and all-zero decoder rows run faster through GELU than real activations do.
    """
    torch.manual_seed(seed)
    ours = MaskedAutoencoder(**kwargs)
    if model == "ours":
        return ours
    if model == "official":
        return build_official(official, kwargs, ours.state_dict())
    from mae_core.hf import mae_to_hf_state_dict

    hf = ViTMAEForPreTraining(hf_config(kwargs))
    if hf.config._attn_implementation != HF_ATTN:  # never silently benchmark HF's slow path
        raise RuntimeError(f"HF ViTMAE runs {hf.config._attn_implementation!r} attention, not {HF_ATTN!r}")
    hf.load_state_dict(mae_to_hf_state_dict(ours.state_dict()), strict=True)
    del ours
    return hf


def loss_of(model: torch.nn.Module, imgs: torch.Tensor, noise: torch.Tensor, noise_seed: int) -> torch.Tensor:
    if type(model).__name__ == "MaskedAutoencoderViT":  # the official one: draws its own noise, seeded
        return official_loss(model, imgs, MASK_RATIO, noise_seed)
    if isinstance(model, ViTMAEForPreTraining):  # mask ratio comes from its config
        return model(pixel_values=imgs, noise=noise).loss
    return model(imgs, mask_ratio=MASK_RATIO, noise=noise).loss


def param_counts(model: torch.nn.Module) -> dict:
    """All parameters (fixed sin-cos position embeddings included) and the trainable ones."""
    return dict(total=sum(p.numel() for p in model.parameters()),
                trainable=sum(p.numel() for p in model.parameters() if p.requires_grad))


def make_inputs(kwargs: dict, batch: int, n_steps: int, device: str, seed: int):
    """Seeded images and one masking noise per step (and its seed, for the official model): identical for all."""
    g = torch.Generator().manual_seed(seed)
    side, patch = kwargs["img_size"], kwargs["patch_size"]
    imgs = torch.randn(batch, 3, side, side, generator=g).to(device)
    seeds = [seed * 1000 + 1 + i for i in range(n_steps)]
    return imgs, [seeded_noise(batch, (side // patch) ** 2, device, s) for s in seeds], seeds


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(model: str, precision: str, config: str = "vit_base", batch: int = 8, img_size: int | None = None,
            steps: int = 10, warmup: int = 2, device: str = "cpu", seed: int = 0, official: str | None = None,
            ours_compile: bool = False) -> dict:
    """Time `warmup + steps` full training steps of one model in this process; return one case record.

    `mem_mb` is the number compared between models: CUDA peak allocated, or on CPU the peak RSS
    minus the RSS after the model was built (clean only in a fresh process: memory freed by
    an earlier case may be reused by the allocator without growing RSS).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kwargs = model_kwargs(config, img_size)
    imgs, noises, noise_seeds = make_inputs(kwargs, batch, warmup + steps, device, seed)
    gc.collect()
    net = build(model, kwargs, seed, official).to(device).train()
    gc.collect()  # building HF holds a converted copy of our weights for a moment: not part of the step
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rss_before, rss_method = start_rss_peak()
    params = [p for p in net.parameters() if p.requires_grad]
    if model == "ours":  # as our engine: the platform's fastest AdamW kernel
        opt, adamw = build_adamw(params, device, **OPTIMIZER)
        attention = choose_attention(net, device, precision)
    else:  # as their engines call it
        opt, adamw = torch.optim.AdamW(params, **OPTIMIZER), "default"
        attention = "timm/HF default"
    step_net = torch.compile(net) if model == "ours" and ours_compile else net
    step_s, cpu_s, losses = [], [], []
    for i in range(warmup + steps):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_of(step_net, imgs, noises[i], noise_seeds[i])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            step_s.append(time.perf_counter() - t0)
            cpu_s.append(time.process_time() - c0)
        losses.append(loss.item())  # after the clock stops; item() syncs CUDA anyway
        if i == 0 and not math.isfinite(losses[0]):  # before any timed step (with warmup >= 1)
            raise RuntimeError(f"{model} {precision}: first loss is {losses[0]}, not finite")

    rss_peak = peak_rss_mb(rss_method)
    record = dict(model=model, precision=precision, device=device, batch=batch, steps=steps, warmup=warmup,
                  step_s=step_s, cpu_s=cpu_s, loss_first=losses[0], loss_last=losses[-1], params=param_counts(net),
                  rss_peak_mb=rss_peak, rss_delta_mb=rss_peak - rss_before, rss_method=rss_method, adamw=adamw,
                  attention=attention, compiled=step_net is not net)
    if model == "hf":
        record["hf_attn_implementation"] = net.config._attn_implementation
    if device == "cuda":
        record["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    record["mem_mb"] = record["cuda_peak_mb"] if device == "cuda" else record["rss_delta_mb"]
    return record


def run_case(model: str, precision: str, args: argparse.Namespace) -> dict:
    """`measure` in a fresh interpreter (this module with --case), so memory peaks don't mix."""
    cmd = [sys.executable, "-m", "benchmarks.perf.pretrain_step",
           "--case", f"{model}:{precision}", "--config", args.config, "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--device", args.device, "--seed", str(args.seed)]
    if args.img_size:
        cmd += ["--img-size", str(args.img_size)]
    if args.official:
        cmd += ["--official", args.official]
    if args.ours_compile:
        cmd += ["--ours-compile"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"case {model}:{precision} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@torch.no_grad()
def preflight(kwargs: dict, batch: int, device: str, seed: int, official: str | None = None) -> dict:
    """Before timing: parameter counts must match, and with our weights copied into HF (and the official
    model) the losses agree."""
    names = ["ours", "hf"] + (["official"] if official else [])
    nets = {m: build(m, kwargs, seed, official).to(device).eval() for m in names}
    counts = {m: param_counts(net) for m, net in nets.items()}
    if any(c != counts["ours"] for c in counts.values()):
        raise RuntimeError(f"the models differ in size, the comparison would be unfair: {counts}")
    weights = f"ours copied into {' and '.join(names[1:])} (also while timing)"
    imgs, (noise,), (noise_seed,) = make_inputs(kwargs, batch, 1, device, seed)
    losses = {m: loss_of(net, imgs, noise, noise_seed).item() for m, net in nets.items()}
    if not all(math.isfinite(v) for v in losses.values()):
        raise RuntimeError(f"non-finite preflight loss: {losses}")
    report = dict(params=counts, weights=weights, loss_ours=losses["ours"], loss_hf=losses["hf"],
                  loss_abs_diff=abs(losses["ours"] - losses["hf"]))
    if official:
        report.update(loss_official=losses["official"],
                      loss_abs_diff_official=abs(losses["ours"] - losses["official"]))
        if report["loss_abs_diff_official"] > 1e-4:
            raise RuntimeError(f"ours and the official model disagree on the same weights and noise: {losses}")
    return report


def summarize(cases: list[dict]) -> tuple[list[dict], list[dict]]:
    """Pool repeats per (model, precision): img/s median/min/max over all timed steps, worst memory;
    then ours/HF per precision (speed > 1: ours faster; memory < 1: ours needs less)."""
    rows = []
    for model in ALL_MODELS:
        for precision in PRECISIONS:
            runs = [c for c in cases if (c["model"], c["precision"]) == (model, precision)]
            if not runs:
                continue
            ips = [c["batch"] / s for c in runs for s in c["step_s"]]
            per_cpu_s = [c["batch"] / s for c in runs for s in c.get("cpu_s", [])]
            worst = {k: max(c[k] for c in runs) for k in ("mem_mb", "rss_peak_mb", "rss_delta_mb")}
            rows.append(dict(model=model, precision=precision, img_per_s_median=statistics.median(ips),
                             img_per_s_min=min(ips), img_per_s_max=max(ips), n_steps=len(ips),
                             repeats=len(runs),
                             img_per_cpu_s_median=statistics.median(per_cpu_s) if per_cpu_s else None,
                             **worst, loss_last=runs[-1]["loss_last"]))
    by = {(r["model"], r["precision"]): r for r in rows}
    ratios = [dict(precision=p,
                   speed_ours_over_hf=by["ours", p]["img_per_s_median"] / by["hf", p]["img_per_s_median"],
                   memory_ours_over_hf=by["ours", p]["mem_mb"] / by["hf", p]["mem_mb"]
                   if by["hf", p]["mem_mb"] > 0 else None)  # a tiny model may not grow RSS at all
              for p in PRECISIONS if ("ours", p) in by and ("hf", p) in by]
    for q in ratios:
        p = q["precision"]
        if ("official", p) in by:  # the issue's "ratio": ours / official
            q["ratio"] = by["ours", p]["img_per_s_median"] / by["official", p]["img_per_s_median"]
            if by["ours", p]["img_per_cpu_s_median"]:  # robust to other processes' load on the cores
                q["cpu_time_ratio"] = by["ours", p]["img_per_cpu_s_median"] / by["official", p]["img_per_cpu_s_median"]
    return rows, ratios


def memory_measure(device: str) -> str:
    if device == "cuda":
        return "peak MB = torch.cuda.max_memory_allocated of the case (weights+grads+AdamW state+activations)"
    return ("peak MB = peak RSS of the case minus RSS after the model was built (VmHWM reset via clear_refs, "
            "else ru_maxrss), fresh process per case: grads+AdamW state+activations (the weights, the same for "
            "both, are excluded); "
            "abs RSS MB = the process's peak")


def cpu_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without either, CPU bf16 matmuls are emulated and far slower than fp32."""
    return any(getattr(torch.cpu, f"_is_{isa}_supported", lambda: False)() for isa in ("avx512_bf16", "amx_tile"))


def environment(args: argparse.Namespace) -> dict:
    cpu = platform.processor() or platform.machine()
    return dict(torch=torch.__version__, transformers=transformers.__version__, timm=timm.__version__,
                python=platform.python_version(), device=args.device, threads=args.threads,
                device_name=torch.cuda.get_device_name() if args.device == "cuda" else cpu,
                cpu_capability=torch.backends.cpu.get_cpu_capability(), cpu_native_bf16=cpu_native_bf16(),
                hf_attn_implementation=HF_ATTN,
                ours_attention="timm Block: eager on CPU under bf16, else " + (
                    "fused F.scaled_dot_product_attention" if timm.layers.use_fused_attn() else "eager attention"))


def print_table(report: dict) -> None:
    env, cfg = report["env"], report["config"]
    cpu = env["device"] == "cpu"
    print(f"\nMAE pretraining step: {cfg['name']}, batch {cfg['batch']}, {cfg['img_size']}px, "
          f"{env['device']} ({env['cpu_capability'] if cpu else env['device_name']}), "
          f"{env['threads']} threads; "
          f"HF attention {env['hf_attn_implementation']}, ours {env['ours_attention']}")
    print(memory_measure(env["device"]))
    print(f"{'case':<9}{'precision':<11}{'img/s median':>13}{'min':>9}{'max':>9}{'peak MB':>10}"
          + (f"{'abs RSS MB':>12}" if cpu else ""))
    for r in report["results"]:
        print(f"{r['model']:<9}{r['precision']:<11}{r['img_per_s_median']:>13.2f}{r['img_per_s_min']:>9.2f}"
              f"{r['img_per_s_max']:>9.2f}{r['mem_mb']:>10.0f}"
              + (f"{r['rss_peak_mb']:>12.0f}" if cpu else ""))
    if cpu and "bf16" in cfg["precisions"] and not env["cpu_native_bf16"]:
        print("note: this CPU has no native bf16 (AVX512-BF16/AMX); bf16 here measures emulation, slow for both")
    for q in report["ratios"]:
        mem = q["memory_ours_over_hf"]
        print(f"ours/HF {q['precision']}: speed {q['speed_ours_over_hf']:.3f}x, "
              f"memory {'n/a' if mem is None else f'{mem:.3f}x'}")
    by = {(r["model"], r["precision"]): r for r in report["results"]}
    for q in report["ratios"]:
        if "ratio" in q:
            p = q["precision"]
            print(f"{p}: ours {by['ours', p]['img_per_s_median']:.2f} img/s, official "
                  f"{by['official', p]['img_per_s_median']:.2f} img/s, ratio {q['ratio']:.3f} (ours / official); "
                  f"per CPU-second: {by['ours', p]['img_per_cpu_s_median']:.2f} vs "
                  f"{by['official', p]['img_per_cpu_s_median']:.2f} img, ratio {q.get('cpu_time_ratio', 0):.3f}")


def parser() -> argparse.ArgumentParser:
    """The command line (scripts/gpu_check.sh's invocations are parsed against it in the tests)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="vit_base",
                   help="vit_base: ViT-B/16 MAE as the paper; tiny: a smoke test in seconds")
    p.add_argument("--batch", type=int, default=8, help="images per step")
    p.add_argument("--img-size", type=int, default=None, help="default: the config's (224 vit_base, 32 tiny)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per case and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first; the first loss is checked")
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                   help="the precisions to time, each a line of ratios (bf16: autocast)")
    p.add_argument("--repeats", type=int, default=2, help="rounds over all cases, order alternating")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch intra-op threads of each timed process (default: the cores this process may use)")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   default="cuda" if torch.cuda.is_available() else "cpu",
                   help="default: cuda if available")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, images and masking noise, equal for all")
    p.add_argument("--json", metavar="OUT", help="also write the report here")
    p.add_argument("--official", metavar="PATH", help="also time the official models_mae.py from this checkout")
    p.add_argument("--ours-compile", action="store_true", help="run our step through torch.compile")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: MODEL:PRECISION, one case, JSON on stdout
    return p


def main(argv: list[str] | None = None) -> dict | None:
    p = parser()
    args = p.parse_args(argv)
    if args.official and not (Path(args.official).expanduser() / "models_mae.py").is_file():
        p.error(f"--official {args.official}: no models_mae.py there; pass a checkout of facebookresearch/mae "
                "(e.g. git clone https://github.com/facebookresearch/mae)")
    torch.set_num_threads(args.threads)

    if args.case:
        model, precision = args.case.split(":")
        print(json.dumps(measure(model, precision, args.config, args.batch, args.img_size, args.steps,
                                 args.warmup, args.device, args.seed, args.official, args.ours_compile)))
        return None

    kwargs = model_kwargs(args.config, args.img_size)
    sanity = preflight(kwargs, args.batch, args.device, args.seed, args.official)
    gc.collect()
    official = f", official {sanity['loss_official']:.6f}" if args.official else ""
    print(f"params ours {sanity['params']['ours']}, hf {sanity['params']['hf']}; preflight loss "
          f"ours {sanity['loss_ours']:.6f}, hf {sanity['loss_hf']:.6f}{official} (weights: {sanity['weights']})")
    models = ALL_MODELS if args.official else MODELS
    order = [(m, prec) for prec in args.precision for m in models]
    cases = []
    for r in range(args.repeats):
        for model, precision in order if r % 2 == 0 else order[::-1]:
            print(f"round {r + 1}/{args.repeats}: {model} {precision}", flush=True)
            cases.append(run_case(model, precision, args))
    rows, ratios = summarize(cases)
    config = dict(name=args.config, model_kwargs=kwargs, img_size=kwargs["img_size"], batch=args.batch,
                  steps=args.steps, warmup=args.warmup, repeats=args.repeats, precisions=args.precision,
                  mask_ratio=MASK_RATIO, optimizer=dict(name="AdamW", **OPTIMIZER), seed=args.seed,
                  official=args.official, ours_compile=args.ours_compile)
    report = dict(benchmark="pretrain_step", env=environment(args), config=config,
                  memory_measure=memory_measure(args.device), sanity=sanity, results=rows, ratios=ratios,
                  cases=cases)
    print_table(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
