"""`maet segment train` / `maet segment eval`: the segmentation commands (issue in progress)."""

from __future__ import annotations


def add_segmentation_commands(subparsers) -> None:
    """Register `maet segment` on the `maet` parser (benchmarks/cli.py)."""
