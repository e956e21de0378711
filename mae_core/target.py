"""A decoder's reconstruction target: raw pixels, or each patch normalised by its own mean and variance.

The weights do not say which one a decoder was trained for, yet the loss and the pictures depend
on it (`norm_pix_loss`). Our files, Hugging Face configs and official training checkpoints (their
`args`) record it. The published official files do not, but their names are known:
`mae_visualize_vit_*.pth` are the demo's raw-pixel models and `mae_pretrain_vit_*_full.pth` were
trained with norm-pix (facebookresearch/mae: PRETRAIN.md, issue #12). Anything else must be stated
by the user; nothing here assumes raw pixels silently.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from .errors import LossTargetError

PUBLISHED = (
    (re.compile(r"^mae_visualize_vit_[a-z]+(_ganloss)?\.pth$"), False,
     "the official mae_visualize_vit_* files are the demo's models, trained on raw pixels"),
    (re.compile(r"^mae_pretrain_vit_[a-z]+_full\.pth$"), True,
     "the official mae_pretrain_vit_*_full files were trained with norm_pix_loss, the paper's target"),
)
STATE_IT = ("state it: --norm-pix-loss (the official *_full files; `maet pretrain`'s default) or --no-norm-pix-loss "
            "(raw pixels; the mae_visualize_vit_* files); in Python, mae_core.target.with_target(info, True/False)")


def note_target(arch: dict, source: str, notes: list[str]) -> None:
    """A decoder that does not record its target: take it from a published file's name, else note it is unknown."""
    if not arch["has_decoder"] or "norm_pix_loss" in arch:
        return
    for pattern, value, why in PUBLISHED:
        if pattern.match(Path(source).name):
            arch.update(norm_pix_loss=value, norm_pix_loss_from="file name")
            notes.append(f"norm_pix_loss is not recorded: {value}, by the file's name ({why}); "
                         "--norm-pix-loss / --no-norm-pix-loss overrides")
            return
    notes.append("norm_pix_loss is not recorded: " + STATE_IT)


def norm_pix_loss(info) -> bool:
    """The target to build `info`'s MAE with; a decoder's unknown target raises rather than defaulting."""
    a = info.arch
    if "norm_pix_loss" in a:
        return bool(a["norm_pix_loss"])
    if a["has_decoder"]:
        raise LossTargetError(f"{info.source} holds a decoder but does not record its reconstruction target "
                              f"(norm_pix_loss), and the loss and reconstructions depend on it; {STATE_IT}")
    return False  # no decoder: the new one's target is the new training's choice


def with_target(info, stated: bool | None):
    """`info` with the target the user stated (None: keep what the file or its name says).

    A statement against what the file records raises: a conversion keeps the target the model was
    trained for. Against a file name's default it wins, with a note.
    """
    a = info.arch
    if stated is None or a.get("norm_pix_loss") == stated:
        return info
    source = a.get("norm_pix_loss_from", "recorded" if "norm_pix_loss" in a else None)
    if source == "recorded" and a["has_decoder"]:
        flag = "--norm-pix-loss" if stated else "--no-norm-pix-loss"
        raise LossTargetError(f"{info.source} records norm_pix_loss={a['norm_pix_loss']}, and {flag} contradicts it: "
                              "drop the option (the file's decoder was trained for the recorded target)")
    notes = [n for n in info.notes if not n.startswith("norm_pix_loss is not recorded")]
    if a["has_decoder"]:
        notes.append(f"norm_pix_loss={stated}, as stated" + (" (the file's name said otherwise)" if source else ""))
    return replace(info, arch=dict(a, norm_pix_loss=stated, norm_pix_loss_from="stated"), notes=notes)
