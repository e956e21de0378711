"""Fine-tuning: the classifier built from MAE weights, layer-wise lr decay, the recipe, a run, exact resume."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay as timm_param_groups_layer_decay

from benchmarks.cli import main as cli_main
from benchmarks.records import read_records
from mae_core.checkpoints import save_mae_checkpoint
from mae_core.ckpt_io import load_file, sha256_file
from mae_core.errors import (
    ArchitectureMismatchError,
    CheckpointFormatError,
    ClassCountMismatchError,
    DatasetLayoutError,
)
from mae_core.mae import create_mae
from mae_core.models_vit import create_classifier, init_head, load_init_checkpoint
from mae_core.train.finetune import (
    FinetuneConfig,
    build_criterion,
    build_mixup,
    build_train_transform,
    finetune,
)
from mae_core.train.layer_decay import param_groups_layer_decay
from mae_core.train.optim import set_lr
from mae_core.train.pretrain import PretrainConfig, pretrain
from mae_core.train.state import LAST

from .conftest import TINY_IMG, TINY_MODEL
from .helpers import cli_args, free_port, maet, one_thread_env, tensorboard_scalars

pytestmark = pytest.mark.usefixtures("one_thread")

ENCODER = {k: TINY_MODEL["model_kwargs"][k] for k in ("patch_size", "embed_dim", "depth", "num_heads")}
TINY_CLS = dict(model="vit_tiny_patch16", model_kwargs=ENCODER)  # the encoder of conftest's tiny MAE


def tiny_mae(perturb: float = 0.1, **overrides):
    """conftest's tiny MAE with weights moved off their init (LayerNorms are not identities)."""
    torch.manual_seed(0)
    mae = create_mae(TINY_MODEL["model"], img_size=TINY_IMG, **{**TINY_MODEL["model_kwargs"], **overrides})
    with torch.no_grad():
        for p in mae.parameters():
            p.add_(perturb * torch.randn_like(p))
    return mae


def save_tiny_mae(path, mae=None):
    mae = mae or tiny_mae()
    meta = {"arch": TINY_MODEL["model"], "model_kwargs": {**TINY_MODEL["model_kwargs"], "img_size": TINY_IMG}}
    return save_mae_checkpoint(path, mae, meta)


def tiny_classifier(**kwargs):
    return create_classifier("vit_tiny_patch16", img_size=kwargs.pop("img_size", TINY_IMG), num_classes=6,
                             **{**ENCODER, **kwargs})


def tiny_finetune_config(data, out, init="scratch", **overrides) -> FinetuneConfig:
    base = dict(data_path=str(data), output_dir=str(out), init=str(init), img_size=TINY_IMG, epochs=2,
                warmup_epochs=1, batch_size=8, num_workers=0, progress=False, log_every=1, **TINY_CLS)
    return FinetuneConfig(**{**base, **overrides})


# ---------------------------------------------------------------- weights into the classifier
def test_classifier_from_mae_checkpoint_has_identical_encoder(tmp_path):
    mae = tiny_mae()
    path = save_tiny_mae(tmp_path / "mae.pth", mae)
    mae_sd = mae.state_dict()

    clf = tiny_classifier(global_pool=False, drop_path_rate=0.0)  # cls token + final norm: the encoder output
    report = load_init_checkpoint(clf, path)
    assert set(report["missing"]) == {"head.weight", "head.bias"}
    for key, value in clf.state_dict().items():  # every encoder tensor arrived, unchanged
        if not key.startswith("head."):
            assert torch.equal(value, mae_sd[key]), key
    x = torch.randn(3, 3, TINY_IMG, TINY_IMG)
    num_patches = (TINY_IMG // ENCODER["patch_size"]) ** 2
    noise = torch.arange(num_patches, dtype=torch.float).expand(3, -1)  # increasing: the order is kept
    with torch.no_grad():
        latent, mask, _ = mae.eval().forward_encoder(x, 0.0, noise)
        features = clf.eval().forward_features(x)
    assert mask.sum() == 0
    torch.testing.assert_close(features, latent, rtol=1e-5, atol=1e-5)


def test_global_pool_classifier_reports_the_expected_keys_and_a_fresh_head(tmp_path):
    path = save_tiny_mae(tmp_path / "mae.pth")
    clf = tiny_classifier()  # global pool: fc_norm, no norm
    report = load_init_checkpoint(clf, path)
    assert set(report["missing"]) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    mae_keys = load_file(path)["model"].keys()
    assert set(report["unexpected"]) == {k for k in mae_keys if k.startswith(("norm.", "decoder_", "mask_token"))}
    assert not any(k.startswith("norm.") for k in clf.state_dict())
    init_head(clf, std=2e-5)
    w = clf.head.weight
    assert 0.5e-5 < w.std().item() < 2e-5 * 1.2 and w.abs().max().item() <= 2 + 1e-6  # timm's absolute clip
    assert torch.count_nonzero(clf.head.bias) == 0


def test_pos_embed_is_resized_for_another_resolution(tmp_path):
    mae = tiny_mae()
    clf = tiny_classifier(img_size=48)  # grid 4x4 -> 6x6
    report = load_init_checkpoint(clf, save_tiny_mae(tmp_path / "mae.pth", mae))
    assert report["resized"] == ["pos_embed"]
    assert clf.pos_embed.shape == (1, 1 + 36, ENCODER["embed_dim"])
    assert torch.equal(clf.pos_embed[:, :1], mae.pos_embed[:, :1])  # the cls entry is kept apart


def test_wrong_architecture_is_a_clear_error(tmp_path):
    wide = save_tiny_mae(tmp_path / "wide.pth", tiny_mae(embed_dim=96, num_heads=4))  # "a ViT-L for a ViT-B"
    with pytest.raises(ArchitectureMismatchError, match=r"width 96.*but the model is .*width 64"):
        load_init_checkpoint(tiny_classifier(), wide)
    deep = save_tiny_mae(tmp_path / "deep.pth", tiny_mae(depth=3))
    with pytest.raises(ArchitectureMismatchError, match=r"blocks\.2"):
        load_init_checkpoint(tiny_classifier(), deep)
    with pytest.raises(ArchitectureMismatchError, match="4 attention heads"):
        load_init_checkpoint(tiny_classifier(num_heads=2), save_tiny_mae(tmp_path / "mae.pth"))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((tmp_path / "mae.pth").read_bytes()[:1000])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        load_init_checkpoint(tiny_classifier(), truncated)


# ---------------------------------------------------------------- the recipe
def official_layer_id(name: str, depth: int) -> int:
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    return int(name.split(".")[1]) + 1 if name.startswith("blocks.") else depth + 1


@pytest.mark.parametrize("global_pool", [True, False])
def test_layer_decay_scales_follow_the_official_formula(global_pool):
    depth, decay = 3, 0.75
    model = tiny_classifier(depth=depth, global_pool=global_pool)
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=decay)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert set(scale) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert scale[name] == pytest.approx(decay ** (depth + 1 - official_layer_id(name, depth))), name
        assert wd[name] == (0.0 if p.ndim == 1 or name in ("pos_embed", "cls_token") else 0.05), name
    assert scale["head.weight"] == 1.0 and scale["blocks.2.attn.qkv.weight"] == pytest.approx(0.75)
    assert scale["blocks.0.mlp.fc1.weight"] == pytest.approx(0.75**3) == scale["blocks.0.norm1.bias"]
    assert scale["patch_embed.proj.weight"] == pytest.approx(0.75**4) == scale["cls_token"] == scale["pos_embed"]

    optimizer = torch.optim.AdamW(groups, lr=1.0)
    set_lr(optimizer, 1e-3)
    for g in optimizer.param_groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])

    timm_groups = timm_param_groups_layer_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay(),
                                                layer_decay=decay)
    names = {id(p): n for n, p in model.named_parameters()}
    timm_scale = {names[id(p)]: g["lr_scale"] for g in timm_groups for p in g["params"]}
    differ = {n for n in scale if timm_scale[n] != pytest.approx(scale[n])}
    # timm agrees for the global-pool model; for the cls-token model it puts `norm` at the last block's rate
    assert differ == (set() if global_pool else {"norm.weight", "norm.bias"})


def test_train_transform_criterion_and_mixup_are_the_official_ones(tmp_path):
    cfg = tiny_finetune_config(tmp_path, tmp_path)
    steps = build_train_transform(cfg).transforms
    assert "RandomResizedCrop" in repr(steps[0]) and "interpolation=bicubic" in repr(steps[0])
    assert steps[0].scale == (0.08, 1.0)
    assert build_train_transform(tiny_finetune_config(tmp_path, tmp_path, crop_min_scale=0.5)).transforms[0].scale \
        == (0.5, 1.0)
    (rand,) = [t for t in steps if isinstance(t, RandAugment)]
    assert rand.num_layers == 2 and all(op.magnitude == 9 and op.magnitude_std == 0.5 for op in rand.ops)
    (erase,) = [t for t in steps if isinstance(t, RandomErasing)]
    assert erase.probability == 0.25 and erase.mode == "pixel"

    mixup = build_mixup(cfg, 6)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.label_smoothing, mixup.num_classes) == (0.8, 1.0, 0.1, 6)
    assert isinstance(build_criterion(cfg), SoftTargetCrossEntropy)
    off = tiny_finetune_config(tmp_path, tmp_path, mixup=0.0, cutmix=0.0)
    assert build_mixup(off, 6) is None and isinstance(build_criterion(off), LabelSmoothingCrossEntropy)
    assert isinstance(build_criterion(tiny_finetune_config(tmp_path, tmp_path, mixup=0, cutmix=0, smoothing=0)),
                      torch.nn.CrossEntropyLoss)


# ---------------------------------------------------------------- a run
def test_finetune_run_writes_checkpoint_log_and_metrics(tiny_imagenet, tmp_path):
    init = save_tiny_mae(tmp_path / "mae.pth")
    result = finetune(tiny_finetune_config(tiny_imagenet, tmp_path / "out", init, epochs=1))
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert set(ckpt) == {"model", "meta"}
    keys = set(ckpt["model"])
    assert {"fc_norm.weight", "head.weight", "blocks.1.mlp.fc2.weight"} <= keys and "norm.weight" not in keys
    meta = ckpt["meta"]
    assert meta["classes"] == sorted(p.name for p in (tiny_imagenet / "val").iterdir())
    assert meta["model_kwargs"]["num_classes"] == 6 and meta["model_kwargs"]["drop_path_rate"] == 0.1
    assert 0.0 <= result.metrics["top1"] <= 100.0 and result.metrics["top5"] >= result.metrics["top1"]
    assert result.measured_sha256 == sha256_file(init)
    # The init report is the adapters' LoadReport, in the run folder and (compact) in the result's record fields.
    report = json.loads((tmp_path / "out" / "init_report.json").read_text())
    assert set(report["new"]) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    assert report["init"] == "mae.pth" and report["sha256"] == sha256_file(init)
    in_file = set(load_file(init)["model"])
    not_encoder = {k for k in in_file if k.startswith(("decoder", "mask_token"))} | {"norm.weight", "norm.bias"}
    assert set(report["loaded"]) == in_file - not_encoder and set(report["unused"]) == not_encoder
    assert "no final norm" in report["unused"]["norm.weight"]
    assert result.extra["init_report"]["loaded"] == len(report["loaded"]) and result.extra["init_report"]["new"] == {
        "head.weight": 1, "head.bias": 1, "fc_norm.weight": 1, "fc_norm.bias": 1}

    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))  # 64 images / batch 8, per-iteration schedule
    assert steps[0]["lr"] == 0.0 and steps[1]["lr"] > 0.0
    assert any("test_top1" in r for r in log)
    scalars = tensorboard_scalars(tmp_path / "out")  # the log's numbers, also in TensorBoard
    assert scalars["train/loss"] == pytest.approx([r["loss"] for r in steps])
    assert scalars["epoch/test_top1"] == pytest.approx([result.metrics["top1"]])
    state = load_file(tmp_path / "out" / LAST)
    groups = state["optimizer"]["param_groups"]
    top = max(g["lr"] for g in groups)
    assert top > 0 and all(g["lr"] == pytest.approx(top * g["lr_scale"]) for g in groups)  # layer decay applied
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_class_count_and_split_mismatches_are_clear_errors(tiny_imagenet, tmp_path):
    with pytest.raises(ClassCountMismatchError, match="--num-classes 10 but .* holds 6 class folders"):
        finetune(tiny_finetune_config(tiny_imagenet, tmp_path / "out", num_classes=10))
    shutil.copytree(tiny_imagenet, tmp_path / "data")
    shutil.rmtree(sorted((tmp_path / "data" / "val").iterdir())[0])
    with pytest.raises(DatasetLayoutError, match="different class folders"):
        finetune(tiny_finetune_config(tmp_path / "data", tmp_path / "out"))


def test_resume_refuses_another_architecture(tiny_imagenet, tmp_path):
    finetune(tiny_finetune_config(tiny_imagenet, tmp_path, epochs=1))
    other = {**ENCODER, "depth": 3}
    with pytest.raises(CheckpointFormatError, match="another model configuration"):
        finetune(tiny_finetune_config(tiny_imagenet, tmp_path, epochs=2, model_kwargs=other))


# ---------------------------------------------------------------- resume after a real kill
@pytest.mark.slow
def test_killed_finetune_resumes_bitwise_identical(tiny_imagenet, tmp_path):
    """Mixup, CutMix, RandAugment, random erasing and drop path all on: every draw must replay; and the EMA
    of the weights (saved in checkpoint-last.pth) continues where it stopped."""
    init = save_tiny_mae(tmp_path / "mae.pth")
    cfg = dict(epochs=4, num_workers=1, blr=5e-3, model_ema=True, model_ema_decay=0.9)
    full = tmp_path / "uninterrupted"
    record = ["--results-dir", str(tmp_path / "runs")]
    subprocess.run(maet("finetune", *cli_args(tiny_finetune_config(tiny_imagenet, full, init, **cfg)), *record),
                   check=True, env=one_thread_env(), capture_output=True)

    killed = tmp_path / "killed"
    args = maet("finetune", *cli_args(tiny_finetune_config(tiny_imagenet, killed, init, **cfg)), *record)
    proc = subprocess.Popen(args, env=one_thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = killed / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill inside epoch 3, after the epoch-2 checkpoint was written
        if log.exists() and any(json.loads(line).get("epoch") == 2 for line in log.read_text().splitlines()):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert load_file(killed / LAST)["epoch"] == 1

    subprocess.run(args, check=True, env=one_thread_env(), capture_output=True)  # same command: auto-resume
    a, b = load_file(full / "finetuned.pth"), load_file(killed / "finetuned.pth")
    assert a["model"].keys() == b["model"].keys() and b["meta"]["weights"] == "ema"
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "resumed EMA weights differ"
    last_a, last_b = load_file(full / LAST), load_file(killed / LAST)
    assert all(torch.equal(last_a["model"][k], last_b["model"][k]) for k in a["model"]), "resumed weights differ"
    assert not torch.equal(last_b["model"]["head.weight"], b["model"]["head.weight"])  # the EMA is not the model
    assert a["meta"]["metrics"] == b["meta"]["metrics"]
    records = read_records(tmp_path / "runs", "finetune")
    assert len(records) == 2 and records[0]["metrics"]["top1"] == records[1]["metrics"]["top1"]
    assert records[1]["run_id"] == b["meta"]["run"]["run_id"]  # one run, though started twice
    epochs_logged = [json.loads(x)["epoch"] for x in log.read_text().splitlines() if "train_loss" in x]
    assert epochs_logged == [0, 1, 2, 3]


# ---------------------------------------------------------------- DDP
@pytest.mark.slow
def test_two_gloo_processes_match_one_process_at_the_same_global_batch(tiny_imagenet, tmp_path):
    """Without Mixup and drop path (drawn per process) a step sees the same global batch, RandAugment included."""
    init = save_tiny_mae(tmp_path / "mae.pth")
    cfg = dict(epochs=1, blr=5e-3, mixup=0.0, cutmix=0.0, drop_path=0.0)
    one = tiny_finetune_config(tiny_imagenet, tmp_path / "one", init, batch_size=8, **cfg)
    two = tiny_finetune_config(tiny_imagenet, tmp_path / "two", init, batch_size=4, **cfg)  # 2 x 4 = 8
    record = ["--results-dir", str(tmp_path / "runs")]
    subprocess.run(maet("finetune", *cli_args(one), *record), check=True, env=one_thread_env(), capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                "127.0.0.1", "--master-port", str(free_port()), "-m", "benchmarks.cli"]
    result = subprocess.run([*torchrun, "finetune", *cli_args(two), *record], env=one_thread_env(), capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = load_file(tmp_path / "one" / "finetuned.pth"), load_file(tmp_path / "two" / "finetuned.pth")
    worst = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    assert worst < 1e-5, f"DDP weights differ from single-process by {worst}"
    assert a["meta"]["metrics"]["top1"] == b["meta"]["metrics"]["top1"]  # sharded eval: every image once
    records = read_records(tmp_path / "runs", "finetune")
    assert [r["world_size"] for r in records] == [1, 2]  # rank 0 alone writes the DDP run's record


# ---------------------------------------------------------------- Must show
@pytest.mark.slow
def test_tiny_mae_finetuned_and_scratch_and_linear_probe_write_run_records(tiny_imagenet, tmp_path):
    pre = PretrainConfig(data_path=str(tiny_imagenet), output_dir=str(tmp_path / "pretrain"), img_size=TINY_IMG,
                         epochs=2, warmup_epochs=1, batch_size=8, blr=5e-3, num_workers=0, progress=False,
                         keep_every=0, **TINY_MODEL)
    mae = pretrain(pre).checkpoint
    runs = str(tmp_path / "runs")
    common = ["--data-path", str(tiny_imagenet), "--model", "vit_tiny_patch16", "--model-kwargs", json.dumps(ENCODER),
              "--img-size", str(TINY_IMG), "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "8",
              "--num-workers", "0", "--no-progress", "--results-dir", runs, "--dataset-name", "synthetic-imagenet"]
    assert cli_main(["finetune", *common, "--output-dir", str(tmp_path / "ft"), "--init", str(mae),
                     "--init-name", "mae"]) == 0
    assert cli_main(["finetune", *common, "--output-dir", str(tmp_path / "scratch"), "--init", "scratch"]) == 0
    assert cli_main(["linprobe", *common, "--output-dir", str(tmp_path / "lin"), "--init", str(mae),
                     "--init-name", "mae"]) == 0

    records = read_records(runs)
    assert [(r["task"], r["init"]) for r in records] == [("finetune", "mae"), ("finetune", "scratch"),
                                                         ("linprobe", "mae")]
    for r in records:
        assert 0.0 <= r["metrics"]["top1"] <= 100.0 and r["dataset"] == "synthetic-imagenet"
        assert r["arch"] == "vit_custom_w64_d2_patch8" and r["config"]["epochs"] == 2 and r["duration_s"] > 0
    assert records[0]["checkpoint_sha256"] == sha256_file(mae) == records[2]["checkpoint_sha256"]
    assert records[1]["checkpoint_sha256"] is None
    assert records[0]["output"]["sha256"] == sha256_file(tmp_path / "ft" / "finetuned.pth")


def test_randaugment_posterize_at_full_magnitude_does_not_crash():
    """timm's RandAugment (rand-m9-mstd0.5) reaches PosterizeIncreasing level 10 = keep 0 bits; Pillow 13
    refuses that mid-epoch (hence the Pillow<13 pin)."""
    from PIL import Image
    from timm.data.auto_augment import AugmentOp

    img = Image.new("RGB", (16, 16), (200, 120, 40))
    out = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)(img)
    assert out.getpixel((0, 0)) == (0, 0, 0)  # 0 bits kept
