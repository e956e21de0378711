"""Run records: the docs/design.md contract's fields, one JSON line per run, safe concurrent appends."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from benchmarks.records import FIELDS, append_record, make_record, read_records, record_from_result, results_dir
from mae_core import provenance
from mae_core.result import RunResult

CONTRACT = {"run_id", "task", "dataset", "init", "arch", "metrics", "config", "git_commit", "checkpoint_sha256",
            "seed", "device", "versions", "started_at", "duration_s"}


def record(**overrides) -> dict:
    base = dict(task="finetune", dataset="imagenet", init="mae", arch="vit_base_patch16",
                metrics={"top1": 83.6, "top5": 96.5}, config={"blr": 5e-4, "layer_decay": 0.65}, seed=0,
                device="cuda:0", checkpoint_sha256="ab" * 32, duration_s=12.5, git_commit="0" * 40,
                versions={"torch": "2.x"})
    return make_record(**{**base, **overrides})


def test_a_record_holds_the_contract_fields_with_provenance(monkeypatch):
    monkeypatch.setattr(provenance, "git_commit", lambda: "f" * 40 + "+dirty")
    r = record(git_commit=None, versions=None)
    assert set(FIELDS) == CONTRACT and CONTRACT <= set(r)
    assert r["git_commit"] == "f" * 40 + "+dirty" and r["versions"]["torch"] and r["started_at"].endswith("+00:00")
    assert len(r["run_id"]) == 12 and record()["run_id"] != r["run_id"]
    assert json.loads(json.dumps(r)) == r


def test_a_run_result_becomes_a_record_with_its_provenance_and_overrides():
    """`record_from_result` is the one translation: every RunResult field lands where the contract says."""
    knn = RunResult(task="knn", metrics={"top1": 40.0}, arch="vit_tiny", config={"probe": "cached"},
                    extra={"linprobe_run_id": "abc"})
    result = RunResult(task="linprobe", metrics={"top1": 50.0}, arch="vit_tiny", config={"probe": "cached"}, seed=3,
                       duration_s=1.5, measured_sha256="cd" * 32, device="cpu", started_at="2026-01-01T00:00:00+00:00",
                       provenance={"run_id": "abc", "git_commit": "e" * 40, "versions": {"torch": "2.x"},
                                   "precision": "fp32"}, extra={"headline_weights": "model"}, related=[knn])
    r = record_from_result(result, dataset="synthetic", init="mae", protocol="p")
    assert (r["run_id"], r["task"], r["dataset"], r["init"], r["seed"], r["checkpoint_sha256"], r["git_commit"]) == (
        "abc", "linprobe", "synthetic", "mae", 3, "cd" * 32, "e" * 40)
    assert (r["mode"], r["world_size"], r["precision"], r["headline_weights"], r["protocol"]) == (
        "train", 1, "fp32", "model", "p")
    assert "related" not in r and "provenance" not in r and "epochs" not in r and "iteration" not in r
    assert record_from_result(result, dataset="d", init="i", task="finetune")["task"] == "finetune"  # an override
    k = record_from_result(result.related[0], dataset="d", init="i")
    assert k["task"] == "knn" and k["linprobe_run_id"] == "abc" and k["run_id"] != "abc"
    assert RunResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result  # detection's process hand-off


def test_append_writes_one_line_per_record_per_task(tmp_path):
    first, second = record(), record(init="scratch", metrics={"top1": 82.3})
    path = append_record(first, tmp_path)
    append_record(second, tmp_path)
    append_record(record(task="linprobe", metrics={"top1": 68.0}), tmp_path)
    assert path == tmp_path / "finetune.jsonl"
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [first, second]
    assert [r["task"] for r in read_records(tmp_path)] == ["finetune", "finetune", "linprobe"]
    assert [r["init"] for r in read_records(tmp_path, task="finetune")] == ["mae", "scratch"]


def test_results_dir_comes_from_the_option_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MAET_RESULTS_DIR", str(tmp_path / "env"))
    assert results_dir() == tmp_path / "env"
    assert results_dir(tmp_path / "opt") == tmp_path / "opt"
    append_record(record())
    assert (tmp_path / "env" / "finetune.jsonl").exists()
    monkeypatch.delenv("MAET_RESULTS_DIR")
    assert str(results_dir()) == "results/runs"


@pytest.mark.parametrize("bad, match", [
    (dict(task="classification"), "task must be one of"),
    (dict(metrics={"top1": float("nan")}), "finite number"),
    (dict(metrics={"top1": "83.6"}), "finite number"),
    (dict(metrics={}), "non-empty"),
])
def test_invalid_records_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        record(**bad)


def test_nested_sub_metrics_are_allowed_and_missing_fields_refused(tmp_path):
    r = record(task="detection", metrics={"bbox": {"AP": 51.6, "AP50": 72.0}, "segm": {"AP": 45.9}})
    append_record(r, tmp_path)
    assert read_records(tmp_path, "detection")[0]["metrics"]["segm"]["AP"] == 45.9
    del r["seed"]
    with pytest.raises(ValueError, match="lacks"):
        append_record(r, tmp_path)


def _append_many(args) -> None:
    directory, worker = args
    for i in range(50):  # ~20 KB in many JSON pieces: a json.dump-to-file writer interleaves here
        append_record(record(config={"worker": worker, "i": i, "pad": ["x" * 100] * 200}), directory)


def test_concurrent_appends_never_interleave(tmp_path):
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_append_many, [(str(tmp_path), w) for w in range(4)])
    # (an append that sees another's line half-written starts on a new line: a blank line, which readers skip)
    lines = [line for line in (tmp_path / "finetune.jsonl").read_text().splitlines() if line]
    assert len(lines) == 200
    parsed = [json.loads(line) for line in lines]  # every line is one whole record
    assert sorted((r["config"]["worker"], r["config"]["i"]) for r in parsed) == [(w, i) for w in range(4)
                                                                                 for i in range(50)]


def test_a_torn_line_is_skipped_with_a_warning(tmp_path):
    append_record(record(), tmp_path)
    with open(tmp_path / "finetune.jsonl", "a") as f:
        f.write('{"run_id": "half a rec\n')
    append_record(record(init="scratch"), tmp_path)
    with pytest.warns(UserWarning, match="finetune.jsonl:2"):
        assert [r["init"] for r in read_records(tmp_path)] == ["mae", "scratch"]


def test_a_record_after_a_line_cut_off_without_its_newline_is_kept(tmp_path):
    """A writer killed mid-line leaves no newline: the next record must not be glued onto it (found by a review)."""
    append_record(record(), tmp_path)
    with open(tmp_path / "finetune.jsonl", "a") as f:
        f.write('{"run_id": "half a rec')
    append_record(record(init="scratch"), tmp_path)
    with pytest.warns(UserWarning, match="finetune.jsonl:2"):
        assert [r["init"] for r in read_records(tmp_path)] == ["mae", "scratch"]


def test_a_run_log_cut_off_by_a_kill_still_resumes(tmp_path):
    from mae_core.train.metrics import MetricsLog

    log = MetricsLog(tmp_path / "log.jsonl", tensorboard=False)
    for step in range(1, 5):
        log.write(epoch=(step - 1) // 2, step=step, loss=1.0 / step)
    with open(log.path, "ab") as f:
        f.write(b'{"epoch": 2, "step": 5, "lo\xff')  # killed mid-write
    log.truncate_from_epoch(1)  # resume at epoch 1: what epoch 0 logged stays, the rest goes
    assert [r["step"] for r in log.read()] == [1, 2]
