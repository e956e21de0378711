"""Every checkpoint format users bring, told apart by content and read into one shape.

Each reader ends in a `CheckpointInfo` whose state dict has the official MAE / timm key names
(docs/design.md, "Checkpoints on disk"), so one loader (`checkpoints.load_official_weights`) serves
every format and the writers (`export.save_ours / export_hf / export_timm`) start from one layout. Formats are
told apart by what the file holds, never by its name: official files and timm state dicts share key
names and differ only in the `{'model': ...}` wrapper; Hugging Face folders are recognised by
config.json and verified by their keys.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from .ckpt_io import FORMATS, KNOWN_FORMATS, is_safetensors, load_file, load_safetensors, safetensors_hints
from .errors import ArchitectureMismatchError, CheckpointFormatError
from .hf import hf_to_mae_state_dict, is_hf_vitmae_state_dict
from .infer import OFFICIAL_EPS, arch_of, mae_state_dict, size_name
from .mae import MAE_PRESETS, MaskedAutoencoder
from .target import norm_pix_loss, note_target
from .vit import VIT_ARCHS

DECODER_PREFIXES = ("mask_token", "decoder_")
HEAD_PREFIXES = ("head.", "fc_norm.")
HF_CLASSES = {"hf-vitmae-pretraining": "ViTMAEForPreTraining", "hf-vitmae-model": "ViTMAEModel",
              "hf-vit-classification": "ViTForImageClassification", "hf-vit-model": "ViTModel"}
_WRAPPERS = ("model", "state_dict", "model_ema", "state_dict_ema")  # official: 'model'; timm train.py: 'state_dict'


@dataclass
class CheckpointInfo:
    """What a checkpoint holds: its format (a key of FORMATS), architecture, and official-layout weights.

    `arch` uses the constructor names: embed_dim, depth, num_heads (heads_guessed), patch_size,
    img_size, grid, in_chans, mlp_ratio, qkv_bias, layer_norm_eps, has_decoder (decoder_embed_dim,
    decoder_depth, decoder_num_heads), has_norm, has_head, num_classes, fc_norm, global_pool, and,
    where known (`target.py`), norm_pix_loss with norm_pix_loss_from (recorded / file name / stated).
    `meta` is what the file says about itself (our meta, an HF/timm config, the training args).
    """

    format: str
    state_dict: dict[str, torch.Tensor]
    arch: dict
    meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    source: str = "checkpoint"
    files: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        """One line, e.g. 'ViT-B/16 at 224 px, decoder 512x8, no head'."""
        a = self.arch
        parts = [f"{size_name(a, widths=False)} at {a['img_size']} px"]
        if a["has_decoder"]:
            parts.append(f"decoder {a['decoder_embed_dim']}x{a['decoder_depth']}")
        if not a["has_head"]:
            parts.append("no head")
        else:
            pool = "avg pool + fc_norm" if a["fc_norm"] else "cls token"
            parts.append(f"head {a['num_classes']} classes ({pool})")
        return ", ".join(parts)

    def mae_kwargs(self) -> dict:
        """`MaskedAutoencoder` constructor kwargs (plain values, storable in our meta)."""
        a = self.arch
        if self.format == "mae-transfer" and "model_kwargs" in self.meta:
            kw = dict(self.meta["model_kwargs"])
        else:
            kw = {k: a[k] for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
                                    "mlp_ratio")}
            if a["has_decoder"]:
                kw.update({k: a[k] for k in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")})
            else:  # our preset's decoder if the meta names one, else MaskedAutoencoder's (the official 512x8)
                preset = MAE_PRESETS.get(str(self.meta.get("arch", "")), {})
                kw.update({k: v for k, v in preset.items() if k.startswith("decoder_")})
        kw["norm_pix_loss"] = norm_pix_loss(self)  # a decoder's unknown target raises (LossTargetError)
        return kw

    def build_mae(self, **overrides) -> MaskedAutoencoder:
        kw = {**self.mae_kwargs(), **overrides}
        if self.arch["layer_norm_eps"] != OFFICIAL_EPS:
            kw.setdefault("norm_layer", partial(nn.LayerNorm, eps=self.arch["layer_norm_eps"]))
        return MaskedAutoencoder(**kw)

    def timm_kwargs(self) -> dict:
        """Arguments for timm's `VisionTransformer` with this checkpoint's encoder and head."""
        a = self.arch
        kw = dict(img_size=a["img_size"], patch_size=a["patch_size"], in_chans=a["in_chans"],
                  embed_dim=a["embed_dim"], depth=a["depth"], num_heads=a["num_heads"], mlp_ratio=a["mlp_ratio"],
                  qkv_bias=a["qkv_bias"], num_classes=a["num_classes"], global_pool=a["global_pool"],
                  fc_norm=a["fc_norm"])
        if a["layer_norm_eps"] != OFFICIAL_EPS:
            kw["norm_layer"] = partial(nn.LayerNorm, eps=a["layer_norm_eps"])
        return kw

    def build_timm(self, **overrides) -> nn.Module:
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(**{**self.timm_kwargs(), **overrides})


def sniff(src: str | Path) -> CheckpointInfo:
    """Read a checkpoint file or folder of any known format; CheckpointFormatError names them if not."""
    path = Path(src)
    if path.is_dir():
        return _read_folder(path)
    if is_safetensors(path):
        return _from_object(load_safetensors(path), str(path), [path], hints=safetensors_hints(path))
    return _from_object(load_file(path), str(path), [path])


def as_info(src) -> CheckpointInfo:
    """A CheckpointInfo for a path, a CheckpointInfo, a model in memory, or a loaded checkpoint dict."""
    if isinstance(src, CheckpointInfo):
        return src
    if isinstance(src, nn.Module):
        return from_module(src)
    if isinstance(src, dict):
        return _from_object(src, "state dict", [])
    return sniff(src)


def from_module(model: nn.Module) -> CheckpointInfo:
    """A CheckpointInfo for a model in memory (our MAE or a timm ViT): heads and eps read off the modules."""
    hints = dict(num_heads=model.blocks[0].attn.num_heads, layer_norm_eps=model.blocks[0].norm1.eps)
    if hasattr(model, "decoder_blocks"):
        hints.update(decoder_num_heads=model.decoder_blocks[0].attn.num_heads, norm_pix_loss=model.norm_pix_loss)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    notes = [f"read from a {type(model).__name__} in memory (the format names its key layout)"]
    return _official_info(sd, None, type(model).__name__, [], {}, hints, notes)


def apply_preset(info: CheckpointInfo, name: str) -> CheckpointInfo:
    """Check the checkpoint against a named preset and take the heads from it (they are not in the weights).

    `name` is an MAE preset (`mae_vit_base_patch16`) or a ViT size (`vit_base`). A file of another
    size raises ArchitectureMismatchError naming both.
    """
    vit = re.sub(r"^mae_|_patch\d+$", "", name)
    if name not in MAE_PRESETS and vit not in VIT_ARCHS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join([*MAE_PRESETS, *VIT_ARCHS])}")
    preset = MAE_PRESETS.get(name, {})
    size, a = VIT_ARCHS[vit], info.arch
    expected = dict(embed_dim=size.embed_dim, depth=size.depth, patch_size=preset.get("patch_size", a["patch_size"]))
    if any(a[k] != v for k, v in expected.items()):
        raise ArchitectureMismatchError(
            f"{info.source} holds a {size_name(a)}, but {name} is a {size_name(dict(expected, name=vit))}: "
            "pick the preset that matches the checkpoint.")
    if not a["heads_guessed"] and a["num_heads"] != size.num_heads:
        raise ArchitectureMismatchError(
            f"{info.source} records {a['num_heads']} heads, but {name} has {size.num_heads}: "
            "pick the preset that matches the checkpoint.")
    arch = dict(a, num_heads=size.num_heads, heads_guessed=False)
    replaced = ("heads are not stored",)
    if a["heads_guessed"] and a["has_decoder"] and a["decoder_embed_dim"] == preset.get("decoder_embed_dim"):
        arch["decoder_num_heads"] = preset["decoder_num_heads"]
        replaced += ("heads of the decoder",)
    notes = [n for n in info.notes if not n.startswith(replaced)] + [f"heads from preset {name}"]
    return replace(info, arch=arch, notes=notes)


# ----------------------------------------------------------------------------- files and folders
def _weight_files(folder: Path) -> list[Path]:
    """The weights of an HF / timm hub folder: one file or the shards an index names."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointFormatError(f"{index} is not a shard index ({e})") from e
            return [folder / s for s in shards]
    return []


def _read_folder(folder: Path) -> CheckpointInfo:
    files, cfg_path = _weight_files(folder), folder / "config.json"
    if not files:
        raise CheckpointFormatError(
            f"{folder} is a folder without model.safetensors or pytorch_model.bin (or their shard index). "
            "Known formats: " + "; ".join(KNOWN_FORMATS))
    config = None
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text())
        except ValueError as e:
            raise CheckpointFormatError(f"{cfg_path} is not valid JSON ({e})") from e
    sd = {}
    for f in files:  # .bin files go through load_file: weights_only=True, never arbitrary pickles
        sd.update(load_safetensors(f) if f.suffix == ".safetensors" else _tensors(load_file(f), f))
    source = str(folder)
    if isinstance(config, dict) and "architecture" in config:  # timm's save_for_hf / push_to_hf_hub
        hints = dict(num_heads=config.get("model_args", {}).get("num_heads"), preset=config["architecture"])
        return _official_info(_check_official(sd, source), None, source, files, config, hints, [],
                              fmt="timm")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in (None, "vit", "vit_mae"):
        raise CheckpointFormatError(
            f"{cfg_path} describes a {model_type!r} model; we read ViT and ViTMAE folders. "
            "Known formats: " + "; ".join(KNOWN_FORMATS))
    if not is_hf_vitmae_state_dict(sd):  # e.g. a bare official / timm dict saved beside some config
        return _from_object(sd, source, files)
    return _hf_info(sd, config, source, files)


def _tensors(obj: dict, path) -> dict[str, torch.Tensor]:
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointFormatError(f"{path} is not a plain state dict (some values are not tensors)")
    return obj


# ----------------------------------------------------------------------------- readers
def _from_object(obj: dict, source: str, files: list[Path], hints: dict | None = None) -> CheckpointInfo:
    """A loaded torch / safetensors object: ours, official (by wrapper and content), timm, or bare HF."""
    notes: list[str] = []
    meta = obj.get("meta")
    if isinstance(meta, dict) and isinstance(obj.get("model"), dict) and (
            str(meta.get("format", "")).startswith("mae-transfer") or "model_kwargs" in meta):
        kw = meta.get("model_kwargs") or {}
        hints = dict(num_heads=kw.get("num_heads"), decoder_num_heads=kw.get("decoder_num_heads"),
                     preset=meta.get("arch"), layer_norm_eps=meta.get("layer_norm_eps"),
                     norm_pix_loss=kw.get("norm_pix_loss", meta.get("norm_pix_loss")))
        return _official_info(mae_state_dict(obj, source), None, source, files, meta, hints, notes,
                              fmt="mae-transfer")
    wrapper = next((k for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
    sd = obj[wrapper] if wrapper else obj
    others = [k for k in _WRAPPERS if k != wrapper and isinstance(obj.get(k), dict)]
    if others:
        notes.append(f"read the weights under {wrapper!r}; the file also holds {', '.join(map(repr, others))}")
    sd = _strip_prefix(sd, notes)
    args = obj.get("args") if wrapper else None
    meta = {"args": vars(args) if hasattr(args, "__dict__") else args} if args is not None else {}
    if isinstance(obj.get("epoch"), int) and wrapper:
        meta["epoch"] = obj["epoch"]
    if is_hf_vitmae_state_dict(sd):
        notes.append("Hugging Face weights without their config.json: heads and layer-norm eps are guessed")
        return _hf_info(sd, None, source, files, notes)
    args = meta["args"] if isinstance(meta.get("args"), dict) else {}  # the official training scripts' args
    hints = dict(hints or {}, preset=args.get("model") or (obj.get("arch") if wrapper else None),
                 norm_pix_loss=args.get("norm_pix_loss"))
    sd = _check_official(sd, source)
    return _official_info(sd, wrapper, source, files, meta, hints, notes)


def _check_official(sd: dict, source: str) -> dict[str, torch.Tensor]:
    """The official-layout dict with tensors only; a dict in no layout we know raises, listing the formats."""
    sd = mae_state_dict({"model": sd}, source)
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _strip_prefix(sd: dict, notes: list[str]) -> dict:
    for prefix in ("module.", "model."):  # DDP's wrapper; Lightning-style modules
        if sd and all(k.startswith(prefix) for k in sd):
            notes.append(f"every key had the prefix {prefix!r}: stripped")
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _official_info(sd, wrapper, source, files, meta, hints, notes, fmt=None) -> CheckpointInfo:
    """Name the official-layout format (unless given) and infer the architecture."""
    has_decoder = any(k.startswith(DECODER_PREFIXES) for k in sd)
    has_head = any(k.startswith(HEAD_PREFIXES) for k in sd)
    if fmt is None:
        if has_decoder:
            fmt = "official-full"
        elif wrapper == "model":
            fmt = "official-finetuned" if has_head else "official-pretrain"
        else:
            fmt = "timm"
        if wrapper not in (None, "model"):
            notes.append(f"weights under {wrapper!r} (timm's train.py layout)")
        elif wrapper is None and fmt == "official-full":
            notes.append("a bare state dict (no {'model': ...} wrapper) in the official full layout")
    arch = arch_of(sd, notes, **hints)
    note_target(arch, source, notes)
    return CheckpointInfo(fmt, sd, arch, meta, notes, source, files)


def _hf_info(sd, config, source, files, notes=None) -> CheckpointInfo:
    """HF ViTMAE / ViT weights (either key layout) -> official names; the class is read off the tensors."""
    notes, config = list(notes or []), config or {}
    sd = dict(sd)
    head = {"head." + k.split(".", 1)[1]: sd.pop(k) for k in list(sd) if k.startswith("classifier.")}
    pooler = [sd.pop(k) for k in list(sd) if k.startswith(("pooler.", "vit.pooler."))]
    if pooler:
        notes.append("dropped HF ViTModel's pooler (dense + tanh): the official / timm ViT has none")
    prefixed = any(k.startswith("vit.") for k in sd)
    is_vit = config.get("model_type") == "vit" or bool(pooler) or bool(head)
    if any(k.startswith("decoder.") for k in sd):
        fmt = "hf-vitmae-pretraining"
    elif prefixed:
        fmt = "hf-vit-classification" if is_vit else "hf-vitmae-pretraining"
        if not head:
            notes.append(f"{HF_CLASSES[fmt]} weights without {'a classifier' if is_vit else 'the decoder'}")
    else:
        fmt = "hf-vit-model" if is_vit else "hf-vitmae-model"
    declared = (config.get("architectures") or [None])[0]
    if declared and declared != HF_CLASSES[fmt]:
        notes.append(f"config.json names {declared}, but the tensors are a {HF_CLASSES[fmt]}'s: read as such")
    if config.get("hidden_act", "gelu") != "gelu":
        notes.append(f"hidden_act is {config['hidden_act']!r}; the official / timm ViT uses exact GELU")
    official = {**hf_to_mae_state_dict(sd), **head}
    hints = dict(num_heads=config.get("num_attention_heads"),
                 decoder_num_heads=config.get("decoder_num_attention_heads"),
                 layer_norm_eps=config.get("layer_norm_eps", 1e-12),  # HF's default, also for files without config
                 norm_pix_loss=config.get("norm_pix_loss"))
    arch = arch_of(official, notes, **hints)
    note_target(arch, source, notes)
    info = CheckpointInfo(fmt, official, arch, config, notes, source, files)
    size = config.get("image_size")
    if isinstance(size, int) and size != info.arch["img_size"]:
        notes.append(f"config.json says image_size {size}, the position embeddings hold "
                     f"{info.arch['img_size']} px: the tensors are used")
    return info


__all__ = ["FORMATS", "KNOWN_FORMATS", "CheckpointInfo", "apply_preset", "as_info", "from_module", "sniff"]
