"""The README's main job, shortened: data -> pretraining -> reconstruction grid + loss curve."""

import pytest
from PIL import Image

from benchmarks.demo import run_demo


@pytest.mark.slow
def test_demo_end_to_end_loss_falls_and_figures_are_written(tmp_path):
    result = run_demo(tmp_path, epochs=4, num_train=384)
    losses = result["epoch_losses"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    grid = Image.open(result["grid"])
    assert grid.size == (4 * 164 + 4, 18 + 8 * 164 + 4)  # 4 panels of 160 px + 4 px padding, 8 rows, titles
    assert Image.open(result["loss_curve"]).size[0] > 0
    assert result["checkpoint"].exists()
