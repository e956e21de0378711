#!/usr/bin/env bash
# Install the whole mae-transfer stack into ./.venv on a fresh machine of this kind (CPython 3.11,
# x86_64, PyPI only): torch + torchvision, timm, a compiled mmcv 2.1.0 + mmsegmentation,
# detectron2 (rewritten from PyPI's sal-detectron2, see scripts/detectron2_wheel.py), the project.
#
# Idempotent: a second run reuses the venv and pip's wheel cache and finishes in seconds when
# nothing changed (a stamp of this script + pyproject.toml). Facts behind each pin: docs/install.md.
# Users with a GPU and their own torch can skip this and `pip install -e .[det,seg,dev,slurm]` after
# installing detectron2 and mmcv their usual way.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${MAE_TRANSFER_VENV:-.venv}
WHEELS=${MAE_TRANSFER_WHEELS:-$HOME/.cache/mae-transfer/wheels}
STAMP="$VENV/.mae-transfer-stamp"
want=$(cat scripts/setup.sh scripts/detectron2_wheel.py pyproject.toml | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && "$VENV/bin/python" -c "import torch, timm, mmcv.ops, mmseg, detectron2.modeling, shapely, submitit, tensorboard, mae_core" 2>/dev/null; then
  echo "setup: $VENV is up to date"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
step() { echo "setup: $*" >&2; }

step "build tools"
pip install -q "setuptools==80.9.0" wheel ninja
step "torch + torchvision (exact pair for this machine; pyproject declares ranges)"
pip install -q "torch==2.14.1" "torchvision==0.29.1"
step "OpenMMLab: mmengine, then mmcv 2.1.0 compiled against this torch (about 20-40 min once; cached after)"
pip install -q "mmengine==0.10.7" "numpy>=2" opencv-python-headless
if ! "$VENV/bin/python" -c "import mmcv.ops" 2>/dev/null; then
  # mmcv 2.1.0 compiles with -std=c++17, but the headers of recent torch (2.14 here) require C++20; we patch that one
  # flag in its sdist and cache the wheel per torch version (it is ABI-bound to the torch it saw).
  torch_version=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
  mmcv_wheels="$WHEELS/mmcv-2.1.0-torch-$torch_version"
  if ! ls "$mmcv_wheels"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    build=$(mktemp -d)
    pip download -q --no-deps --no-binary :all: --no-build-isolation "mmcv==2.1.0" -d "$build"
    tar xzf "$build"/mmcv-2.1.0.tar.gz -C "$build"
    sed -i "s/\['-std=c++17'\]/['-std=c++20']/" "$build/mmcv-2.1.0/setup.py"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} pip wheel -q --no-build-isolation --no-deps \
      -w "$mmcv_wheels" "$build/mmcv-2.1.0"
    rm -rf "$build"
  fi
  pip install -q "$mmcv_wheels"/mmcv-2.1.0-*.whl
fi
pip install -q "mmsegmentation==1.2.2" ftfy regex
step "detectron2 0.7.2 as pure Python"
wheel=$("$VENV/bin/python" scripts/detectron2_wheel.py "$WHEELS")
# shapely: fvcore's CropTransform crops polygon masks with it (real COCO's masks are polygons; nothing else pulls it in)
pip install -q "$wheel" "fvcore==0.1.5.post20221221" "iopath==0.1.9" "shapely==2.1.2"
step "mae-transfer (editable) with its extras"
pip install -q "timm==1.0.31" "pycocotools==2.0.11"
pip install -q -e ".[det,seg,dev,slurm]"

"$VENV/bin/python" -c "import torch, timm, mmcv.ops, mmseg, detectron2.modeling, shapely, submitit, tensorboard, mae_core"
echo "$want" > "$STAMP"
step "done: $("$VENV/bin/python" -c 'import torch, timm, mmcv, mmseg, detectron2; print(f"torch {torch.__version__}, timm {timm.__version__}, mmcv {mmcv.__version__}, mmseg {mmseg.__version__}, detectron2 {detectron2.__version__}")')"
