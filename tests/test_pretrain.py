"""The pretraining engine: recipe pieces, a run end to end, resume after a real kill, DDP, divergence."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mae_core.ckpt_io import load_file
from mae_core.errors import NonFiniteLossError, OptionError
from mae_core.mae import create_mae
from mae_core.train.distributed import DistInfo
from mae_core.train.optim import lr_at, param_groups_weight_decay, scaled_lr
from mae_core.train.pretrain import FINAL, LAST, PretrainConfig, pretrain
from mae_core.train.step import backward_and_update

from .conftest import TINY_IMG, TINY_MODEL
from .helpers import cli_args, free_port, maet, one_thread_env, tensorboard_run, tensorboard_scalars


def tiny_config(data, out, **overrides) -> PretrainConfig:
    base = dict(data_path=str(data), output_dir=str(out), img_size=TINY_IMG, epochs=3, warmup_epochs=1,
                batch_size=8, blr=1e-3, num_workers=0, progress=False, log_every=1, keep_every=0, **TINY_MODEL)
    return PretrainConfig(**{**base, **overrides})


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(path)["model"]


# ---------------------------------------------------------------- recipe pieces
def test_no_weight_decay_on_biases_norms_pos_embeds_and_tokens():
    model = create_mae("mae_vit_tiny_patch16", img_size=32, patch_size=8, depth=1, decoder_depth=1)
    no_decay, decay = param_groups_weight_decay(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert {"cls_token", "mask_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "norm.bias"} <= no_decay_names
    assert {"blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "decoder_pred.weight"} <= decay_names
    assert "pos_embed" not in no_decay_names | decay_names  # fixed sin-cos: not trained at all
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])


def test_lr_schedule_warmup_then_half_cosine():
    lr, min_lr, warm, total = 1.0, 0.1, 4, 20
    assert lr_at(0, lr, min_lr, warm, total) == 0.0
    assert lr_at(2, lr, min_lr, warm, total) == pytest.approx(0.5)
    assert lr_at(4, lr, min_lr, warm, total) == pytest.approx(1.0)
    assert lr_at(12, lr, min_lr, warm, total) == pytest.approx(min_lr + (lr - min_lr) * 0.5)  # half-way
    assert lr_at(20, lr, min_lr, warm, total) == pytest.approx(min_lr)
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)  # the paper's ViT pretraining lr



def test_an_epochs_leftover_micro_batches_do_not_reach_the_next_epochs_first_update():
    """accum 3 over 5 micro-batches: the last 2 are dropped (official engines), so epoch 2 starts from zero."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    xs = torch.randn(6, 3)
    for step in range(5):  # epoch 1: an update after micro-batch 3; micro-batches 4 and 5 left over
        backward_and_update(model, model(xs[step]).sum(), optimizer, scaler, step, 3, DistInfo())
    backward_and_update(model, model(xs[5]).sum(), optimizer, scaler, 0, 3, DistInfo())  # epoch 2, step 0
    assert torch.allclose(model.weight.grad, xs[5][None] / 3)  # this micro-batch's gradient alone


# ---------------------------------------------------------------- a run
def test_pretrain_writes_our_checkpoint_log_and_config(tiny_imagenet, tmp_path):
    result = pretrain(tiny_config(tiny_imagenet, tmp_path, epochs=2))
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert set(ckpt) == {"model", "meta"}
    meta = ckpt["meta"]
    assert meta["arch"] == "mae_vit_tiny_patch16" and meta["img_size"] == TINY_IMG and meta["patch_size"] == 8
    assert meta["norm_pix_loss"] is True and meta["epoch"] == 1
    assert meta["run"]["seed"] == 0 and meta["run"]["git_commit"]
    assert "decoder_pred.weight" in ckpt["model"] and "blocks.1.mlp.fc2.weight" in ckpt["model"]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r]
    assert [r["step"] for r in steps] == list(range(1, 17))  # 64 images / batch 8 = 8 steps x 2 epochs
    assert all({"loss", "lr", "img_per_s"} <= set(r) for r in steps)
    assert steps[0]["lr"] == 0.0  # warm-up starts from zero, per iteration
    assert max(r["lr"] for r in steps) == pytest.approx(1e-3 * 8 / 256, rel=0.2)
    assert json.loads((tmp_path / "config.json").read_text())["config"]["batch_size"] == 8
    assert not list(tmp_path.glob("*.tmp"))
    # The engine's RunResult: its file, and the last epoch's mean loss as the log holds it.
    epoch_losses = [r["epoch_loss"] for r in log if "epoch_loss" in r]
    assert (result.task, result.arch, result.epochs, result.checkpoint) == (
        "pretrain", "mae_vit_tiny_patch16", 2, str(tmp_path / FINAL))
    assert result.metrics == {"loss": epoch_losses[-1]} and result.provenance["run_id"] == meta["run"]["run_id"]
    # the same numbers as TensorBoard scalars, and the reconstruction grid as an image at the end
    scalars = tensorboard_scalars(tmp_path)
    assert scalars["train/loss"] == pytest.approx([r["loss"] for r in steps])
    assert len(scalars["epoch/epoch_loss"]) == 2 and "train/lr" in scalars and "train/img_per_s" in scalars
    (events,) = tmp_path.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    (grid,) = acc.Images("reconstruction")
    assert grid.step == 2 and grid.width == 4 * (64 + 4) + 4  # four panels of 64 px (32-px images enlarged)


def test_the_engine_runs_the_recipe_its_config_names(tiny_imagenet, tmp_path):
    """The optimiser the engine built (from its checkpoint) and the first logged loss, recomputed outside it."""
    from mae_core.data import ImageFolderDataset, build_pretrain_transform
    from mae_core.mae import MaskedAutoencoder
    from mae_core.train.distributed import train_loader
    from mae_core.train.pretrain import _model_kwargs
    from mae_core.train.seeded import SeededMaskingDataset

    cfg = tiny_config(tiny_imagenet, tmp_path, epochs=2, mask_ratio=0.5, weight_decay=0.07, keep_every=1)
    pretrain(cfg)
    state = load_file(tmp_path / LAST)
    shapes = {i: s["exp_avg"].shape for i, s in state["optimizer"]["state"].items()}
    groups = {g["weight_decay"]: g for g in state["optimizer"]["param_groups"]}
    assert set(groups) == {0.0, 0.07} and all(tuple(g["betas"]) == (0.9, 0.95) for g in groups.values())
    model = create_mae(cfg.model, img_size=TINY_IMG, **cfg.model_kwargs)
    no_decay = sum(p.numel() for n, p in model.named_parameters()
                   if p.requires_grad and (p.ndim <= 1 or n.endswith("_token")))
    decay = sum(p.numel() for p in model.parameters() if p.requires_grad) - no_decay
    assert sum(shapes[i].numel() for i in groups[0.0]["params"]) == no_decay
    assert sum(shapes[i].numel() for i in groups[0.07]["params"]) == decay
    # step 1's loss: the initial weights on the first batch with its noise, at the configured mask ratio
    kwargs = _model_kwargs(cfg)
    torch.manual_seed(cfg.seed)
    initial = MaskedAutoencoder(**kwargs)
    dataset = ImageFolderDataset(cfg.data_path, "train", build_pretrain_transform(kwargs["img_size"]))
    seeded = SeededMaskingDataset(dataset, initial.patch_embed.num_patches, cfg.seed)
    sampler, loader = train_loader(seeded, cfg.batch_size, 0, cfg.seed, DistInfo())
    imgs, _, noise = next(iter(loader))
    with torch.no_grad():
        expected = {r: initial(imgs, mask_ratio=r, noise=noise).loss.item() for r in (0.5, 0.75)}
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r]
    assert steps[0]["step"] == 1 and steps[0]["loss"] == pytest.approx(expected[0.5], rel=1e-5)
    assert abs(expected[0.5] - expected[0.75]) > 1e-3  # the check can tell the two ratios apart
    # epoch 2 starts from epoch 1's weights on a new order, new crops and new masks (set_epoch of both)
    initial.load_state_dict(weights(tmp_path / "checkpoint-1.pth"))
    seeded.set_epoch(0)
    img_a, _, noise_a = seeded[3]
    assert all(torch.equal(x, y) for x, y in zip((img_a, noise_a), seeded[3][::2]))  # a pure function of the epoch
    sampler.set_epoch(1)
    seeded.set_epoch(1)
    img_b, _, noise_b = seeded[3]
    assert not torch.equal(img_b, img_a) and not torch.equal(noise_b, noise_a)  # new crop, new mask
    imgs2, _, noise2 = next(iter(loader))
    with torch.no_grad():
        assert steps[8]["step"] == 9 and steps[8]["loss"] == pytest.approx(
            initial(imgs2, mask_ratio=0.5, noise=noise2).loss.item(), rel=1e-5)


def test_loss_falls_when_training(tiny_imagenet, tmp_path):
    pretrain(tiny_config(tiny_imagenet, tmp_path, epochs=8, blr=5e-3))
    epochs = [r["epoch_loss"] for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines())
              if "epoch_loss" in r]
    assert epochs[-1] < 0.9 * epochs[0]


def test_divergence_stops_with_clear_error_and_keeps_last_good_checkpoint(tiny_imagenet, tmp_path):
    pretrain(tiny_config(tiny_imagenet, tmp_path, epochs=1))
    good = weights(tmp_path / LAST)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint is .*checkpoint-last.pth"):
        pretrain(tiny_config(tiny_imagenet, tmp_path, epochs=3, lr=1e30))  # resumes, then blows up
    kept = load_file(tmp_path / LAST)
    assert kept["epoch"] == 0
    assert all(torch.equal(kept["model"][k], v) for k, v in good.items())


def test_resume_refuses_another_architecture(tiny_imagenet, tmp_path):
    pretrain(tiny_config(tiny_imagenet, tmp_path, epochs=1))
    other = {**TINY_MODEL["model_kwargs"], "depth": 3}
    with pytest.raises(Exception, match="another model configuration"):
        pretrain(tiny_config(tiny_imagenet, tmp_path, epochs=2, model_kwargs=other))


# ---------------------------------------------------------------- resume after a real kill
def kill_then_resume(cfg: PretrainConfig, kill_in_epoch: int):
    """`maet pretrain`, SIGKILLed as soon as epoch `kill_in_epoch` (0-based) logs a step, i.e. after the previous
    epoch's checkpoint was written; then the same command again, which resumes. Returns the log's path."""
    out, args = Path(cfg.output_dir), maet("pretrain", *cli_args(cfg))
    proc = subprocess.Popen(args, env=one_thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log, deadline = out / "log.jsonl", time.time() + 120
    while time.time() < deadline:
        if log.exists() and any(json.loads(x).get("epoch") == kill_in_epoch for x in log.read_text().splitlines()):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / FINAL).exists()
    assert load_file(out / LAST)["epoch"] == kill_in_epoch - 1
    subprocess.run(args, check=True, env=one_thread_env(), capture_output=True)  # same command: auto-resume
    return log


@pytest.mark.slow
def test_killed_run_resumes_bitwise_identical(tiny_imagenet, tmp_path):
    cfg = dict(epochs=4, blr=5e-3, num_workers=1)
    full = tmp_path / "uninterrupted"
    subprocess.run(maet("pretrain", *cli_args(tiny_config(tiny_imagenet, full, **cfg))), check=True,
                   env=one_thread_env(), capture_output=True)

    killed = tmp_path / "killed"
    log = kill_then_resume(tiny_config(tiny_imagenet, killed, **cfg), kill_in_epoch=2)
    a, b = weights(full / FINAL), weights(killed / FINAL)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert load_file(killed / LAST)["optimizer"]["state"].keys() == load_file(full / LAST)["optimizer"]["state"].keys()
    epochs_logged = [json.loads(x)["epoch"] for x in log.read_text().splitlines() if "epoch_loss" in x]
    assert epochs_logged == [0, 1, 2, 3]  # the partial epoch's lines were dropped on resume
    # TensorBoard draws the killed run's steps of epoch 2 once: the resumed writer purged them
    assert len(list(killed.glob("events.out.tfevents.*"))) == 2
    assert tensorboard_run(killed, "train/loss") == tensorboard_run(full, "train/loss")


@pytest.mark.slow
def test_killed_run_resumes_bitwise_identical_with_an_accumulation_that_does_not_divide_the_epoch(
        tiny_imagenet, tmp_path):
    """64 images at batch 4 = 16 micro-batches an epoch, accum 3: one left over each epoch (issue 13)."""
    cfg = dict(epochs=3, batch_size=4, accum_iter=3, blr=5e-3)
    full = tmp_path / "uninterrupted"
    subprocess.run(maet("pretrain", *cli_args(tiny_config(tiny_imagenet, full, **cfg))), check=True,
                   env=one_thread_env(), capture_output=True)
    kill_then_resume(tiny_config(tiny_imagenet, tmp_path / "killed", **cfg), kill_in_epoch=1)
    a, b = weights(full / FINAL), weights(tmp_path / "killed" / FINAL)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed weights differ from the uninterrupted run: {different[:5]}"


# ---------------------------------------------------------------- DDP
@pytest.mark.slow
def test_two_gloo_processes_match_one_process_at_the_same_global_batch(tiny_imagenet, tmp_path):
    one = tiny_config(tiny_imagenet, tmp_path / "one", epochs=1, batch_size=8, blr=5e-3)
    two = tiny_config(tiny_imagenet, tmp_path / "two", epochs=1, batch_size=4, blr=5e-3)  # 2 x 4 = 8
    subprocess.run(maet("pretrain", *cli_args(one)), check=True, env=one_thread_env(), capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "benchmarks.cli"]
    result = subprocess.run([*torchrun, "pretrain", *cli_args(two)], env=one_thread_env(), capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = weights(tmp_path / "one" / FINAL), weights(tmp_path / "two" / FINAL)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, f"DDP weights differ from single-process by {worst}"
    assert load_file(tmp_path / "two" / FINAL)["meta"]["run"]["world_size"] == 2
    initial = create_mae("mae_vit_tiny_patch16", img_size=TINY_IMG, **TINY_MODEL["model_kwargs"]).state_dict()
    assert not torch.allclose(a["blocks.0.attn.qkv.weight"], initial["blocks.0.attn.qkv.weight"])  # it trained


def test_bf16_autocast_runs_on_cpu_and_fp16_is_refused_without_cuda(tiny_imagenet, tmp_path):
    final = pretrain(tiny_config(tiny_imagenet, tmp_path / "bf16", epochs=1, precision="bf16")).checkpoint
    assert all(torch.isfinite(t).all() for t in weights(final).values())
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["attention"] == "eager"  # fast.py: CPU bf16
    pretrain(tiny_config(tiny_imagenet, tmp_path / "fp32", epochs=1, precision="fp32"))
    first = {p: json.loads((tmp_path / p / "log.jsonl").read_text().splitlines()[0])["loss"] for p in ("bf16", "fp32")}
    # the same weights, batch and noise: the losses differ by bf16's rounding only, so the step did run in bf16
    assert first["bf16"] != first["fp32"] and first["bf16"] == pytest.approx(first["fp32"], rel=0.05)
    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match="fp16 .* needs CUDA"):
            pretrain(tiny_config(tiny_imagenet, tmp_path / "fp16", epochs=1, precision="fp16"))
