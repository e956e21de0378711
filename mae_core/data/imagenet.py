"""ImageNet-layout image folders (`ROOT/<split>/<class>/*.JPEG`) with errors that say what is wrong.

Same classes, label order and sample order as `torchvision.datasets.ImageFolder` (classes are the
sorted sub-folder names, which for ImageNet is the standard sorted-synset index), except that hidden
entries (names starting with '.', e.g. `.ipynb_checkpoints`, `._x.JPEG`) are ignored, since they
would otherwise shift every class index or fail at load time. Construction only lists folders
(`os.scandir`), so it stays fast for the 1.28M ImageNet files; images are opened in `__getitem__`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from ..errors import CorruptImageError, DatasetLayoutError

__all__ = ["IMG_EXTENSIONS", "ImageFolderDataset", "pil_rgb_loader"]

logger = logging.getLogger(__name__)

# torchvision's list; matched case-insensitively (ImageNet uses `.JPEG`).
IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_LAYOUT_HINT = "expected the ImageNet layout ROOT/<split>/<class>/<image>, e.g. ROOT/train/n01440764/x.JPEG"
_MAX_LISTED = 10


def _listing(path: Path) -> str:
    """A short, sorted listing of a folder for error messages."""
    try:
        names = sorted(e.name + ("/" if e.is_dir() else "") for e in os.scandir(path))
    except OSError as e:
        return f"<cannot list: {e}>"
    if not names:
        return "nothing (the folder is empty)"
    more = f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def pil_rgb_loader(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB; an unreadable file raises `CorruptImageError` naming it."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")  # convert() forces the full decode while the file is open
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise CorruptImageError(
            f"cannot read image file {os.fspath(path)!r}: {type(e).__name__}: {e}. "
            "Replace or delete the file, or pass --skip-corrupt (skip_corrupt=True) to leave unreadable files out."
        ) from e


def _ends_a_jpeg(path: str) -> bool:
    """Whether the file ends with JPEG's end-of-image marker (padding after it allowed): reads 64 bytes."""
    with open(path, "rb") as f:
        f.seek(max(os.path.getsize(path) - 64, 0))
        return f.read().rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")


def _is_readable_image(path: str) -> bool:
    """The check of `skip_corrupt`, cheap for good files: PIL identifies the file and `verify()` passes (headers,
    PNG CRCs); a JPEG without its end marker, i.e. truncated, must also decode in full."""
    try:
        with Image.open(path) as img:
            is_jpeg = img.format == "JPEG"
            img.verify()
        if is_jpeg and not _ends_a_jpeg(path):
            with Image.open(path) as img:
                img.load()  # raises "image file is truncated" on a cut-off stream
        return True
    except Exception:  # PIL raises a zoo of types on bad data; any failure means "skip"
        return False


def _scan_class(class_dir: str, extensions: tuple[str, ...]) -> list[str]:
    """All image files under `class_dir` (recursively, following links) in torchvision's order."""
    found: list[tuple[str, list[str]]] = []
    stack = [class_dir]
    while stack:
        d = stack.pop()
        files: list[str] = []
        with os.scandir(d) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    stack.append(e.path)
                elif e.name.lower().endswith(extensions):
                    files.append(e.name)
        found.append((d, sorted(files)))
    found.sort(key=lambda t: t[0])  # torchvision: sorted(os.walk(...))
    return [os.path.join(d, f) for d, files in found for f in files]


class ImageFolderDataset(Dataset):
    """`ROOT/<split>/<class>/*` as a map-style dataset returning `(transform(rgb_image), label)`.

    Args:
        root: dataset root holding the split folders (pass `split=None` if `root` is the split).
        split: sub-folder of `root`, e.g. "train" or "val".
        transform: applied to the PIL RGB image.
        skip_corrupt: check every file now and drop unreadable ones (listed in `skipped`): PIL's
            `verify()` finds files that are not images or have broken headers / CRCs, and a JPEG
            without its end marker (truncated) is decoded in full. Without it, a bad file raises
            `CorruptImageError` when it is loaded.
        extensions: accepted file suffixes, matched case-insensitively.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        transform: Callable[[Image.Image], Any] | None = None,
        skip_corrupt: bool = False,
        extensions: Iterable[str] = IMG_EXTENSIONS,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        exts = [extensions] if isinstance(extensions, str) else list(extensions)
        self.extensions = tuple((e if e.startswith(".") else "." + e).lower() for e in exts)
        if not self.extensions:
            raise ValueError("extensions must not be empty")
        self.split_dir = self._check_split_dir()

        self.classes = sorted(
            e.name for e in os.scandir(self.split_dir) if e.is_dir() and not e.name.startswith(".")
        )
        if not self.classes:
            raise DatasetLayoutError(
                f"no class sub-folders in {str(self.split_dir)!r}; found: {_listing(self.split_dir)}. "
                f"Images must sit in one folder per class ({_LAYOUT_HINT}); the official ImageNet val "
                "tarball is flat and must first be sorted into class folders (e.g. with valprep.sh)."
            )
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        samples: list[tuple[str, int]] = []
        empty: list[str] = []
        for c in self.classes:
            files = _scan_class(os.path.join(self.split_dir, c), self.extensions)
            if not files:
                empty.append(c)
            samples.extend((f, self.class_to_idx[c]) for f in files)
        if not samples:
            raise DatasetLayoutError(
                f"no image files in any of the {len(self.classes)} class folders of {str(self.split_dir)!r} "
                f"(e.g. {_listing(self.split_dir / self.classes[0])} in {self.classes[0]!r}); accepted "
                f"extensions (any case): {', '.join(self.extensions)}. {_LAYOUT_HINT}."
            )
        if empty:
            # Keep them as classes so the label indices still match the full class list.
            logger.warning(
                "%d class folder(s) in %s hold no images (labels kept): %s",
                len(empty),
                self.split_dir,
                ", ".join(empty[:_MAX_LISTED]),
            )

        self.skipped: list[str] = []
        if skip_corrupt:
            kept = []
            for path, label in samples:
                (kept if _is_readable_image(path) else self.skipped).append((path, label))
            self.skipped = [p for p, _ in self.skipped]
            samples = kept
            if self.skipped:
                logger.warning(
                    "skipped %d unreadable image file(s) of %d in %s, e.g. %s",
                    len(self.skipped),
                    len(self.skipped) + len(samples),
                    self.split_dir,
                    self.skipped[0],
                )
            if not samples:
                raise DatasetLayoutError(
                    f"all {len(self.skipped)} image files in {str(self.split_dir)!r} are unreadable "
                    f"(e.g. {self.skipped[0]!r}); nothing is left to load."
                )
        self.samples = samples

    def _check_split_dir(self) -> Path:
        """The folder holding the class folders, or a `DatasetLayoutError` saying what is there."""
        if not self.root.exists():
            parent = self.root.parent
            near = f"; {str(parent)!r} holds: {_listing(parent)}" if parent.is_dir() else ""
            raise DatasetLayoutError(f"dataset root {str(self.root)!r} does not exist{near}. {_LAYOUT_HINT}.")
        if not self.root.is_dir():
            raise DatasetLayoutError(
                f"dataset root {str(self.root)!r} is a file, not a folder. {_LAYOUT_HINT}."
            )
        if self.split is None:
            return self.root
        split_dir = self.root / self.split
        if not split_dir.is_dir():
            raise DatasetLayoutError(
                f"split folder {str(split_dir)!r} not found; "
                f"{str(self.root)!r} holds: {_listing(self.root)}. "
                f"{_LAYOUT_HINT} (pass split=None if the root itself holds the class folders)."
            )
        return split_dir

    @property
    def targets(self) -> list[int]:
        """Labels in sample order (as torchvision's ImageFolder), e.g. for class-balanced samplers."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        img = pil_rgb_loader(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"classes={len(self.classes)}, samples={len(self.samples)}, skipped={len(self.skipped)})"
        )
