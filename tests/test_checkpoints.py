"""Checkpoint files: our format round-trips, official files load, pos-embeds resize, bad files fail clearly."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mae_core.checkpoints import build_mae_from_checkpoint, load_mae_weights, save_mae_checkpoint
from mae_core.ckpt_io import load_file, save_atomic
from mae_core.errors import ArchitectureMismatchError, CheckpointFormatError, MAETransferError
from mae_core.infer import infer_mae_kwargs, mae_state_dict
from mae_core.mae import MaskedAutoencoder
from mae_core.vit import resize_pos_embed, sincos_pos_embed_2d

TINY = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=64, depth=2, num_heads=4,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4, mlp_ratio=4.0)
DECODER_PREFIXES = ("decoder_", "mask_token")


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for t in model.state_dict().values():
        t.add_(scale * torch.randn(t.shape, generator=g))
    return model.eval()


def tiny(seed: int = 0, **kw) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    return perturb(MaskedAutoencoder(**{**TINY, **kw}), seed=seed + 1)


def images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(7))


def noise_for(n: int = 2, length: int = 16) -> torch.Tensor:
    return torch.rand(n, length, generator=torch.Generator().manual_seed(8))


def decoder_keys(model) -> set[str]:
    return {k for k in model.state_dict() if k.startswith(DECODER_PREFIXES)}


def encoder_sd(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if not k.startswith(DECODER_PREFIXES)}


def assert_same_outputs(a, b, imgs, noise):
    with torch.no_grad():
        for x, y in zip(a(imgs, noise=noise), b(imgs, noise=noise)):
            assert torch.equal(x, y)


# --------------------------------------------------------------------------- our format
@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_round_trip_identical_outputs(tmp_path, norm_pix_loss):
    model = tiny(norm_pix_loss=norm_pix_loss)
    kwargs = {**TINY, "norm_pix_loss": norm_pix_loss}
    meta = {"format": "mae-transfer/1", "arch": "mae_vit_tiny_patch16", "model_kwargs": kwargs,
            "img_size": 32, "patch_size": 8, "norm_pix_loss": norm_pix_loss, "epoch": 3, "run": {"run_id": "x"}}
    path = save_mae_checkpoint(tmp_path / "ckpt.pth", model, meta)
    assert Path(path) == tmp_path / "ckpt.pth"
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth"]  # no temp file left behind (hidden ones included)

    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"model", "meta"}
    assert raw["meta"] == meta
    assert set(raw["model"]) == set(model.state_dict())

    loaded, report = build_mae_from_checkpoint(path)
    assert report["missing"] == [] and report["unexpected"] == []
    assert report["meta"] == meta
    assert loaded.norm_pix_loss is norm_pix_loss
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert_same_outputs(model, loaded.eval(), images(), noise_for())


def test_save_atomic_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "sub" / "a.pth"
    save_atomic({"model": {"x": torch.zeros(3)}}, target)
    save_atomic({"model": {"x": torch.ones(3)}}, target)
    assert sorted(os.listdir(target.parent)) == ["a.pth"]
    assert torch.equal(load_file(target)["model"]["x"], torch.ones(3))


def test_save_atomic_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.pth"
    save_atomic({"model": {"x": torch.zeros(3)}}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_atomic({"model": {"x": torch.ones(3)}, "bad": Unpicklable()}, target)
    assert sorted(os.listdir(tmp_path)) == ["a.pth"]
    assert torch.equal(load_file(target)["model"]["x"], torch.zeros(3))


# --------------------------------------------------------------------------- official files
def test_official_encoder_only_file_loads_with_decoder_missing(tmp_path):
    source = tiny(seed=0)
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": encoder_sd(source)}, path)

    # into a model of the same shape: missing keys are exactly the decoder ones + mask_token
    model = MaskedAutoencoder(**TINY)
    report = load_mae_weights(model, mae_state_dict(load_file(path)))
    assert len(report["missing"]) == len(set(report["missing"]))
    assert set(report["missing"]) == decoder_keys(model)
    assert "mask_token" in report["missing"]
    assert report["unexpected"] == []
    for k, v in encoder_sd(source).items():
        assert torch.equal(model.state_dict()[k], v), k

    # built from the file alone: the encoder is read off the shapes, the decoder is all missing
    built, report = build_mae_from_checkpoint(path)
    assert set(report["missing"]) == decoder_keys(built)
    assert report["unexpected"] == []
    for k, v in encoder_sd(source).items():
        assert torch.equal(built.state_dict()[k], v), k


def test_official_full_file_loads_with_nothing_missing(tmp_path):
    source = tiny(seed=0)
    path = tmp_path / "mae_visualize_vit_tiny.pth"
    torch.save({"model": source.state_dict()}, path)  # the official `_full` / visualize layout, no meta

    model = MaskedAutoencoder(**TINY)
    report = load_mae_weights(model, mae_state_dict(load_file(path)))
    assert report == {"missing": [], "unexpected": []}

    # heads are invisible in a state dict: give them; all else (depths, widths, mlp, patch, size) is inferred
    built, report = build_mae_from_checkpoint(path, num_heads=4, decoder_num_heads=4)
    assert report["missing"] == [] and report["unexpected"] == []
    assert_same_outputs(source, built.eval(), images(), noise_for())


def test_infer_mae_kwargs_reads_shapes():
    kwargs = infer_mae_kwargs(tiny(depth=3, decoder_depth=2, mlp_ratio=2.0).state_dict())
    assert kwargs == dict(img_size=32, patch_size=8, in_chans=3, embed_dim=64, depth=3, mlp_ratio=2.0,
                          decoder_embed_dim=32, decoder_depth=2)


def test_deeper_checkpoint_reports_unexpected_blocks():
    report = load_mae_weights(MaskedAutoencoder(**TINY), tiny(depth=3).state_dict())
    assert report["missing"] == []
    assert set(report["unexpected"]) == {k for k in tiny(depth=3).state_dict() if k.startswith("blocks.2.")}


# --------------------------------------------------------------------------- position-embedding resize
def test_checkpoint_at_32px_loads_into_48px_model(tmp_path):
    source = tiny(seed=0)  # grid 4x4; perturbed, so the cls entries are non-zero
    path = save_mae_checkpoint(tmp_path / "c.pth", source, {"model_kwargs": {**TINY, "norm_pix_loss": False}})
    sd = source.state_dict()

    model, report = build_mae_from_checkpoint(path, img_size=48)  # grid 6x6
    assert report["missing"] == [] and report["unexpected"] == []
    for key, dim in (("pos_embed", 64), ("decoder_pos_embed", 32)):
        got = model.state_dict()[key]
        assert got.shape == (1, 1 + 36, dim)
        assert torch.equal(got[:, :1], sd[key][:, :1])  # cls entry kept apart, unchanged
        # official `interpolate_pos_embed`: bicubic on the (D, 4, 4) grid, align_corners=False
        old = sd[key][:, 1:].reshape(1, 4, 4, dim).permute(0, 3, 1, 2)
        new = F.interpolate(old, size=(6, 6), mode="bicubic", align_corners=False)
        torch.testing.assert_close(got[:, 1:], new.permute(0, 2, 3, 1).flatten(1, 2), atol=1e-6, rtol=0)
    for k, v in sd.items():  # every other tensor untouched
        if k not in ("pos_embed", "decoder_pos_embed"):
            assert torch.equal(model.state_dict()[k], v), k
    with torch.no_grad():
        loss, pred, mask = model.eval()(images(size=48), noise=noise_for(length=36))
    assert torch.isfinite(loss) and pred.shape == (2, 36, 192) and mask.shape == (2, 36)


def _sincos_at(dim: int, pos_h: np.ndarray, pos_w: np.ndarray) -> np.ndarray:
    """The 2-D sin-cos embedding at arbitrary (fractional) positions: first half w, second half h."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    gw, gh = np.meshgrid(pos_w, pos_h)
    return np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)


@pytest.mark.parametrize("old,new", [(14, (16, 16)), (16, (14, 14)), (14, (16, 12)), (8, (12, 12))])
def test_resized_sincos_table_is_the_sincos_of_the_stretched_grid(old, new):
    """Resizing a sin-cos table interpolates it: new cell j sits at old position (j + 0.5) * old/new - 0.5.

    (It is not the sin-cos table of the new integer grid: the grid is stretched over the same extent.)
    """
    dim = 64
    table = torch.from_numpy(sincos_pos_embed_2d(dim, old, cls_token=True)).float().unsqueeze(0)
    resized = resize_pos_embed(table, new)
    assert resized.shape == (1, 1 + new[0] * new[1], dim)
    assert torch.equal(resized[:, :1], table[:, :1])
    pos_h = (np.arange(new[0]) + 0.5) * old / new[0] - 0.5
    pos_w = (np.arange(new[1]) + 0.5) * old / new[1] - 0.5
    expected = _sincos_at(dim, pos_h, pos_w)
    err = np.abs(resized[0, 1:].numpy() - expected)
    assert err.max() < 0.15  # bicubic on the fastest channel (period 2*pi cells) is the worst case
    assert err.mean() < 0.01


def test_resize_is_identity_on_same_grid():
    table = torch.randn(1, 17, 8)
    assert resize_pos_embed(table, (4, 4)) is table


@pytest.mark.parametrize("old,new", [((4, 4), (7, 7)), ((14, 14), (8, 8)), ((4, 4), (3, 6))])
def test_resize_is_timms_resample_with_the_official_arguments(old, new):
    """timm's `resample_abs_pos_embed` computes it; the official `interpolate_pos_embed` (bicubic, no
    antialias, cls apart) is the reference, so downsizing differs from timm's antialiased default."""
    from timm.layers import resample_abs_pos_embed

    table = torch.randn(1, 1 + old[0] * old[1], 16, generator=torch.Generator().manual_seed(0))
    grid = table[:, 1:].reshape(1, *old, 16).permute(0, 3, 1, 2)  # the official code, written out
    official = F.interpolate(grid, size=new, mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
    ours = resize_pos_embed(table, new)
    assert torch.equal(ours, torch.cat([table[:, :1], official], dim=1))
    assert torch.equal(ours, resample_abs_pos_embed(table, list(new), list(old), antialias=False))
    if new[0] < old[0]:
        assert not torch.allclose(ours, resample_abs_pos_embed(table, list(new), list(old)), atol=1e-3)


# --------------------------------------------------------------------------- errors
def test_missing_file(tmp_path):
    with pytest.raises(CheckpointFormatError, match="does not exist"):
        load_file(tmp_path / "nope.pth")
    with pytest.raises(CheckpointFormatError):
        build_mae_from_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointFormatError):
        load_file(tmp_path)  # a folder is not a checkpoint either


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match="empty"):
        load_file(path)


def test_truncated_file(tmp_path):
    good = save_mae_checkpoint(tmp_path / "good.pth", tiny(), {"model_kwargs": dict(TINY)})
    data = good.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError) as e:
        build_mae_from_checkpoint(cut)
    msg = str(e.value)
    assert "cut.pth" in msg and "truncated" in msg
    assert "official MAE" in msg  # names the formats it knows


@pytest.mark.parametrize("content", [
    b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n",  # a failed download saved as .pth
    b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 343000000\n",  # a git-lfs pointer
    b"\x00" * 100,
    b"PK\x03\x04 not really a zip",
    b"these are not weights\n" * 10,
], ids=["html", "git-lfs-pointer", "zeros", "bad-zip", "plain-text"])
def test_not_a_checkpoint_at_all(tmp_path, content):
    path = tmp_path / "download.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointFormatError, match="download.pth"):
        load_file(path)


def test_non_dict_checkpoint(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointFormatError, match="not a dict"):
        load_file(path)


def _touch(path: str) -> dict:
    """What a malicious pickle would run on load; here it only creates a marker file."""
    Path(path).write_text("code ran")
    return {}


class SideEffect:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "torch.save-legacy", "pickle-protocol2", "pickle-protocol4"])
def test_pickled_code_is_refused_not_run(tmp_path, writer):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    payload = {"model": {"patch_embed.proj.weight": torch.zeros(4, 3, 8, 8)}, "extra": SideEffect(str(marker))}
    if writer == "torch.save":
        torch.save(payload, path)
    elif writer == "torch.save-legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=int(writer[-1]))

    # torch's weights-only unpickler stops protocol-4 pickles at the FRAME opcode, before any global:
    # refused all the same, but torch cannot tell us a global was the reason
    pattern = None if writer == "pickle-protocol4" else "weights_only"
    for load in (load_file, build_mae_from_checkpoint):
        with pytest.raises(CheckpointFormatError, match=pattern) as e:
            load(path)
        assert isinstance(e.value, MAETransferError)
        assert not marker.exists(), "unpickling ran the payload's code"

    # the payload is real: a permissive load would have run it
    copy = tmp_path / "copy.pth"
    shutil.copy(path, copy)
    if writer.startswith("torch.save"):
        torch.load(copy, weights_only=False)
    else:
        with open(copy, "rb") as f:
            pickle.load(f)
    assert marker.exists()


def test_dict_without_patch_embed(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}}, path)
    with pytest.raises(CheckpointFormatError) as e:
        build_mae_from_checkpoint(path)
    assert "patch_embed" in str(e.value) and "Known formats" in str(e.value)


def test_patch_embed_without_vit_blocks_is_a_format_error(tmp_path):
    path = tmp_path / "swin.pth"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(96, 3, 4, 4),
                          "layers.0.blocks.0.norm1.weight": torch.zeros(96)}}, path)
    with pytest.raises(CheckpointFormatError, match="Known formats"):
        build_mae_from_checkpoint(path)


def test_wider_checkpoint_into_narrower_model(tmp_path):
    wide = tiny(embed_dim=96, num_heads=4)
    with pytest.raises(ArchitectureMismatchError) as e:
        load_mae_weights(MaskedAutoencoder(**TINY), wide.state_dict(), source="wide.pth")
    msg = str(e.value)
    assert "width 96" in msg and "width 64" in msg  # both architectures named
    assert "wide.pth" in msg

    path = save_mae_checkpoint(tmp_path / "wide.pth", wide,
                               {"model_kwargs": {**TINY, "embed_dim": 96, "norm_pix_loss": False}})
    with pytest.raises(ArchitectureMismatchError, match="width 96.*width 64"):
        build_mae_from_checkpoint(path, embed_dim=64)


def test_other_patch_size_is_an_architecture_mismatch():
    p16 = tiny(patch_size=16)  # grid 2x2: its pos-embeds resize, but the patch projection cannot
    with pytest.raises(ArchitectureMismatchError) as e:
        load_mae_weights(MaskedAutoencoder(**TINY), p16.state_dict())
    assert "patch 16" in str(e.value) and "patch 8" in str(e.value)
