"""The two small mmengine components a segmentation run adds, registered the usual way on import.

- `MetricsHistoryHook` (mmseg's HOOKS): every evaluation's metrics, kept for the run record's history.
- `CPUDistributedDataParallel` (mmengine's root MODEL_WRAPPERS, where `Runner.wrap_model` looks): mmengine's
  DDP wrapper for CPU processes (gloo), with `device_ids=None` and BN for SyncBN (GPU only). A single process
  needs neither: mmengine itself reverts SyncBN when not distributed.

`engine.py` imports this module (and resume.py, with the runner and the seeding hook), so the configs name
them by type as they name mmseg's own components.
"""

from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS
from mmseg.registry import HOOKS


@HOOKS.register_module()
class MetricsHistoryHook(Hook):
    """Keep every evaluation's metrics in memory, for the run record."""

    def __init__(self):
        self.history: list[dict] = []

    def after_val_epoch(self, runner, metrics=None) -> None:
        if metrics:
            self.history.append({"iter": runner.iter, **{k: round(float(v), 4) for k, v in metrics.items()}})


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper on CPU processes: no `device_ids` (a CPU module refuses the local rank), BN for SyncBN."""

    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module=revert_sync_batchnorm(module), device_ids=None, **kwargs)
