"""Shared fixtures: tiny generated data sets and a tiny MAE configuration for CPU tests."""

from __future__ import annotations

import pytest

from mae_core.data import write_synthetic

TINY_IMG = 32
# Small enough for a CPU step in milliseconds, same code path as ViT-B.
TINY_MODEL = dict(model="mae_vit_tiny_patch16",
                  model_kwargs={"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4,
                                "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 4})


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory):
    """An ImageNet-layout folder of 64 train / 12 val generated 32-px scenes."""
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic(root, seed=0, num_train=64, num_val=12, img_size=TINY_IMG, layouts=("imagenet",))
    return root / "imagenet"


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: a second intra-op thread makes each step ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
