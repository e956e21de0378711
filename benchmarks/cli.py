"""`maet`: the suite's command line. Each subcommand is a thin layer over a library function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mae_core.errors import MAETransferError

from .cli_args import Number, Parser, PathArg, add_dataclass_args, dataclass_from_args, name_list, seed_list


def _cmd_pretrain(args) -> None:
    """No run record: a pretraining run is measured by the transfer runs that start from its weights."""
    from mae_core.train.configs import PretrainConfig
    from mae_core.train.pretrain import pretrain

    pretrain(dataclass_from_args(PretrainConfig, args))


def _cmd_make_data(args) -> None:
    from mae_core.data import write_synthetic

    summary = write_synthetic(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                              img_size=args.img_size, max_instances=args.max_instances, textures=args.textures,
                              background=args.background, coco_style=args.coco_style, shapes=args.shapes)
    print(json.dumps(summary, indent=2, default=str))


def _cmd_visualize(args) -> None:
    from mae_core.visualize import load_images, load_reconstruction_model, visualize

    model, notes = load_reconstruction_model(args.checkpoint, norm_pix_loss=args.norm_pix_loss)
    for note in notes:
        print(f"note: {note}")
    images = load_images(args.images, model.img_size, limit=args.num_images)
    out = visualize(model, images, args.out, mask_ratio=args.mask_ratio, seed=args.seed)
    print(f"reconstruction grid: {out}")


def _cmd_demo(args) -> None:
    from benchmarks.demo import DEMO_CONFIG, run_demo

    run_demo(args.config or DEMO_CONFIG, jobs=args.jobs, seed=args.seed, seeds=args.seeds)


def _cmd_inspect(args) -> None:
    from mae_core.ckpt_io import sha256_file
    from mae_core.formats import FORMATS, sniff

    info = sniff(args.path)
    a = info.arch
    summary = {"path": str(args.path), "format": info.format, "format_description": FORMATS[info.format],
               "arch": info.describe(), "architecture": a, "tensors": len(info.state_dict),
               "parameters": sum(t.numel() for t in info.state_dict.values()),
               "sha256": {str(f): sha256_file(f) for f in info.files}, "notes": info.notes}
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return
    heads = f"{a['num_heads']} heads" + (" (guessed)" if a["heads_guessed"] else "")
    decoder = (f"; decoder width {a['decoder_embed_dim']}, depth {a['decoder_depth']}, "
               f"{a['decoder_num_heads']} heads" if a["has_decoder"] else "")
    lines = [f"format:     {info.format}: {FORMATS[info.format]}",
             f"arch:       {info.describe()}",
             f"            width {a['embed_dim']}, depth {a['depth']}, {heads}, mlp ratio {a['mlp_ratio']:g}, "
             f"grid {a['grid']}x{a['grid']}, {a['in_chans']} channels, layer-norm eps {a['layer_norm_eps']:g}{decoder}",
             f"tensors:    {summary['tensors']} ({summary['parameters']:,} parameters)"]
    lines += [f"sha256:     {digest}  {Path(f).name}" for f, digest in summary["sha256"].items()]
    lines += [f"note:       {note}" for note in info.notes]
    print("\n".join(lines))


def _cmd_convert(args) -> None:
    from mae_core.export import export_hf, export_timm, save_ours
    from mae_core.formats import apply_preset, sniff
    from mae_core.resample import resample_patch_size
    from mae_core.target import with_target

    info = sniff(args.src)
    if args.arch:
        try:
            info = apply_preset(info, args.arch)
        except ValueError as e:  # an unknown preset name: a usage error, not a traceback
            print(f"maet convert: error: {e}", file=sys.stderr)
            raise SystemExit(2) from e
    info = with_target(info, args.norm_pix_loss)
    resampled = {}
    if args.patch_size is not None:
        old = info.arch["patch_size"]
        info, changes = resample_patch_size(info, args.patch_size)
        resampled = {"resampled": {"from_patch_size": old, "changes": changes}} if changes else {}
    for note in info.notes:
        print(f"note: {note}")
    if args.to == "ours":
        out = save_ours(info, args.out, meta=resampled)
    elif args.to == "hf":
        out = export_hf(info, args.out, kind=None if args.hf_kind == "auto" else args.hf_kind)
    else:
        out = export_timm(info, args.out)
    print(f"{info.format} ({info.describe()}) -> {args.to}: {out}")
    if args.to == "timm":
        args = ", ".join(f"{k}={v!r}" for k, v in info.timm_kwargs().items() if k != "norm_layer")
        if "norm_layer" in info.timm_kwargs():
            args += f", norm_layer=partial(nn.LayerNorm, eps={info.arch['layer_norm_eps']:g})"
        print(f"load with timm.models.vision_transformer.VisionTransformer({args})")


def _cmd_pipeline(args) -> None:
    from .pipeline import run_pipeline

    split = lambda v: [p for p in (v or "").split(",") if p]
    run_pipeline(args.config, only=split(args.only), skip=split(args.skip), tables=args.tables, dry_run=args.dry_run,
                 jobs=args.jobs, seeds=args.seeds, status=args.status)


def _cmd_regression(args) -> None:
    from .regression import run_regression

    run_regression(args.config, args.baseline, update=args.update, work_dir=args.work_dir, records=args.records,
                   seeds=args.seeds, other_pretrainings=args.other_pretrainings or [])


def _cmd_table(args) -> None:
    from .tables import write_tables

    print(write_tables(args.results_dir, published=args.published, out=args.out, plots=args.plots), end="")
    print(f"tables written to {args.out}/")


def build_parser() -> argparse.ArgumentParser:
    """Every command and option; torch-free (the configs live in mae_core.train.configs), so --help is fast."""
    from mae_core.train.configs import PretrainConfig

    from .cli_classification import add_classification_commands
    from .cli_detection import add_detection_commands
    from .cli_segmentation import add_segmentation_commands

    parser = Parser(prog="maet", description="Masked Autoencoders and their transfer benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="MAE pretraining on an ImageNet-layout folder (torchrun for DDP)")
    add_dataclass_args(p, PretrainConfig)
    p.set_defaults(func=_cmd_pretrain)
    add_classification_commands(sub)
    add_detection_commands(sub)
    add_segmentation_commands(sub)

    p = sub.add_parser("make-data", help="write generated data sets in the real on-disk layouts")
    p.add_argument("kind", choices=["synthetic"], help="what to generate: 'synthetic' scenes of shapes")
    p.add_argument("--out", required=True, type=PathArg("output"), help="root folder of the layouts")
    p.add_argument("--seed", type=Number(int, 0), default=0, help="seed of every scene (same seed, same bytes)")
    p.add_argument("--num-train", type=Number(int, 1), default=1000, help="training scenes")
    p.add_argument("--num-val", type=Number(int, 1), default=200, help="validation scenes")
    p.add_argument("--img-size", type=Number(int, 16), default=64, help="scene side in pixels")
    p.add_argument("--max-instances", type=Number(int, 1), default=4, help="shapes per scene: 1..N")
    p.add_argument("--textures", choices=["random", "class"], default="random",
                   help="'class': each shape wears its class's pattern; 'random': only geometry tells classes apart")
    p.add_argument("--background", choices=["textured", "plain"], default="textured",
                   help="'textured': a random pattern behind the shapes; 'plain': one colour")
    p.add_argument("--shapes", choices=["base", "other"], default="base",
                   help="shape vocabulary: 'base' (circle, square, triangle, cross, ring, star) or 'other' (pentagon, "
                        "hexagon, crescent, arrow, diamond, half-disc: a labelled set whose classes differ)")
    p.add_argument("--coco-style", choices=["exact", "real"], default="exact",
                   help="COCO layout: 'exact' (every mask as compressed RLE, square images, ids 1..K) or 'real' "
                        "(real COCO's quirks: polygons, multi-part objects, crowd RLE, id gaps, empty and "
                        "non-square images)")
    p.set_defaults(func=_cmd_make_data)

    p = sub.add_parser("visualize", help="reconstruction grid of an MAE checkpoint (decoder included)")
    p.add_argument("--checkpoint", required=True, type=PathArg("exists"),
                   help="an MAE checkpoint with its decoder (ours, official full or visualize file, HF)")
    p.add_argument("--images", required=True, type=PathArg("dir"), help="folder searched recursively for images")
    p.add_argument("--out", default="reconstructions.png", type=PathArg("file-out"), help="PNG to write")
    p.add_argument("--num-images", type=Number(int, 1), default=8, help="rows of the grid")
    p.add_argument("--mask-ratio", type=Number(float, 0.0, 0.99), default=0.75, help="fraction of patches removed")
    p.add_argument("--seed", type=Number(int, 0), default=0, help="seed of the masking noise")
    p.add_argument("--norm-pix-loss", action=argparse.BooleanOptionalAction, default=None,
                   help="the decoder's target, for a file that does not record it: normalised patches (the "
                        "official *_full files) or raw pixels (--no-; mae_visualize_vit_*); default: the file's, else "
                        "its name's")
    p.set_defaults(func=_cmd_visualize)

    p = sub.add_parser("demo", help="the end-to-end CPU demo on generated data: the synthetic pipeline, its tables, "
                                    "the MAE's reconstructions")
    p.add_argument("--config", default=None, type=PathArg("exists"),
                   help="pipeline YAML (default: pipelines/synthetic.yaml)")
    p.add_argument("--jobs", type=Number(int, 1), default=None, help="stages run at once (default: the config's)")
    p.add_argument("--seed", type=Number(int, 0), default=0, help="masking seed of the reconstruction grid")
    p.add_argument("--seeds", type=seed_list, default=None,
                   help="downstream seeds, e.g. 0,1,2 for the README's mean ± std (default: the config's, 0); "
                        "the pretrained MAE and supervised checkpoints are shared, finished seeds are reused")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("pipeline", help="pretrain -> finetune / linprobe / detection / segmentation for each init, "
                                        "cached by content; tables at the end")
    p.add_argument("--config", required=True, type=PathArg("exists"), help="pipeline YAML (shipped: pipelines/*.yaml)")
    p.add_argument("--only", default=None, help="comma-separated stages to run: a task, an init, a stage name or glob")
    p.add_argument("--skip", default=None, help="comma-separated stages to leave out (same patterns as --only)")
    p.add_argument("--tables", action=argparse.BooleanOptionalAction, default=True, help="write and print the tables")
    p.add_argument("--dry-run", action="store_true", help="list the stages, their state and commands (with "
                   "`launcher: slurm`, each job's nodes, GPUs, time, partition and dependency); run nothing")
    p.add_argument("--status", action="store_true", help="show where each stage's submitit job is (launcher slurm or "
                   "local-submitit: the job ids kept in the output folder); run nothing")
    p.add_argument("--jobs", type=Number(int, 1), default=None,
                   help="stages run at once, CPU threads shared out (default: the config's `jobs`, else 1)")
    p.add_argument("--seeds", type=seed_list, default=None,
                   help="seeds of the downstream runs, e.g. 0,1,2 (default: the config's `seeds`)")
    p.set_defaults(func=_cmd_pipeline)

    p = sub.add_parser("regression", help="run a pipeline with fixed seeds and compare with committed metrics")
    p.add_argument("--config", default="pipelines/synthetic.yaml", type=PathArg("exists"),
                   help="pipeline YAML to run with fixed seeds")
    p.add_argument("--baseline", default="results/baselines/synthetic.json",
                   help="committed metrics and tolerances (written by --update)")
    p.add_argument("--update", action="store_true",
                   help="rewrite the baseline from this run (two seeds at least: tolerances come from their spread)")
    p.add_argument("--seeds", type=seed_list, default=None,
                   help="downstream seeds to run, e.g. 0,1,2 (default: the config's `seeds`)")
    p.add_argument("--work-dir", default=None, type=PathArg("output"),
                   help="keep the run here (default: a temporary folder)")
    p.add_argument("--records", default=None, type=PathArg("dir"),
                   help="compare the pipeline's records in this folder (e.g. the demo's results/runs) instead of "
                        "running it again")
    p.add_argument("--other-pretrainings", default=None, type=name_list, metavar="NAMES",
                   help="with --update and --records: comma-separated pipelines (their names) that repeat this one "
                        "with another pretraining seed; their metrics join the spread, so the tolerances of the "
                        "pretrained rows hold a pretraining's float-level change, not only downstream seeds")
    p.set_defaults(func=_cmd_regression)

    p = sub.add_parser("table", help="comparison tables from run records and published numbers")
    p.add_argument("--results-dir", default=None, type=PathArg("dir"),
                   help="run records (default: $MAET_RESULTS_DIR, else results/runs)")
    p.add_argument("--published", default="results/published", type=PathArg("dir"),
                   help="folder of published-number CSVs")
    p.add_argument("--out", default="results/tables", type=PathArg("output"), help="folder for tables and plots")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True, help="write bar-chart PNGs")
    p.set_defaults(func=_cmd_table)

    p = sub.add_parser("inspect", help="name a checkpoint's format and architecture (file or HF/timm folder)")
    p.add_argument("path", type=PathArg("exists"), help="checkpoint file, or a Hugging Face / timm folder")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("convert", help="convert a checkpoint of any known format to ours, Hugging Face or timm")
    p.add_argument("src", type=PathArg("exists"), help="checkpoint file or HF/timm folder")
    p.add_argument("--to", required=True, choices=["ours", "hf", "timm"],
                   help="ours: {'model', 'meta'} .pth; hf: a transformers ViTMAE folder; timm: a timm ViT file")
    p.add_argument("--out", required=True, type=PathArg("file-out"),
                   help="file (ours, timm: .safetensors or .pth) or folder (hf)")
    p.add_argument("--arch", help="preset the checkpoint must match (e.g. mae_vit_base_patch16, vit_large); "
                                  "its heads replace guessed ones")
    p.add_argument("--hf-kind", default="auto", choices=["auto", "pretraining", "model", "classification"],
                   help="with --to hf: the transformers class (auto: pretraining with a decoder, classification "
                        "with a head, else model)")
    p.add_argument("--norm-pix-loss", action=argparse.BooleanOptionalAction, default=None,
                   help="the decoder's target, for a file that does not record it (exports and our meta keep it): "
                        "normalised patches (the official *_full files) or raw pixels (--no-; mae_visualize_vit_*); "
                        "default: the file's, else its name's, else an error asks")
    p.add_argument("--patch-size", type=Number(int, 1), default=None,
                   help="resample the patch projection and position embedding to this patch size, keeping the image "
                        "size (16: ViTDet-H's init from the patch-14 ViT-H MAE); the decoder is dropped")
    p.set_defaults(func=_cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a bad option (2) or --help (0): argparse has printed its line
        return e.code if isinstance(e.code, int) else 2
    try:
        args.func(args)
    except MAETransferError as e:
        print(f"maet {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
