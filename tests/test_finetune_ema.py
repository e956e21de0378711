"""`maet finetune --model-ema`: timm's ModelEmaV3 stepped after each optimiser step, evaluated, saved, recorded.

The EMA is checked against an exponential average recomputed here in float64 from the weights after
every optimiser step (caught by a hook on the optimiser); resuming it after a real SIGKILL is checked
in tests/test_finetune.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.cli import build_parser
from benchmarks.cli import main as cli_main
from benchmarks.cli_args import dataclass_from_args
from benchmarks.records import read_records
from mae_core.ckpt_io import load_file
from mae_core.errors import CheckpointFormatError
from mae_core.train.classification import train_classifier
from mae_core.train.finetune import FinetuneConfig, build_train_transform, finetune, make_recipe
from mae_core.train.state import LAST

from .helpers import cli_args
from .test_finetune import tiny_finetune_config

pytestmark = pytest.mark.usefixtures("one_thread")


def expected_decay(n: int, decay: float, warmup: bool) -> float:
    """The decay of the n-th update (n from 1): the first copies the model; timm's warm-up is 1 - n^(-2/3)."""
    if n == 1:
        return 0.0
    return min(decay, 1 - n ** (-2 / 3)) if warmup else decay


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_is_the_exponential_average_of_the_weights_after_each_optimiser_step(tiny_imagenet, tmp_path, warmup):
    # 64 images / batch 8 = 8 micro-batches an epoch, accum 2: 4 optimiser steps an epoch, 8 in all
    cfg = tiny_finetune_config(tiny_imagenet, tmp_path / "out", epochs=2, accum_iter=2, blr=5e-3, model_ema=True,
                               model_ema_decay=0.8, model_ema_warmup=warmup)
    after_step = []

    def recording_recipe(num_classes, info, lr):
        recipe = make_recipe(cfg)(num_classes, info, lr)
        recipe.optimizer.register_step_post_hook(lambda *_: after_step.append(
            {k: v.detach().double().clone() for k, v in recipe.model.state_dict().items()}))
        return recipe

    result = train_classifier(cfg, "finetune", build_train_transform(cfg), recording_recipe)
    assert len(after_step) == 8
    average = after_step[0]
    for n, weights in enumerate(after_step[1:], start=2):
        d = expected_decay(n, 0.8, warmup)
        average = {k: d * average[k] + (1 - d) * weights[k] for k in average}

    last, final = load_file(tmp_path / "out" / LAST), load_file(result.checkpoint)
    assert last["ema"].keys() == last["model"].keys() == average.keys()
    for key, value in average.items():
        torch.testing.assert_close(last["ema"][key].double(), value, rtol=1e-5, atol=1e-6, msg=key)
        assert torch.equal(final["model"][key], last["ema"][key]), key  # the final file holds the EMA
        assert torch.equal(last["model"][key].double(), after_step[-1][key]), key  # and the trained model
    head = after_step[-1]["head.weight"]
    assert (average["head.weight"] - head).abs().max() > 1e-4  # a real average, not the last weights
    assert final["meta"]["weights"] == "ema" and final["meta"]["model_ema"] == {"decay": 0.8, "warmup": warmup}


def test_ema_run_records_the_ema_as_headline_and_leaves_training_unchanged(tiny_imagenet, tmp_path):
    runs = str(tmp_path / "runs")
    common = dict(epochs=1, blr=5e-3, beta2=0.95)
    ema_cfg = tiny_finetune_config(tiny_imagenet, tmp_path / "ema", model_ema=True, model_ema_decay=0.9, **common)
    assert cli_main(["finetune", *cli_args(ema_cfg), "--results-dir", runs]) == 0
    (record,) = read_records(runs, "finetune")
    metrics = record["metrics"]
    assert record["headline_weights"] == "ema" and record["config"]["model_ema"] is True
    assert {"top1_ema", "top5_ema", "loss_ema", "top1_raw", "top5_raw", "loss_raw"} <= set(metrics)
    assert metrics["top1"] == metrics["top1_ema"] and metrics["loss"] == metrics["loss_ema"]
    assert metrics["loss_raw"] != metrics["loss_ema"]
    log = [json.loads(line) for line in (tmp_path / "ema" / "log.jsonl").read_text().splitlines()]
    (epoch,) = [r for r in log if "train_loss" in r]
    assert epoch["test_top1"] == epoch["test_top1_ema"] and "test_top1_raw" in epoch

    last = load_file(tmp_path / "ema" / LAST)
    assert all(g["betas"] == (0.9, 0.95) for g in last["optimizer"]["param_groups"])
    # `maet eval` of the final file measures the headline: the file holds the EMA's weights
    assert cli_main(["eval", "--data-path", str(tiny_imagenet), "--checkpoint", record["output"]["checkpoint"],
                     "--num-workers", "0", "--no-progress", "--results-dir", runs]) == 0
    (evaluated,) = [r for r in read_records(runs, "finetune") if r.get("mode") == "eval"]
    assert evaluated["metrics"]["top1"] == metrics["top1"]
    assert evaluated["metrics"]["loss"] == pytest.approx(metrics["loss"], rel=1e-6)

    # The EMA draws no random numbers: the trained model is bitwise the one of a run without it.
    plain = finetune(tiny_finetune_config(tiny_imagenet, tmp_path / "plain", **common))
    assert plain.extra["headline_weights"] == "model" and "top1_raw" not in plain.metrics
    without = load_file(tmp_path / "plain" / LAST)
    assert "ema" not in without
    assert all(torch.equal(last["model"][k], without["model"][k]) for k in last["model"])
    # A run that kept no EMA cannot be continued with one.
    with pytest.raises(CheckpointFormatError, match="kept no EMA"):
        finetune(tiny_finetune_config(tiny_imagenet, tmp_path / "plain", model_ema=True, **{**common, "epochs": 2}))


def test_ema_and_beta2_options_parse_with_their_defaults(tmp_path):
    base = ["finetune", "--data-path", str(tmp_path), "--output-dir", str(tmp_path / "o"), "--init", "scratch"]
    default = dataclass_from_args(FinetuneConfig, build_parser().parse_args(base))
    assert (default.model_ema, default.model_ema_decay, default.model_ema_warmup, default.beta2) == \
        (False, 0.9999, False, 0.999)
    args = build_parser().parse_args([*base, "--model-ema", "--model-ema-decay", "0.99", "--model-ema-warmup",
                                      "--beta2", "0.95"])
    cfg = dataclass_from_args(FinetuneConfig, args)
    assert (cfg.model_ema, cfg.model_ema_decay, cfg.model_ema_warmup, cfg.beta2) == (True, 0.99, True, 0.95)
    for bad in (["--beta2", "1"], ["--model-ema-decay", "1.5"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([*base, *bad])
        assert exit_info.value.code == 2
