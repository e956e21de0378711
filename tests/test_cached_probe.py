"""The probe on cached features: the feature each checkpoint is read on, the converged BN + linear head,
weighted k-NN against a brute-force re-computation, and `maet linprobe --probe cached` writing two records."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.cli import main as cli_main
from benchmarks.records import read_records
from mae_core.checkpoints import save_mae_checkpoint
from mae_core.data import ImageFolderDataset, build_eval_transform
from mae_core.errors import FeatureMismatchError
from mae_core.models_vit import build_classifier_from_checkpoint, classifier_kwargs
from mae_core.train.cached_probe import WD_GRID, choose_weight_decay, evaluate_head, fit_head
from mae_core.train.distributed import DistInfo
from mae_core.train.evaluate import EvalConfig, eval_loader, evaluate_checkpoint
from mae_core.train.features import choose_feature, extract, pooled, probe_classifier
from mae_core.train.knn import knn_classify, knn_scores
from mae_core.train.linprobe import make_recipe

from .conftest import TINY_IMG
from .helpers import cli_args, tensorboard_scalars
from .test_finetune import ENCODER, TINY_CLS, save_tiny_mae, tiny_classifier, tiny_mae
from .test_linprobe import tiny_linprobe_config

pytestmark = pytest.mark.usefixtures("one_thread")


def probe(init, feature="auto"):
    return probe_classifier(TINY_CLS["model"], ENCODER, TINY_IMG, 6, str(init), feature, seed=0)


def save_global_pool_classifier(path):
    """A fine-tuned global-pool classifier (as the supervised baseline's file): fc_norm, no norm."""
    torch.manual_seed(1)
    clf = tiny_classifier(drop_path_rate=0.0)
    with torch.no_grad():
        for p in clf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    kwargs = classifier_kwargs(TINY_CLS["model"], img_size=TINY_IMG, num_classes=6, drop_path_rate=0.0, **ENCODER)
    save_mae_checkpoint(path, clf, {"format": "mae-transfer/1", "task": "finetune", "model_kwargs": kwargs})
    return clf.eval()


# ---------------------------------------------------------------- which feature
def test_an_mae_file_gives_its_cls_token_or_its_normed_patch_mean(tmp_path):
    mae = tiny_mae().eval()
    path = save_tiny_mae(tmp_path / "mae.pth", mae)
    x = torch.randn(3, 3, TINY_IMG, TINY_IMG)
    seen = {}
    mae.norm.register_forward_hook(lambda module, args, out: seen.update(tokens=args[0]))
    noise = torch.arange((TINY_IMG // ENCODER["patch_size"]) ** 2, dtype=torch.float).expand(3, -1)  # order kept
    with torch.no_grad():
        latent, _, _ = mae.forward_encoder(x, 0.0, noise)
        patch_mean = seen["tokens"][:, 1:].mean(dim=1)
        expected = {"cls": latent[:, 0], "avg": F.layer_norm(patch_mean, patch_mean.shape[-1:], mae.norm.weight,
                                                              mae.norm.bias, eps=1e-6)}
    for feature, kind in [("auto", "cls"), ("cls", "cls"), ("avg", "avg")]:
        model, kwargs, report, choice = probe(path, feature)
        assert choice.kind == kind and kwargs["global_pool"] == (kind == "avg")
        assert choice.norm == "norm"  # avg: the file's final norm (it has no fc_norm), and said so
        assert not [k for k in report.new if k.startswith(("norm.", "fc_norm."))]
        with torch.no_grad():
            torch.testing.assert_close(pooled(model.eval(), x), expected[kind], rtol=1e-5, atol=1e-5)
    assert "no fc_norm" in choice.why and any("no fc_norm" in n for n in report.notes)
    # The load report names the file's keys: its norm went in as fc_norm, the decoder stayed out.
    assert report.loaded["norm.weight"] == "fc_norm.weight" and "decoder_embed.weight" in report.unused


def test_a_global_pool_classifier_is_probed_on_its_own_feature_and_cls_is_refused(tmp_path):
    clf = save_global_pool_classifier(tmp_path / "sup.pth")
    x = torch.randn(2, 3, TINY_IMG, TINY_IMG)
    with torch.no_grad():
        tokens = clf.forward_features(x)  # no final norm in this model: the blocks' output
        expected = F.layer_norm(tokens[:, 1:].mean(dim=1), tokens.shape[-1:], clf.fc_norm.weight, clf.fc_norm.bias,
                                eps=1e-6)
    model, kwargs, report, choice = probe(tmp_path / "sup.pth")
    assert choice.kind == "avg" and choice.norm == "fc_norm" and report.loaded["fc_norm.weight"] == "fc_norm.weight"
    with torch.no_grad():
        torch.testing.assert_close(pooled(model.eval(), x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(FeatureMismatchError, match=r"no final norm .*--feature avg"):
        probe(tmp_path / "sup.pth", "cls")
    # The official probe reads the same feature: fc_norm loaded, no norm left at a fresh init.
    recipe = make_recipe(tiny_linprobe_config(tmp_path, tmp_path, tmp_path / "sup.pth"))(6, DistInfo(), 0.1)
    assert recipe.model.global_pool == "avg" and torch.equal(recipe.model.fc_norm.weight, clf.fc_norm.weight)
    assert recipe.feature["kind"] == "avg"


def test_a_file_without_any_final_norm_is_refused_and_scratch_defaults_to_cls():
    bare = SimpleNamespace(state_dict={"blocks.0.norm1.weight": torch.ones(2)}, source="bare.pth")
    with pytest.raises(FeatureMismatchError, match="neither fc_norm.* nor norm"):
        choose_feature(bare, "avg")
    with pytest.raises(FeatureMismatchError, match="--feature avg"):
        choose_feature(bare, "cls")
    assert choose_feature(None, "auto").kind == "cls" and choose_feature(None, "avg").kind == "avg"


# ---------------------------------------------------------------- the head, fitted
def clusters(n_per_class: int, seed: int, classes: int = 3, dim: int = 8):
    """Separable blobs, with per-dimension offsets and scales the BN has to undo."""
    g = torch.Generator().manual_seed(seed)
    centres = 6.0 * torch.randn(classes, dim, generator=torch.Generator().manual_seed(0))
    y = torch.arange(classes).repeat(n_per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=g)
    return x * torch.linspace(0.1, 50.0, dim) + 100.0, y


def new_head(dim=8, classes=3):
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, classes))


def test_the_head_converges_to_the_optimum_and_separates_a_separable_set():
    x, y = clusters(20, seed=1)
    head, wd = new_head(), 1e-2
    fit = fit_head(head, x, y, weight_decay=wd)
    bn, linear = head
    torch.testing.assert_close(bn.running_mean, x.mean(0))
    torch.testing.assert_close(bn.running_var, x.var(0, unbiased=False))
    assert fit["train_top1"] == 100.0 and evaluate_head(head, *clusters(10, seed=2))["top1"] == 100.0
    # Optimality, checked independently in float64: the objective's gradient vanishes at the fitted head.
    x64 = x.double()
    z = (x64 - x64.mean(0)) / (x64.var(0, unbiased=False) + 1e-6).sqrt()
    w = linear.weight.detach().double().requires_grad_()
    b = linear.bias.detach().double().requires_grad_()
    objective = F.cross_entropy(z @ w.T + b, y) + 0.5 * wd * w.square().sum()
    grad_w, grad_b = torch.autograd.grad(objective, [w, b])
    assert max(grad_w.abs().max().item(), grad_b.abs().max().item()) < 1e-4
    assert objective.item() == pytest.approx(fit["train_loss"], rel=1e-4)


def test_the_fit_is_deterministic():
    x, y = clusters(30, seed=3)
    x = x + 20.0 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))  # overlapping: a real optimum
    heads = [new_head(), new_head()]
    for head in heads:
        fit_head(head, x, y)
    assert torch.equal(heads[0][1].weight, heads[1][1].weight) and torch.equal(heads[0][1].bias, heads[1][1].bias)


def test_cross_validation_picks_the_penalty_that_generalises_on_train_folds_only():
    x, y = clusters(10, seed=5)
    assert choose_weight_decay(x, y, 3, seed=0, grid=(1e3, 1e-3))[0] == 1e-3  # 1e3 shrinks every logit to 0
    best, top1 = choose_weight_decay(x, y, 3, seed=0, grid=(1e-3, 1e-2))
    assert (best, top1) == (1e-2, 100.0)  # separable: a tie, and the stronger penalty wins it
    noisy = x + 40.0 * torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    assert choose_weight_decay(noisy, y, 3, seed=3) == choose_weight_decay(noisy, y, 3, seed=3)


# ---------------------------------------------------------------- k-NN
def brute_force_knn(train, train_y, test, num_classes, k, temperature):
    """DINO's vote, one test image at a time in float64 numpy."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    scores = np.zeros((len(test), num_classes))
    for i, q in enumerate(test):
        sim = train @ q
        for j in np.argsort(-sim)[:k]:
            scores[i, train_y[j]] += np.exp(sim[j] / temperature)
    return scores


def test_knn_votes_equal_a_brute_force_computation():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(50, 16, generator=g), torch.randn(30, 16, generator=g)
    train_y, test_y = torch.randint(0, 4, (50,), generator=g), torch.randint(0, 4, (30,), generator=g)
    expected = brute_force_knn(train.numpy().astype(np.float64), train_y.numpy(), test.numpy().astype(np.float64),
                               4, k=20, temperature=0.07)
    got = knn_scores(train, train_y, test, 4, k=20, temperature=0.07, max_elements=50 * 7)  # chunks of 7 rows
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4)
    result = knn_classify(train, train_y, test, test_y, 4)
    assert result["top1"] == pytest.approx(100.0 * np.mean(expected.argmax(1) == test_y.numpy()))
    few = knn_scores(train[:5], train_y[:5], test, 4, k=20)  # k larger than the train set: all of it votes
    np.testing.assert_allclose(few.numpy(), brute_force_knn(train[:5].double().numpy(), train_y[:5].numpy(),
                                                            test.double().numpy(), 4, 5, 0.07), rtol=1e-4)


def test_knn_on_separable_clusters_is_perfect():
    (train, train_y), (test, test_y) = clusters(20, seed=1), clusters(10, seed=2)
    train, test = train / torch.linspace(0.1, 50.0, 8) - 2.0, test / torch.linspace(0.1, 50.0, 8) - 2.0
    assert knn_classify(train, train_y, test, test_y, 3, k=5)["top1"] == 100.0


# ---------------------------------------------------------------- the command
def test_maet_linprobe_cached_writes_a_linprobe_and_a_knn_record(tiny_imagenet, tmp_path):
    init = save_tiny_mae(tmp_path / "mae.pth")
    runs, out = tmp_path / "runs", tmp_path / "out"
    cfg = tiny_linprobe_config(tiny_imagenet, out, init, probe="cached")
    assert cli_main(["linprobe", *cli_args(cfg), "--results-dir", str(runs), "--init-name", "mae"]) == 0
    (lin,), (knn,) = read_records(runs, "linprobe"), read_records(runs, "knn")
    assert lin["config"]["probe"] == knn["config"]["probe"] == "cached"
    assert (lin["config"]["feature"], lin["config"]["feature_option"], lin["config"]["feature_norm"]) == (
        "cls", "auto", "norm")
    assert knn["linprobe_run_id"] == lin["run_id"] and knn["init"] == lin["init"] == "mae"
    assert knn["checkpoint_sha256"] == lin["checkpoint_sha256"] is not None
    assert lin["metrics"]["steps"] >= 1 and lin["metrics"]["feature_dim"] == ENCODER["embed_dim"]
    assert lin["metrics"]["weight_decay"] in WD_GRID and 0 <= lin["metrics"]["cv_top1"] <= 100
    # Both records carry the init's LoadReport (compact); the run folder holds it whole, as the adapters' do.
    report = json.loads((out / "init_report.json").read_text())
    assert lin["init_report"] == knn["init_report"] and lin["init_report"]["loaded"] == len(report["loaded"]) > 0
    assert report["sha256"] == lin["checkpoint_sha256"] and "head.1.weight" in report["new"]
    assert lin["headline_weights"] == "model" and lin["output"]["checkpoint"] == str(out / "linprobe.pth")
    assert "output" not in knn and "headline_weights" not in knn and knn["precision"] == lin["precision"]
    scalars = tensorboard_scalars(out)
    assert scalars["epoch/top1"] == pytest.approx([lin["metrics"]["top1"]])
    assert scalars["epoch/knn_top1"] == pytest.approx([knn["metrics"]["top1"]])

    # The saved classifier is the probe: `maet eval` measures the same top-1 again.
    again = evaluate_checkpoint(EvalConfig(data_path=str(tiny_imagenet), checkpoint=str(out / "linprobe.pth"),
                                           num_workers=0, progress=False))
    assert again.metrics["top1"] == pytest.approx(lin["metrics"]["top1"]) and again.task == "linprobe"
    # k-NN of the record = the brute-force vote on the saved encoder's features.
    model, _ = build_classifier_from_checkpoint(out / "linprobe.pth")
    feats = {}
    for split in ("train", "val"):
        dataset = ImageFolderDataset(tiny_imagenet, split, build_eval_transform(TINY_IMG))
        feats[split] = [t.numpy() for t in extract(model, eval_loader(dataset, 8, 0, DistInfo()), torch.device("cpu"))]
    scores = brute_force_knn(feats["train"][0].astype(np.float64), feats["train"][1],
                             feats["val"][0].astype(np.float64), 6, 20, 0.07)
    assert knn["metrics"]["top1"] == pytest.approx(100.0 * np.mean(scores.argmax(1) == feats["val"][1]))


def test_maet_linprobe_refuses_a_feature_the_file_cannot_give(tmp_path, tiny_imagenet, capsys):
    save_global_pool_classifier(tmp_path / "sup.pth")
    cfg = tiny_linprobe_config(tiny_imagenet, tmp_path / "out", tmp_path / "sup.pth", probe="cached", feature="cls")
    assert cli_main(["linprobe", *cli_args(cfg), "--no-record"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maet linprobe: error: ") and "--feature avg" in err and "Traceback" not in err
