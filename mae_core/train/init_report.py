"""`--init` of a classification run, loaded into the classifier and reported as the one `LoadReport`.

The transfer adapters (detectron2, mmseg) report their loads as `mae_core.checkpoints.LoadReport`; the
fine-tune and the linear probes do too, so every run folder's `init_report.json` reads the same way and every
record carries the same compact form. What `models_vit.load_init_checkpoint` returns (missing / unexpected /
resized / dropped keys) is turned here into that report: each file tensor loaded (and as which model key),
new, or unused with the reason.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from ..checkpoints import LoadReport
from ..formats import DECODER_PREFIXES, CheckpointInfo, sniff
from ..models_vit import load_init_checkpoint

SCRATCH = "scratch"
HEAD_REASON = "the file's classifier head: this run trains a new one"
DECODER_REASON = "decoder / mask token: not part of the encoder"


def _unused_reason(key: str, model_keys: set[str]) -> str:
    if key.startswith(DECODER_PREFIXES):
        return DECODER_REASON
    if key.startswith("norm.") and "fc_norm.weight" in model_keys:
        return "the global-pool classifier normalises its pooled feature with fc_norm; it has no final norm"
    if key.startswith("fc_norm."):
        return "the cls-token classifier reads token 0 through the final norm; it has no fc_norm"
    return "no tensor of this name in the classifier"


def load_classifier_init(model: nn.Module, init: str | Path, info: CheckpointInfo | None = None,
                         renamed: dict[str, str] | None = None) -> LoadReport:
    """Load `init` ('scratch', or any checkpoint the loader reads) into a classifier; report every tensor.

    `info`: the file already read (its keys possibly renamed); `renamed`: model key -> the file's own key, for
    tensors loaded under another name (the linear probe's `norm.*` as `fc_norm.*`). The sha256 is left to the
    caller (computed once, on the main process).
    """
    if str(init) == SCRATCH:
        return LoadReport(init=SCRATCH, new=sorted(model.state_dict()))
    info = info or sniff(init)
    load = load_init_checkpoint(model, info)
    renamed = renamed or {}
    own = model.state_dict()
    unexpected, dropped = set(load["unexpected"]), set(load["dropped"])
    unused = {renamed.get(k, k): HEAD_REASON for k in dropped}
    unused.update({renamed.get(k, k): _unused_reason(k, set(own)) for k in unexpected})
    loaded = {renamed.get(k, k): k for k in info.state_dict if k not in unexpected and k not in dropped}
    resized = {k: [list(info.state_dict[k].shape), list(own[k].shape)] for k in load["resized"]}
    return LoadReport(init=Path(init).name, loaded=loaded, new=sorted(load["missing"]), unused=unused,
                      resized=resized, notes=list(info.notes))
