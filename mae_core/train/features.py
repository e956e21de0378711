"""The frozen encoder's feature that a linear probe or k-NN reads: which one, with which norm, and extracting it.

Two features: `cls`, the cls token through the final `norm` (the official MAE probe), and `avg`, the
mean of the patch tokens through `fc_norm` (how the official fine-tune, a global-pool classifier, is
trained). `auto` probes each checkpoint on the feature it was trained to give: a classifier file with
`fc_norm` (a global-pool fine-tune, e.g. the supervised baseline) gets `avg`; anything else (an MAE
file, a cls-token classifier, scratch) gets `cls`, as the official probe and its published numbers
(at demo scale an MAE's cls token carried little, so pipelines/synthetic.yaml asks for `avg`).
An MAE file has no `fc_norm`: `avg` on it runs the mean through the file's own final `norm` (said in
the load report). A feature whose norm the file lacks is refused, never left at a fresh init.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoints import LoadReport
from ..errors import FeatureMismatchError
from ..formats import CheckpointInfo, sniff
from ..models_vit import build_classifier, classifier_kwargs
from .configs import FEATURES
from .init_report import load_classifier_init
from .precision import autocast


@dataclass
class FeatureChoice:
    """The feature a probe reads and where its normalisation comes from (recorded with the run)."""

    kind: str  # "cls" | "avg"
    norm: str  # the file's tensors it goes through: "norm" | "fc_norm"; "fresh" for scratch
    why: str  # one line for the log and the record

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def choose_feature(info: CheckpointInfo | None, feature: str) -> FeatureChoice:
    """Resolve `--feature` for a checkpoint (None: scratch); refuse a feature whose norm the file lacks."""
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
    if info is None:
        kind = "cls" if feature == "auto" else feature
        return FeatureChoice(kind, "fresh", "scratch: random encoder, a floor")
    keys = info.state_dict.keys()
    has_norm, has_fc_norm = "norm.weight" in keys, "fc_norm.weight" in keys
    kind = ("avg" if has_fc_norm else "cls") if feature == "auto" else feature
    how = "auto: " if feature == "auto" else ""
    if kind == "cls":
        if not has_norm:
            other = " (it holds fc_norm: it was trained on the mean of patch tokens)" if has_fc_norm else ""
            raise FeatureMismatchError(
                f"{info.source} has no final norm (norm.*) for the cls-token feature{other}; probe it with "
                "--feature avg (or auto) instead of leaving norm at a fresh init")
        return FeatureChoice("cls", "norm", f"{how}cls token through the file's norm")
    if has_fc_norm:
        return FeatureChoice("avg", "fc_norm", f"{how}mean of patch tokens through the file's fc_norm")
    if has_norm:
        return FeatureChoice("avg", "norm", "mean of patch tokens through the file's final norm (it has no fc_norm)")
    raise FeatureMismatchError(f"{info.source} has neither fc_norm.* nor norm.*: no normalised feature to probe, "
                               "neither --feature avg nor --feature cls; give an encoder checkpoint with its final "
                               "norm")


def _with_norm_as_fc_norm(info: CheckpointInfo) -> CheckpointInfo:
    sd = {("fc_" + k if k.startswith("norm.") else k): v for k, v in info.state_dict.items()}
    return dataclasses.replace(info, state_dict=sd)


def probe_classifier(model: str, model_kwargs: dict, img_size: int, num_classes: int, init: str, feature: str,
                     seed: int) -> tuple[VisionTransformer, dict, LoadReport, FeatureChoice]:
    """The linear-probe classifier (frozen encoder, BN + linear head) pooling the chosen feature, loaded from
    `init` (any format, or 'scratch'). Returns (model, constructor kwargs, load report, feature choice)."""
    info = None if init == "scratch" else sniff(init)
    choice = choose_feature(info, feature)
    kwargs = classifier_kwargs(model, img_size=img_size, num_classes=num_classes, global_pool=choice.kind == "avg",
                               drop_path_rate=0.0, linear_probe=True, **model_kwargs)
    torch.manual_seed(seed)
    clf = build_classifier(**kwargs)
    if info is None:
        return clf, kwargs, load_classifier_init(clf, init), choice
    renamed = {}
    if choice.norm == "norm" and choice.kind == "avg":  # the mean of patch tokens through the file's final norm
        info = _with_norm_as_fc_norm(info)
        renamed = {k: "norm." + k[len("fc_norm."):] for k in info.state_dict if k.startswith("fc_norm.")}
    report = load_classifier_init(clf, init, info, renamed)
    report.notes.append(f"probe feature: {choice.why}")
    fresh = [k for k in report.new if k.startswith(("norm.", "fc_norm."))]
    if fresh:  # choose_feature should have refused: never probe through a fresh norm
        raise FeatureMismatchError(f"{init}: {fresh} are not in the file; the {choice.kind} feature needs them")
    return clf, kwargs, report, choice


def pooled(model: VisionTransformer, imgs: torch.Tensor) -> torch.Tensor:
    """The feature the head reads: `model(x) == model.head(pooled(model, x))`."""
    return model.forward_head(model.forward_features(imgs), pre_logits=True)


@torch.no_grad()  # not inference_mode: the probe's head trains on these tensors
def extract(model: VisionTransformer, loader: DataLoader, device: torch.device, precision: str = "fp32",
            progress: bool = False, desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """(features fp32 (N, D), labels (N,)) of every image of `loader`, in order, on `device`."""
    model.eval()
    feats, labels = [], []
    for imgs, target in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        with autocast(device, precision):
            feats.append(pooled(model, imgs.to(device, non_blocking=True)).float())
        labels.append(target.to(device))
    return torch.cat(feats), torch.cat(labels)
