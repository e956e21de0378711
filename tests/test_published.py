"""results/published/*.csv hold exactly the numbers of ANCHORS.md: read off the document here, independently.

The CSVs were transcribed by hand; this test re-reads every number from the anchor document's own
tables and sentences and compares the two sets row for row (no number missing, none extra, none
changed). `results/published/ANCHORS.md` is the project's copy of the document; where the shared
original sits beside the checkout, the copy must still equal it.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published"
ANCHORS = PUBLISHED / "ANCHORS.md"
SHARED_ANCHORS = Path(__file__).resolve().parents[2] / "shared" / "ANCHORS.md"
ARCH = {"B": "ViT-B/16", "L": "ViT-L/16", "H": "ViT-H/14"}
INIT = {"scratch (P's recipe)": "scratch", "MoCo v3": "moco-v3", "BEiT": "beit", "MAE": "mae",
        "supervised IN1K": "supervised"}
NUMBER = r"(\d+\.\d+)"


def section(title_start: str) -> str:
    text = ANCHORS.read_text()
    start = text.index("\n## " + title_start)
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def markdown_table(text: str) -> tuple[list[str], dict[str, list[str]]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|---")]
    return rows[0][1:], {r[0]: r[1:] for r in rows[1:]}


def numbers(text: str) -> list[str]:
    return re.findall(NUMBER, text)


def anchor_rows() -> set[tuple]:
    """(csv file, init, arch, metric, value) for every number the anchor document publishes."""
    rows = set()
    imagenet = section("ImageNet-1K")
    header, table = markdown_table(imagenet)
    for label, values in table.items():
        for col, value in zip(header, values):
            if value != "–":
                file, arch = ("imagenet_finetune_448", "ViT-H/14") if col == "ViT-H@448" else \
                    ("imagenet_finetune", ARCH[col[-1]])
                rows.add((file, INIT[label], arch, "top1", value))
    released = numbers(re.search(r"Released fine-tuned checkpoints evaluate to (.*)", imagenet).group(1))
    rows |= {("imagenet_finetune", "mae (released fine-tuned checkpoint)", ARCH[s], "top1", v)
             for s, v in zip("BLH", released)}
    probe = numbers(re.search(r"Linear probe \(P Table 12\): (.*)", imagenet).group(1))
    rows |= {("imagenet_linprobe", "mae", ARCH[s], "top1", v) for s, v in zip("BLH", probe[:3])}
    rows |= {("imagenet_linprobe", "mae (PyTorch re-run)", ARCH[s], "top1", v) for s, v in zip("BLH", probe[3:])}

    header, table = markdown_table(section("COCO, Mask R-CNN with ViT + FPN"))
    for label, values in table.items():
        for col, value in zip(header, values):
            metric = "bbox_AP" if col.startswith("APbox") else "segm_AP"
            rows.add(("coco_maskrcnn_mae_paper", INIT[label], ARCH[col[-1]], metric, value))

    vitdet = " ".join(section("COCO, ViTDet protocol").split())
    mask_rcnn, cascade = re.search(r"Mask R-CNN box/mask (.*?); Cascade (.*?)\.\s", vitdet).groups()
    for file, text in (("coco_vitdet_mask_rcnn", mask_rcnn), ("coco_vitdet_cascade", cascade)):
        for size, box, mask in re.findall(rf"ViT-([BLH]) {NUMBER}/{NUMBER}", text):
            rows |= {(file, "mae", ARCH[size], "bbox_AP", box), (file, "mae", ARCH[size], "segm_AP", mask)}

    ade = " ".join(section("ADE20K, UperNet").split())
    paper = re.search(r"mIoU, single scale, 512 px: (.*?)\. mmseg", ade).group(1)
    for part in paper.split(";"):
        b, large = numbers(part)
        label = re.sub(r"\s*(ViT-B|ViT-L|/|\d+\.\d+|,)\s*", " ", part).strip()
        label = INIT.get(label, label)
        rows |= {("ade20k_upernet", label, ARCH["B"], "mIoU", b), ("ade20k_upernet", label, ARCH["L"], "mIoU", large)}
    single, multi = numbers(re.search(r"mmseg's own MAE ViT-B run: (.*?)multi-scale", ade).group(1))
    rows.add(("ade20k_upernet", "mae (mmseg re-run)", ARCH["B"], "mIoU", single))
    rows.add(("ade20k_upernet_ms_flip", "mae (mmseg re-run)", ARCH["B"], "mIoU", multi))
    return rows


def csv_rows() -> list[dict]:
    rows = []
    for path in sorted(PUBLISHED.glob("*.csv")):
        with path.open(newline="") as f:
            rows += [dict(r, file=path.stem) for r in csv.DictReader(f)]
    return rows


def test_published_csvs_equal_the_anchor_numbers():
    expected = anchor_rows()
    found = {(r["file"], r["init"], r["arch"], r["metric"], r["value"]) for r in csv_rows()}
    assert len(expected) == 58  # 14 IN-1K ft + 6 lin + 16 COCO (P) + 12 ViTDet + 10 ADE20K
    assert found - expected == set(), "rows in the CSVs that ANCHORS.md does not publish"
    assert expected - found == set(), "numbers of ANCHORS.md missing from the CSVs"


def test_every_row_names_its_recipe_and_source_and_one_protocol_per_file():
    by_file: dict[str, set[str]] = {}
    for r in csv_rows():
        assert re.match(r"^[PMDS] ", r["source"]), r
        assert r["recipe"].strip(), r  # a number is its recipe's
        assert ("Table 11" in r["recipe"]) == (r["init"] == "scratch"), r  # scratch: P's from-scratch recipe only
        by_file.setdefault(r["file"], set()).add(r["protocol"])
    assert all(len(protocols) == 1 for protocols in by_file.values()), by_file
    assert len({p for ps in by_file.values() for p in ps}) == len(by_file), "two files share a protocol"


@pytest.mark.skipif(not SHARED_ANCHORS.is_file(), reason="the shared anchor document is not beside this checkout")
def test_project_copy_of_anchors_is_current():
    assert ANCHORS.read_text() == SHARED_ANCHORS.read_text()
