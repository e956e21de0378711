"""`maet` turns user errors into one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks.cli import main
from mae_core.checkpoints import save_mae_checkpoint
from mae_core.mae import create_mae


def test_missing_data_folder_is_a_clear_error(tmp_path, capsys):
    code = main(["pretrain", "--data-path", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "maet pretrain: error:" in err and "nope" in err and "Traceback" not in err


def test_empty_data_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    assert main(["pretrain", "--data-path", str(tmp_path), "--output-dir", str(tmp_path / "out")]) == 2
    assert "train" in capsys.readouterr().err


def test_unreadable_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not a checkpoint at all")
    assert main(["visualize", "--checkpoint", str(bad), "--images", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "model.pth" in err and "Known formats" in err


def test_make_data_then_visualize_writes_a_grid(tmp_path):
    assert main(["make-data", "synthetic", "--out", str(tmp_path / "d"), "--num-train", "12", "--num-val", "6",
                 "--img-size", "32"]) == 0
    model = create_mae("mae_vit_tiny_patch16", img_size=32, patch_size=8, depth=1, decoder_depth=1)
    save_mae_checkpoint(tmp_path / "m.pth", model, {"arch": "mae_vit_tiny_patch16", "model_kwargs": {
        "img_size": 32, "patch_size": 8, "embed_dim": 192, "depth": 1, "num_heads": 3, "decoder_embed_dim": 128,
        "decoder_depth": 1, "decoder_num_heads": 4, "mlp_ratio": 4.0, "norm_pix_loss": False}})
    out = tmp_path / "grid.png"
    assert main(["visualize", "--checkpoint", str(tmp_path / "m.pth"), "--images",
                 str(tmp_path / "d" / "imagenet" / "val"), "--out", str(out), "--num-images", "3"]) == 0
    assert out.stat().st_size > 0


def test_maet_console_script_is_installed():
    """The `maet` entry point the package declares, resolved from the installed metadata and run as a script."""
    from importlib.metadata import entry_points

    (ep,) = entry_points(group="console_scripts", name="maet")
    assert ep.value == "benchmarks.cli:main"
    script = Path(sys.executable).parent / "maet"  # where pip put the wrapper, next to this interpreter
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "pretrain" in result.stdout and "make-data" in result.stdout
