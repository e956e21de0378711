"""Fast paths of the engines: the platform's AdamW kernel (same update) and --compile (plain keys, resumes)."""

from __future__ import annotations

import json

import pytest
import torch

from mae_core.ckpt_io import load_file
from mae_core.mae import MaskedAutoencoder
from mae_core.train.fast import ADAMW_IMPLS, adamw_impl, build_adamw, choose_attention
from mae_core.train.finetune import finetune
from mae_core.train.pretrain import FINAL, LAST, pretrain

from .test_finetune import tiny_finetune_config
from .test_pretrain import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_adamw_kernel_is_the_one_torch_supports_on_the_device():
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    cpu = "fused" if "cpu" in _get_fused_kernels_supported_devices() else "forloop"
    assert adamw_impl("cpu") == cpu == "fused"  # torch >= 2.4 has a fused CPU AdamW
    assert adamw_impl("meta") == "forloop" and set(ADAMW_IMPLS) >= {adamw_impl(d) for d in ("cpu", "cuda")}
    opt, name = build_adamw([torch.nn.Parameter(torch.ones(2))], "cpu", lr=1e-3)
    assert name == "fused" and opt.defaults["fused"] is True


def test_fused_adamw_gives_the_per_parameter_loops_update():
    torch.manual_seed(0)
    params = [torch.randn(64, 32), torch.randn(32)]
    grads = [[torch.randn_like(p) for p in params] for _ in range(3)]
    results = {}
    for impl, flags in {"fused": {}, "forloop": {"foreach": False}}.items():
        ps = [torch.nn.Parameter(p.clone()) for p in params]
        groups = [{"params": ps[:1], "weight_decay": 0.05}, {"params": ps[1:], "weight_decay": 0.0}]
        opt = build_adamw(groups, "cpu", lr=1e-2, betas=(0.9, 0.95))[0] if impl == "fused" else \
            torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), **flags)
        for g in grads:
            for p, gp in zip(ps, g):
                p.grad = gp.clone()
            opt.step()
        results[impl] = ps
    for a, b in zip(results["fused"], results["forloop"]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_cpu_bf16_takes_the_eager_attention_path_with_the_fused_paths_numbers():
    torch.manual_seed(0)
    kwargs = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32,
                  decoder_depth=2, decoder_num_heads=4)
    fused, eager = MaskedAutoencoder(**kwargs), MaskedAutoencoder(**kwargs)
    eager.load_state_dict(fused.state_dict())
    assert choose_attention(fused, "cpu", "fp32") == "fused" and choose_attention(fused, "cuda", "bf16") == "fused"
    assert choose_attention(eager, "cpu", "bf16") == "eager"
    attns = [m for m in eager.modules() if hasattr(m, "fused_attn")]
    assert len(attns) == 4 and not any(m.fused_attn for m in attns)  # encoder and decoder blocks
    assert all(m.fused_attn for m in fused.modules() if hasattr(m, "fused_attn"))
    imgs, noise = torch.randn(4, 3, 32, 32), torch.rand(4, 16)
    out = {}
    for name, model in (("fused", fused), ("eager", eager)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(imgs, mask_ratio=0.75, noise=noise).loss
        loss.backward()
        out[name] = loss.detach().float(), model.blocks[0].attn.qkv.weight.grad.clone()
    torch.testing.assert_close(out["eager"][0], out["fused"][0], rtol=2e-2, atol=2e-2)  # bf16 rounding only
    torch.testing.assert_close(out["eager"][1], out["fused"][1], rtol=5e-2, atol=5e-3)


def _run_losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


@pytest.mark.slow
def test_compiled_pretraining_saves_plain_keys_and_resumes(tiny_imagenet, tmp_path):
    torch._dynamo.reset()
    plain, compiled = tmp_path / "plain", tmp_path / "compiled"
    pretrain(tiny_config(tiny_imagenet, plain, epochs=1))
    pretrain(tiny_config(tiny_imagenet, compiled, epochs=1, compile=True))
    for name in (LAST, FINAL):
        keys = list(load_file(compiled / name)["model"])
        assert keys == list(load_file(plain / name)["model"]) and not any("_orig_mod" in k for k in keys)
    run = json.loads((compiled / "config.json").read_text())
    assert run["compile"] is True and run["optimizer"] == "AdamW (fused)"
    assert _run_losses(compiled) == pytest.approx(_run_losses(plain), rel=1e-3)  # the same network, compiled

    pretrain(tiny_config(tiny_imagenet, compiled, epochs=2, compile=True))  # resumes from checkpoint-last.pth
    assert json.loads((compiled / "config.json").read_text())["resumed_from_epoch"] == 1
    assert load_file(compiled / LAST)["epoch"] == 1


@pytest.mark.slow
def test_compiled_finetune_saves_plain_keys(tiny_imagenet, tmp_path):
    torch._dynamo.reset()
    plain, compiled = tmp_path / "plain", tmp_path / "compiled"
    finetune(tiny_finetune_config(tiny_imagenet, plain, epochs=1))
    finetune(tiny_finetune_config(tiny_imagenet, compiled, epochs=1, compile=True))
    keys = list(load_file(compiled / "finetuned.pth")["model"])
    assert keys == list(load_file(plain / "finetuned.pth")["model"]) and not any("_orig_mod" in k for k in keys)
    run = json.loads((compiled / "config.json").read_text())
    assert run["compile"] is True and run["optimizer"] == "AdamW (fused)"
    assert _run_losses(compiled) == pytest.approx(_run_losses(plain), rel=1e-3)
