"""detectron2 LazyConfig files, laid out like detectron2's `projects/ViTDet/configs` (COCO/ + common/).

They are loaded with `detectron2.config.LazyConfig.load(path)`, never imported for their side
effects; `transfer.detection.config.config_file(name)` gives the path of a protocol by its short name.
"""
