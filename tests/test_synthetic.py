"""Synthetic scenes: determinism, and agreement of the ImageNet, COCO and ADE20K layouts with each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mae_core.data import SHAPE_CLASSES, ImageFolderDataset, ade20k_class_names, iter_scenes, write_synthetic

KW = dict(num_train=30, num_val=12, img_size=48)
ADE = "ade20k/ADEChallengeData2016"
SPLITS = {"train": ("train2017", "training", "ADE_train"), "val": ("val2017", "validation", "ADE_val")}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    return out, write_synthetic(out, seed=3, **KW)


def _ade(out: Path, split: str, image_id: int) -> np.ndarray:
    _, ade_split, prefix = SPLITS[split]
    lab = Image.open(out / ADE / "annotations" / ade_split / f"{prefix}_{image_id:08d}.png")
    assert lab.mode == "L"
    return np.asarray(lab)


def test_layout_and_summary(syn):
    out, s = syn
    assert s["classes"] == list(SHAPE_CLASSES)
    assert s["imagenet"]["classes"] == sorted(SHAPE_CLASSES)
    assert s["ade20k"]["classes"] == ["background", *SHAPE_CLASSES]
    for split, n in (("train", KW["num_train"]), ("val", KW["num_val"])):
        coco_split, ade_split, prefix = SPLITS[split]
        assert len(list((out / "imagenet" / split).glob("*/*.JPEG"))) == n
        assert len(list((out / "coco" / coco_split).glob("*.jpg"))) == n
        assert (out / "coco" / "annotations" / f"instances_{coco_split}.json").is_file()
        assert len(list((out / ADE / "images" / ade_split).glob(f"{prefix}_*.jpg"))) == n
        assert len(list((out / ADE / "annotations" / ade_split).glob(f"{prefix}_*.png"))) == n
        img = out / "coco" / coco_split / f"{1:012d}.jpg"
        assert Image.open(img).format == "JPEG" and Image.open(img).size == (48, 48)
        # One scene, one encoding: the three layouts hold the same JPEG bytes.
        assert img.read_bytes() == (out / ADE / "images" / ade_split / f"{prefix}_00000001.jpg").read_bytes()
        (imnet,) = (out / "imagenet" / split).glob(f"*/{split}_00000001.JPEG")
        assert imnet.read_bytes() == img.read_bytes()


def test_deterministic_per_seed(syn, tmp_path):
    out, _ = syn
    write_synthetic(tmp_path / "same", seed=3, **KW)
    assert _files(tmp_path / "same") == _files(out)
    write_synthetic(tmp_path / "other", seed=4, **KW)
    a, b = _files(out), _files(tmp_path / "other")
    key = "coco/annotations/instances_train2017.json"
    assert a[key] != b[key]
    assert a["coco/train2017/000000000001.jpg"] != b["coco/train2017/000000000001.jpg"]


def test_every_imagenet_class_in_both_splits_and_loadable(syn):
    out, s = syn
    for split in ("train", "val"):
        ds = ImageFolderDataset(out / "imagenet", split)
        assert ds.classes == sorted(SHAPE_CLASSES)
        counts = np.bincount(ds.targets, minlength=len(SHAPE_CLASSES))
        assert counts.min() >= 1 and counts.max() - counts.min() <= 1  # balanced
        assert s["imagenet"]["per_class"][split] == {
            c: int(counts[ds.class_to_idx[c]]) for c in SHAPE_CLASSES
        }
        img, _ = ds[0]
        assert img.mode == "RGB" and img.size == (48, 48)


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_masks_match_ade_labels(syn, split):
    out, _ = syn
    coco_split, _, _ = SPLITS[split]
    coco = COCO(str(out / "coco" / "annotations" / f"instances_{coco_split}.json"))
    assert [c["id"] for c in coco.loadCats(coco.getCatIds())] == list(range(1, len(SHAPE_CLASSES) + 1))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
    assert sorted(coco.getImgIds()) == list(range(1, KW[f"num_{split}"] + 1))
    n_anns = 0
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        assert (info["width"], info["height"]) == (48, 48)
        assert info["file_name"] == f"{image_id:012d}.jpg"
        ade = _ade(out, split, image_id)
        assert ade.shape == (48, 48) and 1 <= ade.min() and ade.max() <= len(SHAPE_CLASSES) + 1
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert 1 <= len(anns) <= 4
        covered = np.zeros((48, 48), np.int64)
        per_class = np.zeros((len(SHAPE_CLASSES) + 2, 48, 48), bool)
        for a in anns:
            m = coco.annToMask(a).astype(bool)
            assert a["iscrowd"] == 0 and a["area"] == m.sum() >= 16
            ys, xs = np.nonzero(m)
            x, y, w, h = a["bbox"]
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert a["bbox"] == mask_utils.toBbox(a["segmentation"]).tolist()
            covered += m
            per_class[a["category_id"] + 1] |= m
        assert covered.max() == 1  # visible masks after occlusion are disjoint
        for label in range(2, len(SHAPE_CLASSES) + 2):
            np.testing.assert_array_equal(per_class[label], ade == label)
        np.testing.assert_array_equal(covered == 0, ade == 1)  # background label 1
        n_anns += len(anns)
    assert n_anns > KW[f"num_{split}"]  # scenes do hold several instances


def test_imagenet_label_is_dominant_coco_instance(syn):
    out, _ = syn
    for split in ("train", "val"):
        coco = COCO(str(out / "coco" / "annotations" / f"instances_{SPLITS[split][0]}.json"))
        names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
        for path in (out / "imagenet" / split).glob("*/*.JPEG"):
            image_id = int(path.stem.split("_")[-1])
            areas = sorted(
                (a["area"], names[a["category_id"]]) for a in coco.loadAnns(coco.getAnnIds(image_id))
            )
            assert areas[-1][1] == path.parent.name
            assert len(areas) == 1 or areas[-1][0] > areas[-2][0]  # strictly dominant


def test_ignore_boundary_band(tmp_path):
    out = tmp_path / "band"
    s = write_synthetic(
        out, seed=1, num_train=6, num_val=6, img_size=32, num_classes=3, ade_ignore_boundary=True
    )
    assert s["ade20k"]["classes"] == ade20k_class_names(3) == ["background", "circle", "square", "triangle"]
    coco = COCO(str(out / "coco" / "annotations" / "instances_train2017.json"))
    seen_zero = False
    for image_id in coco.getImgIds():
        ade = _ade(out, "train", image_id)
        assert ade.max() <= 4
        inst = np.full((32, 32), -1)
        per_class = np.zeros((5, 32, 32), bool)
        for a in coco.loadAnns(coco.getAnnIds(image_id)):
            m = coco.annToMask(a).astype(bool)
            inst[m] = a["id"]
            per_class[a["category_id"] + 1] |= m
        per_class[1] = inst == -1
        for label in range(1, 5):  # away from the band the ADE class equals the COCO masks
            np.testing.assert_array_equal(per_class[label] & (ade != 0), ade == label)
        edge = np.zeros_like(inst, bool)
        edge[:, 1:] |= inst[:, 1:] != inst[:, :-1]
        edge[:, :-1] |= inst[:, 1:] != inst[:, :-1]
        edge[1:] |= inst[1:] != inst[:-1]
        edge[:-1] |= inst[1:] != inst[:-1]
        np.testing.assert_array_equal(ade == 0, edge)
        seen_zero |= bool(edge.any())
    assert seen_zero


def test_in_memory_scenes_match_files(syn):
    out, _ = syn
    scenes = list(iter_scenes(3, "val", KW["num_val"], img_size=48))
    for i, sc in enumerate(scenes):
        np.testing.assert_array_equal(sc.ade_labels(), _ade(out, "val", i + 1))
        assert sc.image.shape == (48, 48, 3) and sc.image.dtype == np.uint8
        areas = [sc.visible_mask(k).sum() for k in range(len(sc.classes))]
        assert sc.classes[int(np.argmax(areas))] == sc.label


def test_argument_errors_and_overwrite(tmp_path):
    with pytest.raises(ValueError, match="num_val"):
        write_synthetic(tmp_path / "a", num_train=10, num_val=3)
    with pytest.raises(ValueError, match="layouts"):
        write_synthetic(tmp_path / "a", layouts=("voc",))
    out = tmp_path / "b"
    write_synthetic(out, num_train=6, num_val=6, img_size=32, layouts=("imagenet",))
    assert not (out / "coco").exists()
    stale = out / "imagenet" / "train" / "circle" / "stale.JPEG"
    stale.write_bytes(b"x")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_synthetic(out, num_train=6, num_val=6, img_size=32, layouts=("imagenet",))
    write_synthetic(out, num_train=6, num_val=6, img_size=32, layouts=("imagenet",), overwrite=True)
    assert not stale.exists()
    meta = json.dumps(write_synthetic(tmp_path / "c", num_train=6, num_val=6, img_size=32, layouts=("coco",)))
    assert "imagenet" not in meta


def _instance_std(scene, i: int) -> float:
    return float(scene.image[scene.visible_mask(i)].astype(np.float32).std(0).mean())


def test_class_textures_tie_the_surface_pattern_to_the_class():
    """textures="class": stars are always flat (pixel noise only); with the default they are often patterned."""
    star = SHAPE_CLASSES.index("star")

    def star_stds(textures):
        return [_instance_std(sc, i) for sc in iter_scenes(5, "train", 60, img_size=64, textures=textures)
                for i, c in enumerate(sc.classes) if c == star]

    tied, free = star_stds("class"), star_stds("random")
    assert len(tied) >= 10 and max(tied) < 10  # noise of std <= 0.03 x 255
    assert max(free) > 20


def _background_residual(scene) -> float:
    """Std of the background pixels after removing the best plane per channel (the gradient)."""
    ys, xs = np.nonzero(scene.instance_map == -1)
    design = np.stack([np.ones_like(xs), xs, ys], 1).astype(np.float64)
    values = scene.image[ys, xs].astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    return float((values - design @ coef).std(0).mean())


def test_plain_background_is_gradient_and_noise_only():
    plain = [_background_residual(sc) for sc in iter_scenes(5, "val", 30, img_size=64, background="plain")]
    textured = [_background_residual(sc) for sc in iter_scenes(5, "val", 30, img_size=64)]
    assert max(plain) < 14  # pixel noise of std <= 0.05 x 255
    assert max(textured) > 20


def test_main_radius_sets_the_dominant_size_and_options_are_checked(tmp_path):
    def dominant_area(**options):
        return np.mean([(sc.instance_map == sc.classes.index(sc.label)).sum()
                        for sc in iter_scenes(5, "train", 24, img_size=64, max_instances=1, **options)])

    assert dominant_area(main_radius=(0.35, 0.4)) > 1.5 * dominant_area(main_radius=(0.18, 0.22))
    for bad, match in [(dict(textures="stripes"), "textures"), (dict(background="noisy"), "background"),
                       (dict(main_radius=(0.3, 0.2)), "main_radius")]:
        with pytest.raises(ValueError, match=match):
            write_synthetic(tmp_path / "x", num_train=6, num_val=6, **bad)
    summary = write_synthetic(tmp_path / "y", num_train=6, num_val=6, img_size=32, layouts=("imagenet",),
                              textures="class", background="plain")
    assert summary["scenes"] == {"max_instances": 4, "textures": "class", "background": "plain",
                                 "main_radius": (0.18, 0.32), "shapes": "base"}


def test_other_shapes_are_a_second_vocabulary_with_its_own_folders(tmp_path):
    """The demo's labelled pretraining set: six classes none of the downstream sets has; the scenes are drawn
    with the same random numbers, so only the shapes (and the folder names) differ from the base set."""
    from mae_core.data import OTHER_SHAPE_CLASSES

    assert len(OTHER_SHAPE_CLASSES) == len(SHAPE_CLASSES) and not set(OTHER_SHAPE_CLASSES) & set(SHAPE_CLASSES)
    s = write_synthetic(tmp_path / "o", seed=0, num_train=12, num_val=6, img_size=48, layouts=("imagenet",),
                        shapes="other")
    assert s["imagenet"]["classes"] == sorted(OTHER_SHAPE_CLASSES) and s["scenes"]["shapes"] == "other"
    assert sorted(p.name for p in (tmp_path / "o" / "imagenet" / "train").iterdir()) == sorted(OTHER_SHAPE_CLASSES)
    base = list(iter_scenes(0, "train", 6, 48))
    other = list(iter_scenes(0, "train", 6, 48, shapes="other"))
    assert [b.label for b in base] == [o.label for o in other]
    for b, o in zip(base, other):  # another outline for the same scene: the masks differ
        assert (b.instance_map >= 0).sum() != (o.instance_map >= 0).sum() or \
            ((b.instance_map >= 0) != (o.instance_map >= 0)).any()
    with pytest.raises(ValueError, match="shapes must be one of"):
        write_synthetic(tmp_path / "x", shapes="animals")
