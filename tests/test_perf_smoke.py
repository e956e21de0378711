"""The pretraining-step benchmark runs on a tiny config and reports what it says (no speed asserted)."""

from __future__ import annotations

import json
import math
import os

import pytest

pytest.importorskip("transformers")
from benchmarks.perf import pretrain_step as bench  # noqa: E402

SMALL = dict(config="tiny", batch=2, steps=2, warmup=1, device="cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_measure_and_ratios_are_consistent():
    cases = [bench.measure(model, "fp32", **SMALL) for model in bench.MODELS]
    for case in cases:
        assert len(case["step_s"]) == 2 and all(s > 0 for s in case["step_s"])
        assert math.isfinite(case["loss_first"]) and case["rss_peak_mb"] > 0
    assert cases[0]["params"] == cases[1]["params"]  # same network size
    assert cases[1]["hf_attn_implementation"] == bench.HF_ATTN

    rows, ratios = bench.summarize(cases)
    by = {r["model"]: r for r in rows}
    assert set(by) == {"ours", "hf"} and all(r["img_per_s_median"] > 0 for r in rows)
    for r in rows:
        assert r["img_per_s_min"] <= r["img_per_s_median"] <= r["img_per_s_max"]
    (ratio,) = ratios
    assert ratio["precision"] == "fp32"
    assert ratio["speed_ours_over_hf"] == pytest.approx(by["ours"]["img_per_s_median"] / by["hf"]["img_per_s_median"])


def test_main_report_and_json(tmp_path, monkeypatch, capsys):
    """The whole command (preflight, alternating rounds, table, JSON) with cases run in-process, not spawned."""
    order = []

    def in_process(model, precision, args):
        order.append((model, precision))
        return bench.measure(model, precision, args.config, args.batch, args.img_size, args.steps, args.warmup,
                             args.device, args.seed)

    monkeypatch.setattr(bench, "run_case", in_process)
    out = tmp_path / "perf.json"
    report = bench.main(["--config", "tiny", "--batch", "2", "--steps", "1", "--warmup", "1", "--repeats", "2",
                         "--precision", "fp32", "bf16", "--device", "cpu", "--threads", "1", "--json", str(out)])
    assert order[:4] == order[4:][::-1]  # the second round runs in reverse order
    assert json.loads(out.read_text())["ratios"] == report["ratios"]
    assert {r["precision"] for r in report["ratios"]} == {"fp32", "bf16"}
    assert report["sanity"]["params"]["ours"] == report["sanity"]["params"]["hf"]
    assert report["sanity"]["loss_abs_diff"] < 1e-5  # our weights in HF: the same loss
    assert {"torch", "transformers", "timm", "threads", "device"} <= set(report["env"])
    assert "ours/HF fp32: speed" in capsys.readouterr().out


OFFICIAL = os.environ.get("MAE_OFFICIAL_DIR", "/tmp/official-mae")  # a checkout of facebookresearch/mae


def test_official_path_without_models_mae_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--config", "tiny", "--official", str(tmp_path)])
    assert exit_.value.code == 2 and "no models_mae.py there" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isfile(os.path.join(OFFICIAL, "models_mae.py")),
                    reason="no official MAE checkout (set MAE_OFFICIAL_DIR)")
def test_official_model_has_our_loss_and_a_ratio(monkeypatch, capsys):
    """The official models_mae.py with our weights and the same seeded noise: the same loss, and a ratio line."""
    monkeypatch.setattr(bench, "run_case", lambda model, precision, args: bench.measure(
        model, precision, args.config, args.batch, args.img_size, args.steps, args.warmup, args.device, args.seed,
        args.official))
    report = bench.main(["--config", "tiny", "--batch", "2", "--steps", "1", "--warmup", "1", "--repeats", "1",
                         "--precision", "fp32", "--device", "cpu", "--threads", "1", "--official", OFFICIAL])
    assert report["sanity"]["loss_abs_diff_official"] < 1e-5
    assert report["sanity"]["params"]["official"] == report["sanity"]["params"]["ours"]
    (ratio,) = report["ratios"]
    by = {r["model"]: r["img_per_s_median"] for r in report["results"]}
    assert ratio["ratio"] == pytest.approx(by["ours"] / by["official"])
    assert "ratio" in capsys.readouterr().out
