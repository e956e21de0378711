"""Metrics log: one JSON object per line in the run's output folder (easy to tail, plot and diff), and the same
numbers as TensorBoard scalars in that folder (`tensorboard --logdir <output-dir>`), as the official MAE engines
write them. Every engine logs through this one class, so each gets TensorBoard here, once.

A line with a `step` is a training step (tags `train/<name>`, x = the step); one without is an epoch summary
(tags `epoch/<name>`, x = the epoch).
"""

from __future__ import annotations

import json
import numbers
import weakref
from pathlib import Path


class MetricsLog:
    def __init__(self, path: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.path, self.enabled, self.tensorboard = Path(path), enabled, tensorboard
        self._writer, self._purge_step = None, None

    @property
    def writer(self):
        """torch's SummaryWriter on the log's folder, opened on first use (closed with this object)."""
        if self._writer is None and self.enabled and self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.path.parent), purge_step=self._purge_step)
            weakref.finalize(self, self._writer.close)
        return self._writer

    def truncate_from_epoch(self, epoch: int) -> None:
        """On resume, drop entries of epochs that will be re-run, so the log reads as one clean run; TensorBoard
        hides the killed run's steps of those epochs (`purge_step`), or its plots would draw them twice."""
        if not (self.enabled and self.path.exists()):
            return
        lines = _parsed_lines(self.path)
        kept = [line for line, r in lines if r.get("epoch", -1) < epoch]
        dropped_steps = [r["step"] for _, r in lines if r.get("epoch", -1) >= epoch and "step" in r]
        self._purge_step = min(dropped_steps, default=None)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, **record) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            prefix, x = ("train", record["step"]) if "step" in record else ("epoch", record.get("epoch", 0))
            for name, value in record.items():
                if name not in ("step", "epoch") and isinstance(value, numbers.Real) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{prefix}/{name}", value, x)
            self.writer.flush()  # a killed run keeps what it logged

    def image(self, tag: str, image, step: int) -> None:
        """An (H, W, 3) uint8 image (e.g. pretraining's reconstruction grid) into TensorBoard."""
        if self.writer is not None:
            self.writer.add_image(tag, image, step, dataformats="HWC")
            self.writer.flush()

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [r for _, r in _parsed_lines(self.path)]


def _parsed_lines(path: Path) -> list[tuple[str, dict]]:
    """(line, record) of each whole line; a line cut off by a killed run (not JSON) is left out."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append((line, record))
    return out
