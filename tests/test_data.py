"""ImageNet-layout folders and the official MAE transforms: layout errors, label order, normalisation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms
from torchvision.datasets import ImageFolder

from mae_core.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ImageFolderDataset,
    build_eval_transform,
    build_pretrain_transform,
    denormalize,
)
from mae_core.errors import CorruptImageError, DatasetLayoutError, MAETransferError


def _img(path, size=(12, 10), colour=(200, 30, 40), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(path, format=fmt)
    return path


@pytest.fixture
def folder(tmp_path):
    """train/ with classes created out of order, mixed-case extensions and a non-image file."""
    root = tmp_path / "imnet"
    for cls in ["n02", "n01", "b_cls", "a_cls"]:
        _img(root / "train" / cls / "x2.JPEG", fmt="JPEG")
        _img(root / "train" / cls / "x1.jpg", fmt="JPEG")
    _img(root / "train" / "n01" / "y.PNG", fmt="PNG")
    _img(root / "train" / "n01" / "nested" / "z.png", fmt="PNG")  # torchvision walks sub-folders too
    _img(root / "train" / "n01" / "gray.png", mode="L", fmt="PNG")
    (root / "train" / "n01" / "notes.txt").write_text("not an image")
    return root


def test_classes_sorted_and_identical_to_torchvision(folder):
    ds = ImageFolderDataset(folder, "train")
    assert ds.classes == ["a_cls", "b_cls", "n01", "n02"]
    assert ds.class_to_idx == {"a_cls": 0, "b_cls": 1, "n01": 2, "n02": 3}
    ref = ImageFolder(str(folder / "train"))
    assert ds.classes == ref.classes
    assert ds.samples == ref.samples  # same files, same order, same labels
    assert ds.targets == ref.targets
    assert not any(p.endswith(".txt") for p, _ in ds.samples)
    assert len(ds) == 4 * 2 + 3 and ds.skipped == []


def test_hidden_folders_do_not_shift_labels(folder):
    _img(folder / "train" / ".ipynb_checkpoints" / "a.png", fmt="PNG")
    _img(folder / "train" / "n01" / "._x.JPEG", fmt="PNG")
    ds = ImageFolderDataset(folder, "train")
    assert ds.classes == ["a_cls", "b_cls", "n01", "n02"]
    assert not any("/." in p for p, _ in ds.samples)


def test_getitem_rgb_and_transform(folder):
    ds = ImageFolderDataset(folder, "train", transform=build_eval_transform(16))
    labels = set()
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        labels.add(y)
    assert labels == {0, 1, 2, 3}
    gray = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("gray.png")][0]
    img, _ = ImageFolderDataset(folder, "train")[gray]
    assert img.mode == "RGB"


def test_imagenets_odd_files_load_as_rgb(tmp_path):
    """ImageNet's train set holds grayscale JPEGs, CMYK JPEGs and a PNG named .JPEG (n02105855_2933.JPEG):
    each loads as a 3-channel RGB image through the official transforms, and none counts as corrupt."""
    root = tmp_path / "imnet" / "train" / "n01"
    _img(root / "gray.JPEG", colour=(90, 0, 0), mode="L", fmt="JPEG")
    Image.new("CMYK", (12, 10), (0, 200, 160, 30)).save(root / "cmyk.JPEG", format="JPEG", quality=100)
    _img(root / "png_named_jpeg.JPEG", colour=(10, 120, 250), fmt="PNG")
    with Image.open(root / "cmyk.JPEG") as im, Image.open(root / "png_named_jpeg.JPEG") as png:
        assert im.mode == "CMYK" and png.format == "PNG"
        cmyk_as_rgb = np.asarray(im.convert("RGB"))[5, 6]
    ds = ImageFolderDataset(tmp_path / "imnet", "train", skip_corrupt=True)
    assert ds.skipped == [] and len(ds) == 3
    pixels = {}
    for i, (path, _) in enumerate(ds.samples):
        img, _ = ds[i]
        assert img.mode == "RGB" and img.size == (12, 10)
        pixels[path.rsplit("/", 1)[1]] = np.asarray(img)[5, 6].astype(int)
    assert pixels["png_named_jpeg.JPEG"].tolist() == [10, 120, 250]  # lossless: exact
    assert np.abs(pixels["gray.JPEG"] - 90).max() <= 2  # gray replicated to three channels
    assert pixels["cmyk.JPEG"].tolist() == cmyk_as_rgb.tolist() and pixels["cmyk.JPEG"][0] > 150
    ds = ImageFolderDataset(tmp_path / "imnet", "train", transform=build_eval_transform(16))
    assert all(ds[i][0].shape == (3, 16, 16) for i in range(len(ds)))


def test_missing_root(tmp_path):
    with pytest.raises(DatasetLayoutError) as e:
        ImageFolderDataset(tmp_path / "nope")
    msg = str(e.value)
    assert str(tmp_path / "nope") in msg and "does not exist" in msg and "train/" in msg


def test_missing_split_lists_what_is_there(folder):
    with pytest.raises(DatasetLayoutError) as e:
        ImageFolderDataset(folder, "val")
    msg = str(e.value)
    assert str(folder / "val") in msg
    assert "train/" in msg  # what IS in the root
    assert ".JPEG" in msg  # the expected layout


def test_no_class_folders(tmp_path):
    _img(tmp_path / "r" / "val" / "ILSVRC2012_val_00000001.JPEG", fmt="JPEG")  # flat val tarball
    with pytest.raises(DatasetLayoutError) as e:
        ImageFolderDataset(tmp_path / "r", "val")
    msg = str(e.value)
    assert "no class sub-folders" in msg and str(tmp_path / "r" / "val") in msg
    assert "ILSVRC2012_val_00000001.JPEG" in msg


def test_no_images_in_any_class(tmp_path):
    for c in ["a", "b"]:
        (tmp_path / "r" / "train" / c).mkdir(parents=True)
    (tmp_path / "r" / "train" / "a" / "readme.txt").write_text("x")
    with pytest.raises(DatasetLayoutError) as e:
        ImageFolderDataset(tmp_path / "r")
    msg = str(e.value)
    assert "no image files" in msg and str(tmp_path / "r" / "train") in msg and "readme.txt" in msg


def test_empty_class_kept_with_warning(folder, caplog):
    (folder / "train" / "c_empty").mkdir()
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderDataset(folder)
    assert ds.class_to_idx["c_empty"] == 2 and ds.class_to_idx["n01"] == 3
    assert "c_empty" in caplog.text


def test_split_none_and_custom_extensions(folder):
    ds = ImageFolderDataset(folder / "train", split=None, extensions=["png"])
    assert len(ds) == 3 and all(p.lower().endswith(".png") for p, _ in ds.samples)


def test_corrupt_file_error_names_file(folder):
    bad = folder / "train" / "n02" / "x0_bad.JPEG"
    bad.write_bytes(b"definitely not a jpeg")
    ds = ImageFolderDataset(folder)
    idx = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(CorruptImageError) as e:
        ds[idx]
    assert str(bad) in str(e.value)
    assert isinstance(e.value.__cause__, UnidentifiedImageError)
    assert isinstance(e.value, MAETransferError)


def test_truncated_jpeg_raises_on_load(folder):
    good = _img(folder / "train" / "n02" / "big.JPEG", size=(64, 64), fmt="JPEG")
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    ds = ImageFolderDataset(folder)
    with pytest.raises(CorruptImageError, match="big.JPEG"):
        ds[[p for p, _ in ds.samples].index(str(good))]


def test_skip_corrupt(folder, caplog):
    bad = [folder / "train" / "n02" / "bad1.JPEG", folder / "train" / "a_cls" / "bad2.png"]
    for b in bad:
        b.write_bytes(b"\x89PNG garbage")
    n_good = len(ImageFolderDataset(folder)) - 2
    truncated = folder / "train" / "n02" / "cut.JPEG"  # a textured JPEG cut mid-stream: its headers verify
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(truncated, format="JPEG")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size * 3 // 4])
    padded = _img(folder / "train" / "n02" / "padded.JPEG", size=(64, 64), fmt="JPEG")  # bytes after the end
    padded.write_bytes(padded.read_bytes() + b"\x00" * 16)
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderDataset(folder, skip_corrupt=True)
    assert len(ds) == n_good + 1  # the padded JPEG is kept
    assert sorted(ds.skipped) == sorted(str(b) for b in [*bad, truncated])
    assert "skipped 3 " in caplog.text
    for i in range(len(ds)):
        ds[i]  # everything left loads


def test_skip_corrupt_nothing_left(tmp_path):
    (tmp_path / "r" / "train" / "a").mkdir(parents=True)
    (tmp_path / "r" / "train" / "a" / "x.JPEG").write_bytes(b"junk")
    with pytest.raises(DatasetLayoutError, match="unreadable"):
        ImageFolderDataset(tmp_path / "r", skip_corrupt=True)


# --- transforms ---------------------------------------------------------------------------------


def test_pretrain_transform_is_the_official_one():
    t = build_pretrain_transform(224).transforms
    assert [type(x) for x in t] == [
        transforms.RandomResizedCrop,
        transforms.RandomHorizontalFlip,
        transforms.ToTensor,
        transforms.Normalize,
    ]
    assert t[0].size == (224, 224) and t[0].scale == (0.2, 1.0)
    assert t[0].interpolation == transforms.InterpolationMode.BICUBIC
    assert tuple(t[3].mean) == IMAGENET_DEFAULT_MEAN and tuple(t[3].std) == IMAGENET_DEFAULT_STD
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8))
    assert build_pretrain_transform(32)(img).shape == (3, 32, 32)


def test_eval_transform_resize_then_center_crop():
    t = build_eval_transform(224).transforms
    assert t[0].size == 256 and t[0].interpolation == transforms.InterpolationMode.BICUBIC
    assert t[1].size == (224, 224)
    # A 64x128 image: shorter side -> int(32 / 0.875) = 36, crop 32.
    arr = np.zeros((64, 128, 3), np.uint8)
    arr[:, 64:] = 255  # right half white: the centre crop straddles the edge
    x = build_eval_transform(32)(Image.fromarray(arr))
    assert x.shape == (3, 32, 32)
    img = denormalize(x)
    assert img[:, :, :10].max() < 0.05 and img[:, :, -10:].min() > 0.95


def test_normalisation_statistics_and_denormalize_inverts():
    mean_colour = tuple(round(m * 255) for m in IMAGENET_DEFAULT_MEAN)
    x = build_eval_transform(16)(Image.new("RGB", (20, 20), mean_colour))
    assert x.abs().max() < 0.02  # the mean colour maps to ~0
    white = build_eval_transform(16)(Image.new("RGB", (20, 20), (255, 255, 255)))
    expect = (1 - torch.tensor(IMAGENET_DEFAULT_MEAN)) / torch.tensor(IMAGENET_DEFAULT_STD)
    torch.testing.assert_close(white[:, 0, 0], expect)
    norm = transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    raw = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(denormalize(norm(raw)), raw)
    torch.testing.assert_close(denormalize(norm(raw[0])), raw[0])
    with pytest.raises(ValueError):
        denormalize(torch.rand(8, 8))
