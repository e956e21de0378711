"""`--init` for transfer runs: every format yields the same official encoder keys; the rest is listed."""

from __future__ import annotations

import hashlib

import pytest
import torch

from mae_core.checkpoints import save_mae_checkpoint
from mae_core.errors import CheckpointFormatError
from mae_core.export import export_hf, export_timm
from mae_core.mae import create_mae
from transfer.encoder_init import SCRATCH, read_encoder

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)


@pytest.fixture(scope="module")
def mae():
    torch.manual_seed(0)
    return create_mae("mae_vit_tiny_patch16", **TINY).eval()


def encoder_keys(model) -> set[str]:
    return {k for k in model.state_dict() if not k.startswith(("decoder_", "mask_token"))}


def test_ours_splits_encoder_from_decoder(mae, tmp_path):
    init = read_encoder(save_mae_checkpoint(tmp_path / "mae.pth", mae, {"arch": "mae_vit_tiny_patch16"}))
    assert set(init.state_dict) == encoder_keys(mae)
    assert set(init.not_encoder) == set(mae.state_dict()) - encoder_keys(mae)
    for k, v in init.state_dict.items():
        assert torch.equal(v, mae.state_dict()[k]), k
    assert init.name == "mae.pth" and not init.is_scratch
    assert init.sha256 == hashlib.sha256((tmp_path / "mae.pth").read_bytes()).hexdigest()  # provenance of the file
    assert init.arch["embed_dim"] == 64 and init.arch["depth"] == 2


@pytest.mark.parametrize("fmt", ["timm", "hf"])
def test_other_formats_give_the_same_encoder(mae, tmp_path, fmt):
    src = export_timm(mae, tmp_path / "timm.safetensors") if fmt == "timm" else export_hf(mae, tmp_path / "hf")
    init = read_encoder(src)
    assert set(init.state_dict) == encoder_keys(mae)
    for k, v in init.state_dict.items():
        torch.testing.assert_close(v, mae.state_dict()[k], rtol=0, atol=0, msg=k)


def test_scratch_has_no_weights():
    init = read_encoder(SCRATCH)
    assert init.is_scratch and init.state_dict == {} and init.sha256 is None and init.name == "scratch"


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="Known formats"):
        read_encoder(bad)
