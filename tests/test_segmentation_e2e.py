"""`maet segment` end to end, in subprocesses as a user runs it: train, eval, exact resume, torchrun (gloo)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("mmseg")

from mae_core.checkpoints import save_mae_checkpoint  # noqa: E402
from mae_core.data import write_synthetic  # noqa: E402
from mae_core.mae import create_mae  # noqa: E402

from .helpers import free_port, kill_process_tree, maet, one_thread_env, tensorboard_scalars  # noqa: E402

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, decoder_embed_dim=32, decoder_depth=1,
             decoder_num_heads=4)
# The tiny protocol at test size: the small MAE above as backbone (train: 2 images a step; --cfg-options last).
SMALL_OPTS = ["--config", "tiny", "--cfg-options", "model.backbone.embed_dims=64",
              "model.backbone.num_layers=4", "model.backbone.num_heads=4", "model.backbone.out_indices=[0,1,2,3]",
              "model.neck.embed_dim=64", "model.decode_head.in_channels=[64,64,64,64]",
              "model.auxiliary_head.in_channels=64", "optim_wrapper.paramwise_cfg.num_layers=4"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg_e2e")
    write_synthetic(root, seed=0, num_train=8, num_val=8, img_size=32, layouts=("ade20k",))
    torch.manual_seed(0)
    ckpt = save_mae_checkpoint(root / "mae.pth", create_mae("mae_vit_tiny_patch16", **SMALL),
                               {"model_kwargs": SMALL})
    return root, root / "ade20k", ckpt


def run(*args, check=True):
    proc = subprocess.run(maet(*args), capture_output=True, text=True, env=one_thread_env(), timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-4000:])
    return proc


def records(path):
    return [json.loads(line) for line in (path / "segmentation.jsonl").read_text().splitlines()]


def state(path):
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_train_from_init_then_eval_writes_records(setup, tmp_path):
    """lr 0: the trained backbone is exactly the converted --init (every tensor went through mmengine)."""
    root, data, ckpt = setup
    work, rec = tmp_path / "work", tmp_path / "records"
    run("segment", "train", "--data-root", str(data), "--init", str(ckpt), "--work-dir", str(work), "--max-iters", "2",
        "--batch-size", "2", "--results-dir", str(rec), *SMALL_OPTS, "optim_wrapper.optimizer.lr=0.0",
        "default_hooks.logger.interval=1")
    scalars = tensorboard_scalars(work)  # mmengine's TensorboardVisBackend, from the config's visualizer
    assert len(scalars["loss"]) == 2 and "lr" in scalars and "mIoU" in scalars
    init = state(work / "init_weights.pth")
    trained = state(work / "segmentor.pth")
    assert len(init) == 4 * 12 + 4  # 12 tensors a block + cls token, pos embed, patch projection w/b
    for key, value in init.items():
        assert torch.equal(trained[key], value), key
    report = json.loads((work / "init_report.json").read_text())
    assert "norm.weight" in report["unused"] and report["resized"]  # 32-px checkpoint, 64-px crops

    out = run("segment", "eval", "--data-root", str(data), "--checkpoint", str(work / "segmentor.pth"),
              "--results-dir", str(rec), *SMALL_OPTS)
    train_rec, eval_rec = records(rec)
    assert (train_rec["task"], train_rec["init"], train_rec["config"]["init"]) == \
        ("segmentation", "mae.pth", str(ckpt))
    assert train_rec["mode"] == "train" and eval_rec["mode"] == "eval"
    assert set(eval_rec["metrics"]) == {"mIoU", "mAcc", "aAcc"}
    assert eval_rec["metrics"] == train_rec["metrics"]  # the same weights, the same val split
    assert f"mIoU {eval_rec['metrics']['mIoU']:.2f}" in out.stdout


def resume_args(data, ckpt) -> list[str]:
    """8 iterations, evaluated and checkpointed every 4 (--val-interval sets both, as in real runs)."""
    return ["segment", "train", "--data-root", str(data), "--init", str(ckpt), "--max-iters", "8", "--no-record",
            "--batch-size", "2", "--val-interval", "4", *SMALL_OPTS]


def kill_after_first_checkpoint(cmd: list[str], work) -> None:
    """Run `cmd` (maet or torchrun) and SIGKILL it, workers included, once it has written its first checkpoint."""
    proc = subprocess.Popen(cmd, env=one_thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (work / "last_checkpoint").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    kill_process_tree(proc.pid)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    time.sleep(1)  # nothing is left to write another checkpoint
    assert (work / "last_checkpoint").read_text().strip().endswith("iter_4.pth")
    assert not (work / "iter_8.pth").exists() and not (work / "segmentor.pth").exists()


def assert_same_weights(a, b):
    a, b = state(a / "segmentor.pth"), state(b / "segmentor.pth")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


@pytest.mark.slow
def test_killed_run_resumes_exactly(setup, tmp_path):
    """Killed right after the checkpoint at iteration 4, where it also evaluated."""
    root, data, ckpt = setup
    args = resume_args(data, ckpt)
    run(*args, "--work-dir", str(tmp_path / "a"))

    work = tmp_path / "b"
    kill_after_first_checkpoint(maet(*args, "--work-dir", str(work)), work)
    out = run(*args, "--work-dir", str(work), "--resume")
    assert "resuming from" in out.stdout + out.stderr
    assert_same_weights(tmp_path / "a", work)


@pytest.mark.slow
def test_killed_two_process_run_resumes_exactly_on_every_rank(setup, tmp_path):
    """2 gloo processes, each drawing its own drop path and augmentations: after a SIGKILL of the launcher and
    both workers and a resume, the weights equal the uninterrupted run's, so both ranks continued exactly."""
    root, data, ckpt = setup
    args = resume_args(data, ckpt)

    def torchrun(work, *extra):
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(free_port()), "-m", "benchmarks.cli", *args, "--work-dir", str(work), *extra]

    full = subprocess.run(torchrun(tmp_path / "a"), capture_output=True, text=True, env=one_thread_env(), timeout=300)
    assert full.returncode == 0, full.stderr[-4000:]
    work = tmp_path / "b"
    kill_after_first_checkpoint(torchrun(work), work)
    resumed = subprocess.run(torchrun(work, "--resume"), capture_output=True, text=True, env=one_thread_env(),
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert_same_weights(tmp_path / "a", work)


@pytest.mark.slow
def test_torchrun_two_gloo_processes(setup, tmp_path):
    root, data, ckpt = setup
    rec = tmp_path / "records"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "benchmarks.cli", "segment", "train", "--data-root", str(data), "--init", str(ckpt),
           "--work-dir", str(tmp_path / "w"), "--max-iters", "3", "--batch-size", "2", "--results-dir", str(rec),
           *SMALL_OPTS]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=one_thread_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (record,) = records(rec)  # rank 0 only
    assert record["world_size"] == 2 and record["config"]["batch_size_per_process"] == 2
    assert (tmp_path / "w" / "segmentor.pth").exists()


def test_bad_data_root_is_a_clear_cli_error(tmp_path):
    (tmp_path / "images").mkdir()
    proc = run("segment", "train", "--data-root", str(tmp_path), "--no-record", check=False)
    assert proc.returncode == 2
    assert "not in ADE20K's layout" in proc.stderr and "Traceback" not in proc.stderr


def test_maet_help_does_not_import_mmseg():
    code = ("import sys; from benchmarks.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('mmseg', 'mmengine', 'mmcv') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=one_thread_env(),
                         timeout=120)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]
