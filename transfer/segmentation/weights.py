"""Official MAE encoder keys -> mmseg's `MAE` backbone keys, resized to the backbone, with a load report.

mmseg's own route (`tools/model_converters/beit2mmseg.py`, then `init_cfg=dict(type='Pretrained')`) would
`torch.load` the user's file inside mmseg, unpickling whatever it holds. Here the file is read once by our
safe loader (`transfer.encoder_init.read_encoder`, weights only) and converted in memory; mmengine then only
ever loads a tensor-only state dict that the run itself wrote. The renames are beit2mmseg's:
`blocks`->`layers`, `norm`->`ln` inside blocks, `mlp.fc1`->`ffn.layers.0.0`, `mlp.fc2`->`ffn.layers.1`,
`patch_embed.proj`->`patch_embed.projection`, all under `backbone.`. mmseg's `MAE` backbone has two kinds
of tensors MAE never had, the per-block relative position bias (zero-initialised) and layer scale
`gamma_1/2` (init 1.0): with those values it computes exactly the official ViT, so they are reported as
new, not as a problem. The encoder's final `norm`/`fc_norm` has no place in the backbone (features are
taken from inside the blocks): reported as unused. The report is `mae_core.checkpoints.LoadReport`,
the detection adapter's too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mae_core.checkpoints import LoadReport
from mae_core.errors import ArchitectureMismatchError
from mae_core.vit import resize_pos_embed
from transfer.encoder_init import NOT_ENCODER_REASON

PREFIX = "backbone."
EXPECTED_NEW = ("relative_position_bias_table", "gamma_1", "gamma_2")  # MAE has none; defaults reproduce ViT
REL_POS_EXTRA_TOKENS = 3  # cls->token, token->cls, cls->cls
UNUSED_REASON = "mmseg's MAE backbone has no such tensor (features are taken from inside the blocks: no final norm)"


def official_to_mmseg(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """beit2mmseg's renames, keys under `backbone.` (fc_norm/head are kept here so the report can name them)."""
    out = {}
    for key, value in state_dict.items():
        new = key
        if key.startswith("blocks."):
            new = key.replace("blocks.", "layers.", 1)
            if ".norm" in new:
                new = new.replace(".norm", ".ln")
            else:
                new = new.replace("mlp.fc1", "ffn.layers.0.0").replace("mlp.fc2", "ffn.layers.1")
        elif key.startswith("patch_embed.proj."):
            new = key.replace("patch_embed.proj.", "patch_embed.projection.", 1)
        out[PREFIX + new] = value
    return out


def resize_rel_pos_bias(table: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """A BEiT relative position bias table ((2h-1)(2w-1)+3, heads) resized bicubically to another window.

    mmseg resizes with scipy's `interp2d` (gone from recent SciPy); a bicubic resize of the square table
    keeps the centre (zero offset) in place the same way, and the three cls entries are kept apart.
    """
    num_pos, heads = table.shape
    side = int(round((num_pos - REL_POS_EXTRA_TOKENS) ** 0.5))
    if side * side != num_pos - REL_POS_EXTRA_TOKENS:
        raise ArchitectureMismatchError(f"relative position bias table of shape {tuple(table.shape)} is not square")
    dst = (2 * window[0] - 1, 2 * window[1] - 1)
    if (side, side) == dst:
        return table
    grid, extra = table[:-REL_POS_EXTRA_TOKENS], table[-REL_POS_EXTRA_TOKENS:]
    grid = grid.T.reshape(1, heads, side, side).float()
    grid = F.interpolate(grid, size=dst, mode="bicubic", align_corners=False)
    grid = grid.reshape(heads, -1).T.to(table.dtype)
    return torch.cat([grid, extra], dim=0)


def unexpected_new(report: LoadReport) -> list[str]:
    """New backbone keys other than relative-position bias and layer scale (whose defaults reproduce MAE's ViT)."""
    return [k for k in report.new if not k.endswith(EXPECTED_NEW)]


def check_arch(arch: dict, backbone_cfg: dict) -> None:
    """The checkpoint's ViT must be the configured backbone's (width, depth, heads, patch, MLP ratio)."""
    pairs = [("embed_dim", "embed_dims"), ("depth", "num_layers"), ("patch_size", "patch_size"),
             ("mlp_ratio", "mlp_ratio")]
    if not arch.get("heads_guessed"):
        pairs.append(("num_heads", "num_heads"))
    wrong = [f"{ours}={arch[ours]} vs {theirs}={backbone_cfg[theirs]}" for ours, theirs in pairs
             if ours in arch and theirs in backbone_cfg and float(arch[ours]) != float(backbone_cfg[theirs])]
    if wrong:
        raise ArchitectureMismatchError(
            "the --init checkpoint's ViT differs from the config's backbone (" + "; ".join(wrong) + "). Use a "
            "config for this ViT size, or set the backbone with --cfg-options model.backbone.embed_dims=... "
            "model.backbone.num_layers=... model.backbone.num_heads=... (and out_indices, neck, heads to match).")


def convert_for_backbone(encoder: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                         not_encoder: list[str] = (), window: tuple[int, int] | None = None, *,
                         init: str = "", sha256: str | None = None, notes: list[str] = (),
                         ) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Official encoder tensors -> a state dict for a model whose state dict is `target` (keys `backbone.*`).

    Position embeddings are resized to the target grid (bicubic, cls entry apart) and relative position
    tables to the target window; any other shape difference is an architecture mismatch. `init`,
    `sha256` and `notes` (the `EncoderInit`'s) go into the report as they are.
    """
    renamed = official_to_mmseg(encoder)
    back = {next(iter(official_to_mmseg({k: v}))): k for k, v in encoder.items()}  # mmseg -> official name
    report = LoadReport(init=init, sha256=sha256, notes=list(notes),
                        unused={k: NOT_ENCODER_REASON for k in not_encoder})
    out = {}
    for key, value in renamed.items():
        if key not in target:
            report.unused[back.get(key, key)] = UNUSED_REASON
            continue
        want = target[key].shape
        if value.shape != want:
            old = list(value.shape)
            if key.endswith("pos_embed") and value.ndim == 3:
                side = int(round((want[1] - 1) ** 0.5))
                value = resize_pos_embed(value, (side, side))
            elif key.endswith("relative_position_bias_table") and window is not None:
                value = resize_rel_pos_bias(value, window)
            if value.shape != want:
                raise ArchitectureMismatchError(
                    f"checkpoint tensor {back.get(key, key)} has shape {old}, the backbone's {key} has "
                    f"{list(want)}: the checkpoint is another ViT size than the config's backbone")
            report.resized[key] = [old, list(want)]
        out[key] = value
        report.loaded[back.get(key, key)] = key
    report.new = sorted(k for k in target if k.startswith(PREFIX) and k not in out
                        and "relative_position_index" not in k)
    report.unused = dict(sorted(report.unused.items()))
    return out, report
