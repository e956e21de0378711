"""detectron2's `COCOEvaluator`, keeping all 12 COCO numbers per task instead of the 6 AP ones.

pycocotools' `COCOeval.summarize()` computes 12 stats (AP, AP50, AP75, APs/m/l, AR1, AR10, AR100,
ARs/m/l); detectron2 reports the first six plus per-category AP. We add the six AR stats from the same
`coco_eval.stats` (no arithmetic of our own), and `record_metrics` turns the result into the run
record's `metrics`: finite numbers only, with the names of what pycocotools could not compute (-1,
e.g. APs when the set has no small objects; detectron2 writes NaN) listed instead.
"""

from __future__ import annotations

import math

from detectron2.evaluation import COCOEvaluator

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class COCOEvaluator12(COCOEvaluator):
    """`COCOEvaluator` whose bbox / segm results carry all 12 `COCOeval.stats` (in percent, NaN when -1)."""

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        if iou_type in ("bbox", "segm"):
            for idx, name in enumerate(STATS[6:], start=6):
                value = float("nan") if coco_eval is None else float(coco_eval.stats[idx])
                results[name] = value * 100 if value >= 0 else float("nan")
        return results


def record_metrics(results: dict) -> tuple[dict, list[str]]:
    """Evaluator output -> (`metrics` for a run record, names of dropped non-finite sub-metrics).

    `metrics` = {"bbox_AP", "segm_AP", "bbox": {12 stats + "AP-<class>"}, "segm": {...}}.
    """
    metrics, dropped = {}, []
    for task in ("bbox", "segm"):
        if task not in results:
            continue
        kept = {}
        for name, value in results[task].items():
            if isinstance(value, int | float) and math.isfinite(value):
                kept[name] = float(value)
            else:
                dropped.append(f"{task}.{name}")
        metrics[task] = kept
        if "AP" in kept:
            metrics[f"{task}_AP"] = kept["AP"]
    return metrics, dropped
