"""`maet detect` end to end on CPU: train + evaluate + record, eval-only, exact resume of a killed run, 2 gloo
processes through detectron2's `launch`. A tiny ViT (width 64, depth 2) on 64-px synthetic COCO, a few iterations."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import time

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from timm.layers import resample_patch_embed  # noqa: E402

from mae_core.ckpt_io import sha256_file  # noqa: E402
from mae_core.data import write_synthetic  # noqa: E402
from tests.helpers import maet, one_thread_env, tensorboard_scalars  # noqa: E402
from tests.test_detection_weights import TEST_ARCH, p14_encoder_file, tiny_mae_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow
ITERS = 6
# keep every detection, so that even a 6-iteration model's predictions are many and compared one by one
EVAL = ["model.roi_heads.box_predictor.test_score_thresh=0.0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("det_train")
    write_synthetic(root, seed=0, num_train=12, num_val=6, img_size=64, layouts=("coco",))
    return root, root / "coco", tiny_mae_checkpoint(root / "mae.pth")


def _train(setup, out, *extra, check=True):
    root, coco, init = setup
    cmd = _train_command(setup, out, *extra)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=one_thread_env(), timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _train_command(setup, out, *extra):
    root, coco, init = setup
    return maet("detect", "train", "--data-path", str(coco), "--init", str(init), "--output-dir", str(out),
                "--max-iters", str(ITERS), "--results-dir", str(root / "records"), "--seed", "0", *extra,
                "--cfg-options", *TEST_ARCH, *EVAL, "train.checkpointer.period=2")


def _predictions(out):
    preds = json.loads((out / "inference" / "coco_instances_results.json").read_text())
    assert len(preds) > 20
    return [(p["image_id"], p["category_id"], [round(v, 3) for v in p["bbox"]], round(p["score"], 4)) for p in preds]


def _records(setup):
    path = setup[0] / "records" / "detection.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def uninterrupted(setup):
    out = setup[0] / "run_a"
    _train(setup, out)
    return out


def test_train_writes_checkpoints_metrics_and_a_record(setup, uninterrupted):
    out = uninterrupted
    assert (out / "model_final.pth").is_file() and (out / "metrics.json").is_file()
    scalars = tensorboard_scalars(out)  # detectron2's TensorboardXWriter, beside its metrics.json
    steps = [r for r in map(json.loads, (out / "metrics.json").read_text().splitlines()) if "total_loss" in r]
    assert len(scalars["total_loss"]) == len(steps) >= 1 and "lr" in scalars and "bbox/AP" in scalars
    report = json.loads((out / "init_report.json").read_text())
    assert report["loaded"] and "cls_token" in report["unused"] and "norm.weight" in report["unused"]
    assert any(".rel_pos_h" in k for k in report["new"])
    rec = [r for r in _records(setup) if r["mode"] == "train" and r["output"]["dir"] == str(out)][-1]
    assert rec["task"] == "detection" and rec["init"] == "mae.pth" and rec["iteration"] == ITERS
    assert rec["checkpoint_sha256"] == sha256_file(setup[2])
    for task in ("bbox", "segm"):
        stats = set(rec["metrics"][task]) | {d.split(".", 1)[1] for d in rec["dropped_metrics"] if d.startswith(task)}
        assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"} <= stats
        assert rec["metrics"][f"{task}_AP"] == rec["metrics"][task]["AP"]


def test_eval_only_reproduces_the_final_evaluation(setup, uninterrupted, tmp_path):
    root, coco, _ = setup
    weights = uninterrupted / "model_final.pth"
    # the same model as a detectron2 model-zoo style .pkl of numpy arrays
    sd = torch.load(weights, weights_only=True)["model"]
    pkl = tmp_path / "model_final.pkl"
    pkl.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "test"}))
    train_rec = [r for r in _records(setup) if r["output"]["dir"] == str(uninterrupted)][-1]
    for w in (weights, pkl):
        cmd = maet("detect", "eval", "--data-path", str(coco), "--checkpoint", str(w), "--output-dir",
                   str(tmp_path / w.suffix[1:]), "--results-dir", str(root / "records"), "--cfg-options", *TEST_ARCH,
                   *EVAL)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=one_thread_env(), timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rec = _records(setup)[-1]
        assert rec["mode"] == "eval" and rec["checkpoint_sha256"] == sha256_file(w)
        assert rec["metrics"] == train_rec["metrics"]
        # the same predictions, box by box: the model file (pos-embed grid included) was rebuilt exactly
        assert _predictions(tmp_path / w.suffix[1:]) == _predictions(uninterrupted)


def test_eval_refuses_a_model_file_of_another_shape(setup, uninterrupted, tmp_path):
    cmd = maet("detect", "eval", "--data-path", str(setup[1]), "--checkpoint", str(uninterrupted / "model_final.pth"),
               "--output-dir", str(tmp_path), "--no-record")  # the tiny protocol's width 192, not the run's 64
    proc = subprocess.run(cmd, capture_output=True, text=True, env=one_thread_env(), timeout=300)
    assert proc.returncode == 2 and "does not fit the config's model" in proc.stderr, proc.stderr[-2000:]


def test_killed_run_resumes_exactly(setup, uninterrupted):
    """SIGKILL from outside as soon as the first periodic checkpoint is on disk (the run goes on to 6 iterations
    and a final evaluation, so it is still running), then the same command again."""
    out = setup[0] / "run_b"
    proc = subprocess.Popen(_train_command(setup, out, "--no-record"), env=one_thread_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (out / "last_checkpoint").is_file():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "model_final.pth").exists()
    assert (out / "last_checkpoint").read_text().strip() in ("model_0000001.pth", "model_0000003.pth")
    proc = _train(setup, out, "--no-record")  # --resume is the default
    assert "resuming from" in proc.stdout + proc.stderr
    a = torch.load(uninterrupted / "model_final.pth", weights_only=True)["model"]
    b = torch.load(out / "model_final.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


@pytest.fixture(scope="module")
def ddp_uninterrupted(setup):
    out = setup[0] / "run_ddp"
    before = len(_records(setup))
    _train(setup, out, "--num-processes", "2", "--device", "cpu")
    return out, _records(setup)[before:]


def test_two_gloo_processes(ddp_uninterrupted):
    out, new = ddp_uninterrupted
    assert (out / "model_final.pth").is_file()
    assert len(new) == 1 and new[0]["world_size"] == 2  # only rank 0 writes
    log = (out / "log.txt").read_text()
    assert "World size: 2" in log


def test_killed_two_process_run_resumes_exactly(setup, ddp_uninterrupted):
    """The launcher and both workers SIGKILLed together (as a scheduler ends a job) at the first checkpoint:
    the resumed run restores each rank's generators, not only rank 0's, and ends with the same weights."""
    out = setup[0] / "run_ddp_b"
    cmd = _train_command(setup, out, "--no-record", "--num-processes", "2", "--device", "cpu")
    proc = subprocess.Popen(cmd, env=one_thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (out / "last_checkpoint").is_file():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "model_final.pth").exists()
    proc = _train(setup, out, "--no-record", "--num-processes", "2", "--device", "cpu")
    assert "resuming from" in proc.stdout + proc.stderr
    a = torch.load(ddp_uninterrupted[0] / "model_final.pth", weights_only=True)["model"]
    b = torch.load(out / "model_final.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_p14_init_is_converted_on_the_way_in_and_trains(setup, tmp_path):
    """`--init` of another patch size (the ViT-H MAE's 14 for ViTDet-H's 16): resampled, noted, trained."""
    root, coco, _ = setup
    init, out = p14_encoder_file(tmp_path / "mae_pretrain_p14.pth"), tmp_path / "run"
    cmd = maet("detect", "train", "--data-path", str(coco), "--init", str(init), "--output-dir", str(out),
               "--max-iters", "2", "--no-record", "--seed", "0", "--cfg-options", *TEST_ARCH)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=one_thread_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "init_report.json").read_text())
    assert report["loaded"] and "is patch 14, the backbone patch 8: resampled" in report["notes"][0]
    steps = [r for r in map(json.loads, (out / "metrics.json").read_text().splitlines()) if "total_loss" in r]
    assert steps[-1]["iteration"] == 1 and all(torch.isfinite(torch.tensor(r["total_loss"])) for r in steps)
    start = resample_patch_embed(torch.load(init, weights_only=True)["model"]["patch_embed.proj.weight"], [8, 8])
    final = torch.load(out / "model_final.pth", weights_only=True)["model"]["backbone.net.patch_embed.proj.weight"]
    assert final.shape == start.shape and not torch.equal(final, start)  # the resampled kernel was trained
    torch.testing.assert_close(final, start, atol=0.05, rtol=0)  # from where it started, two steps away
