"""detectron2's `DetectionCheckpointer`, reading files without running code from them.

- `.pth` (our runs' `model_*.pth`, detectron2-trained models): `torch.load(weights_only=True)`. The
  checkpoints our runs write hold only tensors and plain values (model, optimizer, scheduler, iteration,
  grad scaler, `transfer.detection.resume.ResumeState`), so resume needs no exception to the rule.
- `.pkl` (detectron2's model zoo, e.g. the published ViTDet `model_final_*.pkl`): a pickle of numpy
  arrays. detectron2 calls `pickle.load` on it, which runs whatever the file names. We unpickle with
  an allow-list: numpy's array/dtype/scalar reconstructors and a few containers; anything else (a
  class or function of any other module) stops the load with `CheckpointFormatError`, before it runs.
"""

from __future__ import annotations

import pickle

import torch
from detectron2.checkpoint import DetectionCheckpointer

from mae_core.errors import CheckpointFormatError

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"), ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise CheckpointFormatError(
            f"refusing to unpickle {module}.{name}: a detectron2 .pkl model file holds only numpy arrays; this one "
            "names other code, which pickle would run. Convert it where you trust it to a .pth of tensors "
            "(torch.save({'model': {k: torch.as_tensor(v) ...}}, 'model.pth')) and pass that")


def model_state(path: str) -> dict:
    """The `model` tensors/arrays of a detectron2 model file, read safely (for sizing the model before loading)."""
    if str(path).endswith(".pkl"):
        data = load_pkl(path)
        return data.get("model", data)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointFormatError(f"{path}: not a readable tensor file (torch.load weights_only: {e})") from e
    return data.get("model", data) if isinstance(data, dict) else {}


def load_pkl(path: str) -> dict:
    """A detectron2 / Detectron model-zoo .pkl through the allow-list unpickler."""
    with open(path, "rb") as f:
        try:
            data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
        except CheckpointFormatError:
            raise
        except Exception as e:
            raise CheckpointFormatError(f"{path}: not a readable detectron2 .pkl model file ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"{path}: a detectron2 .pkl holds a dict, this one a {type(data).__name__}")
    return data


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """`DetectionCheckpointer` whose file reading never executes pickled code (see module docstring).

    `strict=True` (evaluation of a finished model) turns what detectron2 only logs into an error: a
    tensor whose shape differs from the model's, or a model tensor the file lacks. Evaluating a model
    with some weights left at their random init would give a wrong AP without a word.
    """

    def __init__(self, *args, strict: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.strict = strict

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        if self.strict and (incompatible.incorrect_shapes or incompatible.missing_keys):
            shapes = [f"{k}: {tuple(a)} in the file vs {tuple(b)} in the model" for k, a, b in
                      incompatible.incorrect_shapes]
            raise CheckpointFormatError(
                "the model file does not fit the config's model: "
                + "; ".join(shapes[:5] + [f"missing {k}" for k in incompatible.missing_keys[:5]])
                + ". Pass the --config (and overrides) it was trained with.")
        return incompatible

    def _load_file(self, filename):
        if filename.endswith(".pkl"):
            data = load_pkl(filename)
            if "model" in data and "__author__" in data:  # detectron2 model zoo format
                return data
            if "blobs" in data:  # Detectron1 / Caffe2 detection models
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        return super()._load_file(filename)

    def _torch_load(self, f):
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointFormatError(
                f"{f}: holds more than tensors and plain values, so it is not loaded (torch.load weights_only). "
                f"Re-save its state dict as tensors. ({str(e).splitlines()[0]})") from e
