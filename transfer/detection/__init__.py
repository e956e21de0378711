"""COCO detection and instance segmentation with ViTDet's Mask R-CNN, through detectron2.

- `configs/`: LazyConfig files like detectron2's `projects/ViTDet/configs` (ViT-B/L/H as published,
  and a tiny CPU protocol on the synthetic COCO set); `config.py` names them and edits a loaded one.
- `weights.py`: `--init` (any format `transfer.encoder_init` reads) -> `backbone.net.*`, with a report.
- `data.py`: a COCO-layout root checked and registered with `register_coco_instances`.
- `evaluator.py`: `COCOEvaluator` keeping all 12 COCO numbers; what a run record's metrics hold.
- `checkpoint.py`: detectron2's checkpointer reading .pth with weights_only and .pkl numpy-only.
- `resume.py`: the RNG and data position a checkpoint needs for an exact resume.
- `engine.py`: train / evaluate as detectron2's `lazyconfig_train_net.py` does, under its `launch`.

Nothing here is imported by `mae_core`; `benchmarks/cli_detection.py` imports it inside its handlers.
"""
