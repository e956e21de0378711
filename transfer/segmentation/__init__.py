"""ADE20K semantic segmentation with mmsegmentation's UperNet on an MAE ViT encoder.

mmseg is imported lazily (inside functions), so `import transfer.segmentation` works without it.
- `configs/`   mmengine configs `_base_`-ing mmseg's own `mae/` UperNet config: the published ViT-B / ViT-L
               protocol and a tiny CPU protocol on the synthetic ADE20K set (same code path).
- `weights.py` official MAE keys -> mmseg `MAE` backbone keys (beit2mmseg renames, pos-embed and
               relative-position resizing) with a report of new and unused keys.
- `data.py`    ADE20K layout and label checks, before mmseg sees the folder.
- `engine.py`  config building, the mmengine `Runner` (train / eval), torchrun on CPU or GPU.
- `resume.py`  resume only from the run's own work dir, and exactly on every rank (mmengine hook + runner).
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"
PROTOCOLS = {  # short names for --config
    "tiny": "mae_vit_tiny_upernet_synthetic_ade20k_64x64.py",
    "vit-b": "mae_vit_base_upernet_ade20k_512x512_160k.py",
    "vit-l": "mae_vit_large_upernet_ade20k_512x512_160k.py",
}
