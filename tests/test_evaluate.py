"""Evaluation: top-1/top-5/loss against numpy, any fine-tuned layout, class-count errors, the CLI, the benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.cli import build_parser
from benchmarks.cli import main as cli_main
from benchmarks.perf import eval_throughput
from benchmarks.records import read_records
from mae_core.checkpoints import save_mae_checkpoint
from mae_core.ckpt_io import sha256_file
from mae_core.data import build_eval_transform
from mae_core.errors import ArchitectureMismatchError, CheckpointFormatError, ClassCountMismatchError
from mae_core.models_vit import build_classifier, build_classifier_from_checkpoint
from mae_core.train.classification import checkpoint_sha256
from mae_core.train.evaluate import EvalConfig, evaluate, evaluate_checkpoint, topk_correct

from .conftest import TINY_IMG
from .test_finetune import save_tiny_mae

pytestmark = pytest.mark.usefixtures("one_thread")

# 128 wide with 2 heads: the 64-wide-head guess for files without meta gets the heads right.
OFFICIAL = dict(img_size=TINY_IMG, patch_size=8, embed_dim=128, depth=2, num_heads=2, num_classes=6)


def numpy_metrics(logits: np.ndarray, target: np.ndarray) -> dict:
    """Top-k as 'fewer than k logits beat the label's', loss as log-sum-exp minus the label's logit."""
    label_logit = logits[np.arange(len(target)), target]
    rank = (logits > label_logit[:, None]).sum(axis=1)
    m = logits.max(axis=1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))
    return {"top1": 100 * np.mean(rank < 1), "top5": 100 * np.mean(rank < 5), "loss": np.mean(lse - label_logit)}


class LookupModel(nn.Module):
    """Returns a fixed row of logits per input index: evaluation of known logits through the real loop."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x):
        return self.table[x.long()]


def test_topk_against_numpy():
    rng = np.random.default_rng(0)
    for classes in (7, 3):
        logits = rng.standard_normal((50, classes)).astype(np.float32)  # continuous: no ties
        target = rng.integers(0, classes, 50)
        top1, top5 = topk_correct(torch.from_numpy(logits), torch.from_numpy(target))
        expected = numpy_metrics(logits, target)
        assert 100 * top1.item() / 50 == pytest.approx(expected["top1"])
        assert 100 * top5.item() / 50 == pytest.approx(expected["top5"])
    assert top5.item() == 50  # 3 classes: every label is in the top 5


def test_evaluate_matches_numpy_on_fixed_logits():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((23, 10)).astype(np.float32) * 3
    target = rng.integers(0, 10, 23)
    loader = DataLoader(TensorDataset(torch.arange(23), torch.from_numpy(target)), batch_size=5)  # ragged last batch
    got = evaluate(LookupModel(torch.from_numpy(logits)), loader, torch.device("cpu"))
    expected = numpy_metrics(logits, target)
    assert got["num_images"] == 23 and got["img_per_s"] > 0
    for k in ("top1", "top5", "loss"):
        assert got[k] == pytest.approx(expected[k], rel=1e-6), k


def plain_top1(model: nn.Module, data, img_size: int) -> float:
    """Independent reference: torchvision's ImageFolder, the eval transform, argmax."""
    dataset = torchvision.datasets.ImageFolder(str(data / "val"), build_eval_transform(img_size))
    x, y = map(torch.stack, zip(*[(img, torch.tensor(label)) for img, label in dataset]))
    with torch.no_grad():
        return 100.0 * (model.eval()(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("layout", ["official_finetuned", "timm_bare_state_dict"])
def test_evaluates_official_and_timm_checkpoints(tiny_imagenet, tmp_path, layout):
    torch.manual_seed(0)
    pool = "avg" if layout == "official_finetuned" else "token"
    model = VisionTransformer(img_size=TINY_IMG, patch_size=8, embed_dim=128, depth=2, num_heads=2, num_classes=6,
                              global_pool=pool)
    with torch.no_grad():
        model.head.weight.mul_(50)  # spread the logits so top-1 is not a coin toss between near-equal ones
    sd = model.state_dict()
    assert ("fc_norm.weight" in sd) == (pool == "avg") and ("norm.weight" in sd) == (pool == "token")
    path = tmp_path / "model.pth"
    torch.save({"model": sd} if layout == "official_finetuned" else sd, path)
    res = evaluate_checkpoint(EvalConfig(data_path=str(tiny_imagenet), checkpoint=str(path), num_workers=0,
                                         progress=False))
    assert res.metrics["num_images"] == 12 and build_classifier_from_checkpoint(path)[1]["model_kwargs"][
        "global_pool"] == (pool == "avg")
    assert res.extra["checkpoint_format"] == ("official-finetuned" if layout == "official_finetuned" else "timm")
    assert res.metrics["top1"] == pytest.approx(plain_top1(model, tiny_imagenet, TINY_IMG))
    assert res.task == "finetune" and res.mode == "eval" and res.measured_sha256 == sha256_file(path)


def test_evaluates_a_hugging_face_vit_classification_folder(tiny_imagenet, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=512, image_size=TINY_IMG, patch_size=8, num_labels=6)
    assert config.layer_norm_eps == 1e-12  # HF's default: the classifier must be built with it
    hf = transformers.ViTForImageClassification(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    model, loaded = build_classifier_from_checkpoint(tmp_path / "hf")
    assert loaded["format"] == "hf-vit-classification" and not loaded["model_kwargs"]["global_pool"]
    assert model.blocks[0].norm1.eps == 1e-12
    x = torch.randn(4, 3, TINY_IMG, TINY_IMG)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), hf(pixel_values=x).logits, rtol=1e-5, atol=1e-5)
    res = evaluate_checkpoint(EvalConfig(data_path=str(tiny_imagenet), checkpoint=str(tmp_path / "hf"),
                                         num_workers=0, progress=False))
    assert res.metrics["top1"] == pytest.approx(plain_top1(model, tiny_imagenet, TINY_IMG))
    digest = checkpoint_sha256(tmp_path / "hf")  # a folder's provenance: its files' names and contents
    assert len(digest) == 64 and digest == checkpoint_sha256(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text() + " ")
    assert checkpoint_sha256(tmp_path / "hf") != digest


def test_evaluates_our_linear_probe_checkpoint(tiny_imagenet, tmp_path):
    torch.manual_seed(0)
    model = build_classifier(**OFFICIAL, global_pool=False, linear_probe=True).eval()
    path = save_mae_checkpoint(tmp_path / "lin.pth", model, {"model_kwargs": {**OFFICIAL, "global_pool": False,
                                                                              "linear_probe": True}})
    res = evaluate_checkpoint(EvalConfig(data_path=str(tiny_imagenet), checkpoint=str(path), num_workers=0,
                                         progress=False))
    assert res.task == "linprobe" and res.metrics["top1"] == pytest.approx(plain_top1(model, tiny_imagenet, TINY_IMG))


def test_head_and_class_count_mismatch_is_a_clear_error(tiny_imagenet, tmp_path):
    path = tmp_path / "ten.pth"
    torch.save({"model": build_classifier(**{**OFFICIAL, "num_classes": 10}).state_dict()}, path)
    with pytest.raises(ClassCountMismatchError, match=r"10-class head, but .*val holds 6 class folders"):
        evaluate_checkpoint(EvalConfig(data_path=str(tiny_imagenet), checkpoint=str(path), num_workers=0))


def test_bad_checkpoints_are_clear_errors(tiny_imagenet, tmp_path):
    cfg = lambda p: EvalConfig(data_path=str(tiny_imagenet), checkpoint=str(p), num_workers=0, progress=False)
    with pytest.raises(CheckpointFormatError, match="no classification head"):
        evaluate_checkpoint(cfg(save_tiny_mae(tmp_path / "mae.pth")))
    unknown = tmp_path / "unknown.pth"
    torch.save({"state": {"conv1.weight": torch.zeros(1)}}, unknown)
    with pytest.raises(CheckpointFormatError, match="Known formats"):
        evaluate_checkpoint(cfg(unknown))
    sd = build_classifier(**OFFICIAL).state_dict()
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"model": sd}, tmp_path / "extra.pth")
    with pytest.raises(ArchitectureMismatchError, match="extra.weight"):
        evaluate_checkpoint(cfg(tmp_path / "extra.pth"))


# ---------------------------------------------------------------- the command
def test_eval_command_writes_a_run_record_and_errors_cleanly(tiny_imagenet, tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "mae_finetuned_tiny.pth"
    torch.save({"model": build_classifier(**OFFICIAL).state_dict()}, path)
    runs = tmp_path / "runs"
    args = build_parser().parse_args(["eval", "--data-path", str(tiny_imagenet), "--checkpoint", str(path),
                                      "--num-workers", "0", "--no-progress", "--results-dir", str(runs),
                                      "--init-name", "mae"])
    record = args.func(args)
    assert read_records(runs, "finetune") == [json.loads(json.dumps(record))]
    assert record["checkpoint_sha256"] == sha256_file(path) and record["init"] == "mae" and record["mode"] == "eval"
    assert record["arch"] == "vit_custom_w128_d2_patch8" and set(record["metrics"]) >= {"top1", "top5", "loss"}
    assert "top-1" in capsys.readouterr().out

    torch.save({"model": build_classifier(**{**OFFICIAL, "num_classes": 10}).state_dict()}, path)
    assert cli_main(["eval", "--data-path", str(tiny_imagenet), "--checkpoint", str(path), "--num-workers", "0",
                     "--results-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "maet eval: error:" in err and "10-class head" in err and "Traceback" not in err
    assert len(read_records(runs)) == 1


# ---------------------------------------------------------------- the benchmark (smoke, no speed asserted)
def test_eval_throughput_benchmark_runs_on_a_tiny_config(tmp_path, capsys):
    report = eval_throughput.main(["--tiny", "--workers", "0", "--repeats", "2", "--batch", "32",
                                   "--json", str(tmp_path / "perf.json")])
    assert report["sanity"]["same_top1"] and report["sanity"]["num_images"] == 96
    assert all(len(v) == 2 and min(v) > 0 for v in report["img_per_s"].values())
    assert report["speed_maet_over_timm"] == pytest.approx(
        report["img_per_s_median"]["maet"] / report["img_per_s_median"]["timm"])
    assert json.loads((tmp_path / "perf.json").read_text())["sanity"] == report["sanity"]
    assert "maet/timm speed" in capsys.readouterr().out
