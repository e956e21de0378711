"""The encoder-asymmetry benchmark on a tiny config: not timed; checks the baseline really encodes all L tokens."""

from __future__ import annotations

import pytest
import torch

from benchmarks.perf import asymmetry

pytestmark = pytest.mark.usefixtures("one_thread")


def test_baseline_encodes_every_patch_and_shares_the_mask_and_target():
    mae, base = (asymmetry.build(v, "tiny", decoder_depth=1) for v in asymmetry.VARIANTS)
    imgs, (noise,) = asymmetry.inputs(mae, 2, 1, seed=0)
    length = mae.patch_embed.num_patches  # 16 patches of 8 px at 32 px
    assert asymmetry.encoder_tokens(mae, imgs, noise) == 1 + length // 4  # visible only (mask 0.75)
    assert asymmetry.encoder_tokens(base, imgs, noise) == 1 + length  # every patch, as a mask token if removed
    out_mae, out_base = mae(imgs, noise=noise), base(imgs, noise=noise)
    assert torch.equal(out_mae.mask, out_base.mask) and out_base.pred.shape == out_mae.pred.shape

    # the removed patches reach the baseline's encoder as the mask token: their pixels do not matter
    changed = imgs.clone()
    removed = out_mae.mask[0].nonzero()[0].item()
    row, col = divmod(removed, mae.grid_size[1])
    p = mae.patch_size
    changed[0, :, row * p:(row + 1) * p, col * p:(col + 1) * p] += 5.0
    with torch.no_grad():
        latent = base.forward_encoder(imgs, 0.75, noise)[0]
        assert torch.allclose(latent, base.forward_encoder(changed, 0.75, noise)[0], atol=1e-6)


def test_cases_and_ratios(capsys):
    cases = [asymmetry.measure(v, "tiny", d, batch=2, steps=1, warmup=1) for d in (2, 1) for v in asymmetry.VARIANTS]
    rows = asymmetry.compare(cases)
    assert [r["decoder_depth"] for r in rows] == [2, 1]
    for r in rows:
        assert r["encoder_tokens"] == {"mae": 5, "baseline": 17}
        assert r["speed_up"] > 0 and r["flop_ratio"] > 1.5  # the encoder does ~4x the work on all tokens
    # FLOPs: independent count for the encoder's linear layers alone, from the token counts
    by = {(c["variant"], c["decoder_depth"]): c for c in cases}
    enc = asymmetry.build("mae", "tiny", 1).blocks
    dim, depth = enc[0].norm1.normalized_shape[0], len(enc)
    linear_macs_per_token = depth * (3 * dim * dim + dim * dim + 2 * 4 * dim * dim)
    extra = by["mask_tokens_in_encoder", 1]["flops_per_step"] - by["mae", 1]["flops_per_step"]
    assert extra >= 2 * 3 * linear_macs_per_token * (17 - 5) * 2  # fwd + 2x bwd, 12 more tokens, batch 2
