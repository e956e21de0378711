"""ADE20K semantic segmentation with mmsegmentation's UperNet on an MAE ViT encoder.

mmseg is imported lazily (inside functions), so `import transfer.segmentation` works without it.
- `configs/`   mmengine configs `_base_`-ing mmseg's own `mae/` UperNet config: the published ViT-B / ViT-L
               protocol and a tiny CPU protocol on the synthetic ADE20K set (same code path).
- `weights.py` official MAE keys -> mmseg `MAE` backbone keys (beit2mmseg renames, pos-embed and
               relative-position resizing) with a report of new and unused keys.
- `data.py`    ADE20K layout and label checks, before mmseg sees the folder.
- `config.py`  the protocols by short name; the mmengine Config loaded, overridden (--cfg-options) and edited.
- `engine.py`  a run's config and `--init`, the mmengine `Runner` (train / eval), torchrun on CPU or GPU.
- `hooks.py`   our mmengine hook (metrics history) and CPU DDP wrapper, registered on import.
- `resume.py`  resume only from the run's own work dir, and exactly on every rank (mmengine hook + runner).
"""

from .config import CONFIG_DIR, PROTOCOLS  # noqa: F401  (the pipeline's names for them)
