"""A decoder's target (raw or norm-pix pixels) survives conversion; files without a decoder draw nothing.

The official full files record no `norm_pix_loss`: the user states it, or a published file name
decides, else the command refuses. The reference for "the official loss" is the port of the
official forward in tests/test_mae.py.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.cli import main
from mae_core.checkpoints import build_mae_from_checkpoint
from mae_core.errors import LossTargetError
from mae_core.export import save_ours
from mae_core.formats import sniff
from tests.test_checkpoint_formats import encoder_only, imgs, mae, transformers
from tests.test_mae import official_forward

ATOL = 1e-5


def _official_loss(model, x, noise, norm_pix_loss):
    return official_forward(model, x, 0.75, noise, norm_pix_loss, num_heads=2, decoder_num_heads=2, p=8)[0]


@pytest.fixture
def norm_pix_full(tmp_path):
    """A norm-pix MAE saved as the official full files are: {'model': ...} with the decoder, nothing recorded."""
    source = mae(norm_pix_loss=True)
    path = tmp_path / "weights.pth"
    torch.save({"model": source.state_dict()}, path)
    return source, path


def test_norm_pix_full_to_hf_with_the_target_stated_gives_the_official_loss(norm_pix_full, tmp_path, capsys):
    source, path = norm_pix_full
    assert main(["convert", str(path), "--to", "hf", "--out", str(tmp_path / "hf"), "--norm-pix-loss"]) == 0
    assert "norm_pix_loss=True, as stated" in capsys.readouterr().out
    hf = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert hf.config.norm_pix_loss
    x = 0.3 * imgs() + 0.5  # patch statistics far from 0 / 1, so the two targets differ
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        theirs = hf(pixel_values=x, noise=noise).loss
    official = _official_loss(source, x, noise, norm_pix_loss=True)
    torch.testing.assert_close(theirs, official, atol=ATOL, rtol=0)
    assert (theirs - _official_loss(source, x, noise, norm_pix_loss=False)).abs() > 1e-2  # raw pixels: another loss


def test_unstated_target_is_refused_where_it_matters(norm_pix_full, tmp_path, capsys):
    _, path = norm_pix_full
    for to, out in (("hf", tmp_path / "hf"), ("ours", tmp_path / "ours.pth")):
        assert main(["convert", str(path), "--to", to, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"maet convert: error: {path}" in err and "norm_pix_loss" in err and "Traceback" not in err
        assert "--norm-pix-loss" in err and "--no-norm-pix-loss" in err and not out.exists()
    with pytest.raises(LossTargetError, match="does not record"):
        build_mae_from_checkpoint(path)
    # the encoder alone does not depend on it
    assert main(["convert", str(path), "--to", "timm", "--out", str(tmp_path / "t.safetensors")]) == 0


@pytest.mark.parametrize("name,expected", [("mae_pretrain_vit_tiny_full.pth", True),
                                           ("mae_visualize_vit_tiny.pth", False),
                                           ("mae_visualize_vit_tiny_ganloss.pth", False)])
def test_published_file_names_decide_with_a_note(tmp_path, capsys, name, expected):
    source = mae(norm_pix_loss=expected)
    torch.save({"model": source.state_dict()}, tmp_path / name)
    info = sniff(tmp_path / name)
    assert info.arch["norm_pix_loss"] is expected and info.arch["norm_pix_loss_from"] == "file name"
    assert any(n.startswith(f"norm_pix_loss is not recorded: {expected}, by the file's name") for n in info.notes)
    model, _ = build_mae_from_checkpoint(tmp_path / name)
    x, noise = imgs(), torch.rand(2, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(x, noise=noise).loss, _official_loss(source, x, noise, expected),
                                   atol=ATOL, rtol=0)
    # the user's statement wins over the name, and says so
    flag = "--no-norm-pix-loss" if expected else "--norm-pix-loss"
    assert main(["convert", str(tmp_path / name), "--to", "ours", "--out", str(tmp_path / "o.pth"), flag]) == 0
    assert "as stated (the file's name said otherwise)" in capsys.readouterr().out
    assert sniff(tmp_path / "o.pth").arch["norm_pix_loss"] is (not expected)


def test_a_recorded_target_is_kept_and_not_contradicted(tmp_path, capsys):
    save_ours(mae(norm_pix_loss=True), tmp_path / "ours.pth")
    assert main(["convert", str(tmp_path / "ours.pth"), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert transformers.ViTMAEConfig.from_pretrained(tmp_path / "hf").norm_pix_loss
    assert main(["convert", str(tmp_path / "ours.pth"), "--to", "hf", "--out", str(tmp_path / "hf2"),
                 "--no-norm-pix-loss"]) == 2
    assert "records norm_pix_loss=True, and --no-norm-pix-loss contradicts it" in capsys.readouterr().err


def test_official_training_checkpoint_records_its_target_in_args(tmp_path):
    torch.save({"model": mae().state_dict(), "epoch": 3, "args": argparse.Namespace(norm_pix_loss=True)},
               tmp_path / "checkpoint-3.pth")
    info = sniff(tmp_path / "checkpoint-3.pth")
    assert info.arch["norm_pix_loss"] is True and info.arch["norm_pix_loss_from"] == "recorded"


# ----------------------------------------------------------------------------- maet visualize
@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_visualize_refuses_a_file_without_a_decoder(tmp_path, image_folder, capsys):
    path = tmp_path / "mae_pretrain_vit_tiny.pth"  # the official encoder-only layout
    torch.save({"model": encoder_only(mae().state_dict())}, path)
    out = tmp_path / "grid.png"
    assert main(["visualize", "--checkpoint", str(path), "--images", str(image_folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"maet visualize: error: {path} holds no decoder") and "Traceback" not in err
    for holder in ("mae_visualize_vit_*.pth", "mae_pretrain_vit_*_full.pth", "mae_pretrain.pth"):
        assert holder in err
    assert not out.exists()


def test_visualize_a_full_file_with_its_target(norm_pix_full, tmp_path, image_folder, capsys):
    _, path = norm_pix_full
    out = tmp_path / "grid.png"
    args = ["visualize", "--checkpoint", str(path), "--images", str(image_folder), "--out", str(out)]
    assert main(args) == 2 and "--norm-pix-loss" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--norm-pix-loss"]) == 0
    assert "norm-pix model: it predicts each removed patch normalised" in capsys.readouterr().out
    assert Image.open(out).size[0] > 0
