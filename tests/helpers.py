"""Helpers the end-to-end tests share: running `maet` in a subprocess the way a user would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path


def cli_args(cfg) -> list[str]:
    """A config dataclass back to the `maet` flags that produce it."""
    args = []
    for key, value in cfg.to_dict().items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            args += [flag, json.dumps(value)]
        elif value is not None:
            args += [flag, str(value)]
    return args


def maet(*args) -> list[str]:
    return [sys.executable, "-m", "benchmarks.cli", *args]


def one_thread_env() -> dict:
    """Subprocesses on a 2-core machine (several at once under torchrun): one intra-op thread each."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_process_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants, by pid (torchrun's workers run in sessions of their own,
    so killing the launcher or its process group leaves them running). Linux: reads /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
    tree = [pid]
    for p in tree:  # grows while it is walked: breadth first
        tree += children.get(p, [])
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def tensorboard_scalars(folder) -> dict[str, list[float]]:
    """Every scalar tag of the TensorBoard event files under `folder` (read back with TensorBoard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[float]] = {}
    for events in sorted(Path(folder).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return scalars


def tensorboard_run(folder, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one scalar tag as TensorBoard shows the folder: one run, its event files read in order,
    with the purges a resumed writer asked for applied."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]
