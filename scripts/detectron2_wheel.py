"""Build an installable pure-Python detectron2 0.7.2 wheel from PyPI's `sal-detectron2`.

Why: detectron2 is not on PyPI under its own name, and the only registry these machines reach is
PyPI. `sal-detectron2==0.7.2` is a wheel of detectron2 0.7.2 (Apache-2.0), but it is tagged cp310
and ships a `_C` extension built for Python 3.10 + CUDA 12, so pip on other Pythons refuses it.
We rewrite it as pure Python: drop `detectron2/_C*.so` (detectron2 then uses torchvision's ops;
lost are DeformConv, rotated boxes and the C++ fast COCOeval, which falls back to pycocotools),
drop the stray top-level `tools/` package, relax `numpy<2`, rename the distribution to
`detectron2` (so `pip install mae-transfer[det]` sees it installed) and retag `py3-none-any`.

Users with internet should prefer the official install:
    pip install 'git+https://github.com/facebookresearch/detectron2.git'

Usage: python scripts/detectron2_wheel.py OUT_DIR   (prints the path of the wheel it wrote)
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SOURCE = "sal-detectron2==0.7.2"
SOURCE_DIST_INFO = "sal_detectron2-0.7.2.dist-info"
DIST_INFO = "detectron2-0.7.2.dist-info"
WHEEL_NAME = "detectron2-0.7.2-py3-none-any.whl"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def _rewrite_metadata(text: str) -> str:
    text = re.sub(r"^Name: .*$", "Name: detectron2", text, count=1, flags=re.M)
    text = text.replace("Requires-Dist: numpy<2\n", "Requires-Dist: numpy\n")
    # black is only detectron2's config-dumping formatter; keep it (LazyConfig.save imports it).
    return text


def _rewrite_wheel_tag(text: str) -> str:
    text = re.sub(r"^Root-Is-Purelib: .*$", "Root-Is-Purelib: true", text, flags=re.M)
    return re.sub(r"^Tag: .*$", "Tag: py3-none-any", text, flags=re.M)


def build(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / WHEEL_NAME
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             "--platform", "any", "--python-version", "3.10", "-d", tmp, SOURCE],
            check=True, stdout=subprocess.DEVNULL,
        )
        (source,) = Path(tmp).glob("sal_detectron2-*.whl")
        files: dict[str, bytes] = {}
        with zipfile.ZipFile(source) as zin:
            for name in zin.namelist():
                if name.startswith("tools/") or re.match(r"detectron2/_C.*\.so$", name):
                    continue
                if name.endswith("/RECORD"):
                    continue
                data = zin.read(name)
                if name.startswith(SOURCE_DIST_INFO + "/"):
                    name = DIST_INFO + name[len(SOURCE_DIST_INFO):]
                    if name.endswith("/METADATA"):
                        data = _rewrite_metadata(data.decode()).encode()
                    elif name.endswith("/WHEEL"):
                        data = _rewrite_wheel_tag(data.decode()).encode()
                    elif name.endswith("/top_level.txt"):
                        data = b"detectron2\n"
                files[name] = data
        record_lines = [f"{n},{_record_hash(d)},{len(d)}" for n, d in files.items()]
        record_lines.append(f"{DIST_INFO}/RECORD,,")
        files[f"{DIST_INFO}/RECORD"] = ("\n".join(record_lines) + "\n").encode()
        partial = target.with_suffix(".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zout:
            for name, data in files.items():
                zout.writestr(name, data)
        partial.replace(target)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(build(Path(sys.argv[1])))
