"""What every `maet` training / evaluation command shares: the run-record options and how a record is written.

The classification, detection and segmentation commands import these from here (not from each other), so
the command modules stay independent of one another.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .cli_args import PathArg
from .records import ENV_DIR, append_record


def add_record_args(parser: argparse.ArgumentParser) -> None:
    """`--record`, `--results-dir` and the labels a record is filed under."""
    g = parser.add_argument_group("run record")
    g.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                   help="append a run record (default: yes)")
    g.add_argument("--results-dir", default=None, type=PathArg("output"),
                   help=f"records folder (default: ${ENV_DIR}, else results/runs)")
    g.add_argument("--dataset-name", default=None, help="dataset label in the record (default: the data folder's name)")
    g.add_argument("--init-name", default=None,
                   help="init label in the record: mae | supervised | scratch | a name "
                        "(default: 'scratch', else the checkpoint's file name)")
    g.add_argument("--protocol", default=None,
                   help="protocol label in the record: runs of one protocol share a comparison table "
                        "(default: '<task> on <dataset>'; `maet pipeline` sets its config's name)")


def dataset_name(args, data_path: str) -> str:
    """The record's dataset label: `--dataset-name`, else the data folder's name."""
    return args.dataset_name or Path(data_path).resolve().name


def init_name(args, init: str) -> str:
    """The record's init label: `--init-name`, else 'scratch' or the checkpoint's file name."""
    return args.init_name or ("scratch" if init == "scratch" else Path(init).name)


def write_record(args, record: dict) -> dict:
    """Append `record` (with `--protocol`, if given) to `--results-dir` and say where it went."""
    if getattr(args, "protocol", None):
        record["protocol"] = args.protocol
    if getattr(args, "output_dir", None):  # the run's folder: a pipeline's table keeps its own stages' records
        record.setdefault("output_dir", os.path.abspath(args.output_dir))
    path = append_record(record, args.results_dir)
    print(f"run record {record['run_id']} -> {path}")
    return record
