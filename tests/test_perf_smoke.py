"""The pretraining-step benchmark runs on a tiny config and reports what it says (no speed asserted)."""

from __future__ import annotations

import json
import math

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
