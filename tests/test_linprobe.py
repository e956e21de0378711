"""The linear probe: the official LARS rule, a BN-without-affine head, and an encoder that really stays frozen."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from timm.optim import Lars as TimmLars

from mae_core.ckpt_io import load_file
from mae_core.models_vit import linear_layer
from mae_core.train.distributed import DistInfo
from mae_core.train.evaluate import EvalConfig, evaluate_checkpoint
from mae_core.train.lars import LARS
from mae_core.train.linprobe import LinprobeConfig, RandomResizedCropTF, build_train_transform, linprobe, make_recipe

from .conftest import TINY_IMG
from .helpers import cli_args, free_port, one_thread_env, tensorboard_scalars
from .test_finetune import TINY_CLS, save_tiny_mae

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_linprobe_config(data, out, init, **overrides) -> LinprobeConfig:
    base = dict(data_path=str(data), output_dir=str(out), init=str(init), img_size=TINY_IMG, epochs=1,
                warmup_epochs=0, batch_size=8, num_workers=0, progress=False, log_every=1, **TINY_CLS)
    return LinprobeConfig(**{**base, **overrides})


# ---------------------------------------------------------------- LARS
def test_lars_follows_the_official_rule():
    torch.manual_seed(0)
    w, b = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4))
    w0, b0 = w.detach().clone(), b.detach().clone()
    lr, wd, momentum, trust = 0.5, 0.1, 0.9, 0.001
    opt = LARS([w, b], lr=lr, weight_decay=wd, momentum=momentum, trust_coefficient=trust)
    g1w, g1b, g2w, g2b = torch.randn(4, 3), torch.randn(4), torch.randn(4, 3), torch.randn(4)

    w.grad, b.grad = g1w.clone(), g1b.clone()
    opt.step()
    d1 = g1w + wd * w0  # matrices: weight decay, then the trust ratio |w| / |update|
    mu_w = d1 * (trust * w0.norm() / d1.norm())
    torch.testing.assert_close(w.detach(), w0 - lr * mu_w)
    assert (w0 - w.detach()).norm().item() == pytest.approx(lr * trust * w0.norm().item(), rel=1e-5)
    torch.testing.assert_close(b.detach(), b0 - lr * g1b)  # vectors: plain SGD, no decay, no trust ratio

    w1, b1 = w.detach().clone(), b.detach().clone()
    w.grad, b.grad = g2w.clone(), g2b.clone()
    opt.step()
    d2 = g2w + wd * w1
    mu_w = momentum * mu_w + d2 * (trust * w1.norm() / d2.norm())
    torch.testing.assert_close(w.detach(), w1 - lr * mu_w)
    torch.testing.assert_close(b.detach(), b1 - lr * (momentum * g1b + g2b))


def test_lars_leaves_zero_weights_to_plain_momentum_and_differs_from_timm_at_zero_weight_decay():
    zero = nn.Parameter(torch.zeros(2, 2))
    zero.grad = torch.ones(2, 2)
    LARS([zero], lr=1.0).step()
    assert torch.equal(zero.detach(), -torch.ones(2, 2))  # trust ratio 1 where |w| = 0

    w_ours, w_timm = nn.Parameter(torch.ones(3, 3)), nn.Parameter(torch.ones(3, 3))
    for w in (w_ours, w_timm):
        w.grad = torch.full((3, 3), 10.0)
    LARS([w_ours], lr=0.1).step()
    TimmLars([w_timm], lr=0.1, momentum=0.9).step()
    assert torch.allclose(w_timm.detach(), torch.zeros(3, 3), atol=1e-6)  # timm: plain SGD without weight decay
    assert torch.allclose(w_ours.detach(), torch.full((3, 3), 1.0 - 0.1 * 0.001 * 1.0))  # official: trust ratio


# ---------------------------------------------------------------- model and transform
def test_head_is_bn_without_affine_then_linear_and_only_it_trains(tmp_path):
    init = save_tiny_mae(tmp_path / "mae.pth")
    recipe = make_recipe(tiny_linprobe_config(tmp_path, tmp_path, init))(6, DistInfo(), 0.1)
    model = recipe.model
    bn, linear = model.head
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6 and bn.weight is None
    assert linear is linear_layer(model) and linear.out_features == 6
    assert 0.007 < linear.weight.std().item() < 0.012 and torch.count_nonzero(linear.bias) == 0
    assert isinstance(model.norm, nn.LayerNorm) and isinstance(model.fc_norm, nn.Identity)  # cls token
    assert model.global_pool == "token"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.1.weight", "head.1.bias"}
    assert isinstance(recipe.optimizer, LARS)
    assert {id(p) for g in recipe.optimizer.param_groups for p in g["params"]} == {id(p) for p in linear.parameters()}
    assert recipe.optimizer.param_groups[0]["weight_decay"] == 0.0
    missing = set(recipe.init_report.new) - {"head.0.num_batches_tracked"}  # BN fills that one itself
    assert missing == {"head.0.running_mean", "head.0.running_var", "head.1.weight", "head.1.bias"}


def test_train_transform_is_the_official_tf_style_crop_and_flip():
    steps = build_train_transform(TINY_IMG).transforms
    assert isinstance(steps[0], RandomResizedCropTF) and "bicubic" in repr(steps[0]).lower()
    assert [type(t).__name__ for t in steps[1:]] == ["RandomHorizontalFlip", "ToTensor", "Normalize"]
    from PIL import Image

    img = Image.new("RGB", (40, 24))
    torch.manual_seed(0)
    for _ in range(200):  # one draw, clamped: always inside the image, even for extreme aspect ratios
        i, j, h, w = RandomResizedCropTF.get_params(img, (0.08, 1.0), (0.1, 10.0))
        assert 0 <= i <= 24 - h and 0 <= j <= 40 - w and 1 <= h <= 24 and 1 <= w <= 40
    for seed in range(100):  # the same boxes from the same random stream as the official util/crop.py
        torch.manual_seed(seed)
        ours = RandomResizedCropTF.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
        torch.manual_seed(seed)
        assert ours == _official_crop_params(img, (0.08, 1.0), (3 / 4, 4 / 3)), seed


def _official_crop_params(img, scale, ratio):
    """`RandomResizedCrop.get_params` of the official util/crop.py (BYOL's TF crop), ported line by line."""
    import math

    width, height = img.size
    target_area = height * width * torch.empty(1).uniform_(scale[0], scale[1]).item()
    log_ratio = torch.log(torch.tensor(ratio))
    aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
    w = min(int(round(math.sqrt(target_area * aspect_ratio))), width)
    h = min(int(round(math.sqrt(target_area / aspect_ratio))), height)
    i = torch.randint(0, height - h + 1, size=(1,)).item()
    j = torch.randint(0, width - w + 1, size=(1,)).item()
    return i, j, h, w


# ---------------------------------------------------------------- a run
def test_linear_probe_trains_the_head_only(tiny_imagenet, tmp_path):
    init = save_tiny_mae(tmp_path / "mae.pth")
    encoder = load_file(init)["model"]
    cfg = tiny_linprobe_config(tiny_imagenet, tmp_path / "out", init)
    initial_head = make_recipe(cfg)(6, DistInfo(), 0.1).model.head[1].weight.detach().clone()
    result = linprobe(cfg)
    trained = load_file(result.checkpoint)["model"]
    assert not torch.equal(trained["head.1.weight"], initial_head)
    for key, value in trained.items():
        if not key.startswith("head."):
            assert torch.equal(value, encoder[key]), f"{key} changed: the encoder was not frozen"
    assert "head.0.weight" not in trained and "head.0.bias" not in trained  # BN without affine
    assert trained["head.0.num_batches_tracked"] == 8  # 64 images / batch 8
    assert torch.count_nonzero(trained["head.0.running_mean"]) > 0
    run = json.loads((tmp_path / "out" / "config.json").read_text())
    assert run["lr"] == pytest.approx(0.1 * 8 / 256)  # blr x effective batch / 256
    assert 0.0 <= result.metrics["top1"] <= 100.0
    scalars = tensorboard_scalars(tmp_path / "out")
    assert len(scalars["train/loss"]) == 8 and scalars["epoch/test_top1"] == pytest.approx([result.metrics["top1"]])


@pytest.mark.slow
def test_two_gloo_processes_train_the_probe_and_measure_the_saved_model(tiny_imagenet, tmp_path):
    """Each rank's BN statistics drift with its own batches; the per-epoch evaluation must see rank 0's."""
    init = save_tiny_mae(tmp_path / "mae.pth")
    cfg = tiny_linprobe_config(tiny_imagenet, tmp_path / "out", init, epochs=2, batch_size=4)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                "127.0.0.1", "--master-port", str(free_port()), "-m", "benchmarks.cli"]
    result = subprocess.run([*torchrun, "linprobe", *cli_args(cfg), "--results-dir", str(tmp_path / "runs")],
                            env=one_thread_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = load_file(tmp_path / "out" / "linprobe.pth")
    encoder = load_file(init)["model"]
    assert all(torch.equal(v, encoder[k]) for k, v in saved["model"].items() if not k.startswith("head."))
    again = evaluate_checkpoint(EvalConfig(data_path=str(tiny_imagenet), checkpoint=str(tmp_path / "out" /
                                                                                      "linprobe.pth"),
                                           num_workers=0, progress=False))
    assert saved["meta"]["metrics"]["loss"] == pytest.approx(again.metrics["loss"], rel=1e-6)
    assert saved["meta"]["run"]["world_size"] == 2
