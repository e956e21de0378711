"""`maet detect train` / `maet detect eval`: the detection commands (issue in progress)."""

from __future__ import annotations


def add_detection_commands(subparsers) -> None:
    """Register `maet detect` on the `maet` parser (benchmarks/cli.py)."""
