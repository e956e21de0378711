"""`maet pipeline`: stages planned from a config, cached by content key, selected, resumed, refused clearly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from benchmarks.pipeline import PipelineError, Stage, data_roots, load_config, plan, run_pipeline, select, start_order
from benchmarks.records import append_record, make_record, read_records
from mae_core.errors import DatasetLayoutError

from .conftest import TINY_IMG, TINY_MODEL
from .helpers import maet, one_thread_env

ENCODER = dict(model="vit_tiny_patch16", model_kwargs={k: v for k, v in TINY_MODEL["model_kwargs"].items()
                                                        if not k.startswith("decoder_")})
COMMON = dict(img_size=TINY_IMG, batch_size=8, num_workers=0, progress=False, **ENCODER)


def config(tmp_path, **changes) -> dict:
    cfg = {
        "name": "tiny-test",
        "output_dir": str(tmp_path / "out"),
        "results_dir": str(tmp_path / "runs"),
        "tables_dir": str(tmp_path / "tables"),
        "seeds": [0],
        "data": {"generate": {
            "pretrain": {"seed": 1, "num_train": 48, "num_val": 12, "img_size": TINY_IMG, "layouts": ["imagenet"]},
            "downstream": {"seed": 2, "num_train": 24, "num_val": 12, "img_size": TINY_IMG,
                           "layouts": ["imagenet"]}}},
        "pretrain": dict(TINY_MODEL, img_size=TINY_IMG, epochs=1, warmup_epochs=0, batch_size=16, num_workers=0,
                         progress=False),
        "supervised": dict(COMMON, epochs=1, warmup_epochs=0),
        "inits": ["mae", "supervised", "scratch"],
        "finetune": dict(COMMON, epochs=1, warmup_epochs=0),
        "linprobe": dict(COMMON, epochs=1, warmup_epochs=0),
    }
    cfg.update(changes)
    return cfg


def write(tmp_path, cfg, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def planned(cfg, out) -> list:
    return plan(cfg, data_roots(cfg, Path(out)), Path(out))


def stage_states(path) -> dict[str, bool]:
    cfg = load_config(path)
    out = Path(cfg["output_dir"])
    return {s.name: s.done for s in planned(cfg, out)}


def test_plan_orders_stages_and_keys_follow_their_inputs(tmp_path):
    cfg = config(tmp_path)
    out = Path(cfg["output_dir"])
    stages = planned(cfg, out)
    assert [s.name for s in stages] == [
        "pretrain", "supervised",
        "finetune/mae/seed0", "finetune/supervised/seed0", "finetune/scratch/seed0",
        "linprobe/mae/seed0", "linprobe/supervised/seed0", "linprobe/scratch/seed0"]
    by_name = {s.name: s for s in stages}
    assert by_name["finetune/mae/seed0"].inputs == ["pretrain"]
    assert by_name["finetune/scratch/seed0"].inputs == []
    # A pretraining recipe change re-keys pretraining and everything that starts from it, nothing else.
    changed = config(tmp_path, pretrain=dict(cfg["pretrain"], epochs=2))
    again = {s.name: s.key for s in planned(changed, out)}
    assert again["pretrain"] != by_name["pretrain"].key
    assert again["finetune/mae/seed0"] != by_name["finetune/mae/seed0"].key
    assert again["finetune/scratch/seed0"] == by_name["finetune/scratch/seed0"].key
    assert again["linprobe/supervised/seed0"] == by_name["linprobe/supervised/seed0"].key


def test_an_edited_protocol_file_rekeys_the_stages_that_use_it(tmp_path, monkeypatch):
    from benchmarks import pipeline

    shipped = pipeline.PROTOCOL_DIRS
    assert (shipped["detection"] / "COCO" / "mask_rcnn_vitdet_tiny_synthetic.py").is_file()
    assert (shipped["segmentation"] / "mae_vit_tiny_upernet_synthetic_ade20k_64x64.py").is_file()
    folder = tmp_path / "protocols"
    folder.mkdir()
    (folder / "tiny.py").write_text("lr = 1e-3\n")
    monkeypatch.setitem(pipeline.PROTOCOL_DIRS, "detection", folder)
    cfg = config(tmp_path, detection={"config": "tiny", "max_iters": 1, "inits": ["scratch"]})

    def keys() -> dict[str, str]:
        return {s.name: s.key for s in planned(cfg, tmp_path / "out")}

    before = keys()
    (folder / "tiny.py").write_text("lr = 3e-3\n")
    after = keys()
    assert after["detection/scratch/seed0"] != before["detection/scratch/seed0"]
    assert after["finetune/scratch/seed0"] == before["finetune/scratch/seed0"]
    own = tmp_path / "my_protocol.py"  # a user's own LazyConfig file counts the same way
    own.write_text("lr = 1e-3\n")
    cfg["detection"]["config"] = str(own)
    first = keys()["detection/scratch/seed0"]
    own.write_text("lr = 3e-3\n")
    assert keys()["detection/scratch/seed0"] != first


def test_a_task_may_run_a_subset_of_the_inits(tmp_path):
    cfg = config(tmp_path, linprobe=dict(COMMON, epochs=1, inits=["mae", "scratch"]))
    stages = planned(cfg, tmp_path / "out")
    assert [s.name for s in stages if s.task == "linprobe"] == ["linprobe/mae/seed0", "linprobe/scratch/seed0"]
    assert not any("--inits" in s.argv for s in stages)
    cfg["linprobe"]["inits"] = ["mae", "moco"]
    with pytest.raises(PipelineError, match=r"linprobe.inits: \['moco'\] are not among"):
        planned(cfg, tmp_path / "out")


def test_an_init_may_have_its_own_recipe_changes(tmp_path):
    cfg = config(tmp_path, finetune=dict(COMMON, epochs=1, blr=5e-3, by_init={"scratch": {"blr": 1e-4}}))
    argv = {s.name: s.argv for s in planned(cfg, tmp_path / "out") if s.task == "finetune"}
    blr = {name: a[a.index("--blr") + 1] for name, a in argv.items()}
    assert blr == {"finetune/mae/seed0": "0.005", "finetune/supervised/seed0": "0.005",
                   "finetune/scratch/seed0": "0.0001"}
    assert not any("--by-init" in a for a in argv.values())
    cfg["finetune"]["by_init"] = {"moco": {"blr": 1e-4}}
    with pytest.raises(PipelineError, match=r"finetune.by_init: \['moco'\] are not among"):
        planned(cfg, tmp_path / "out")


def test_selection_needs_the_inputs_of_what_it_selects(tmp_path):
    cfg = config(tmp_path)
    out = Path(cfg["output_dir"])
    stages = planned(cfg, out)
    assert [s.name for s in select(stages, ["scratch"], [])] == ["finetune/scratch/seed0", "linprobe/scratch/seed0"]
    assert {s.name for s in select(stages, [], ["linprobe", "finetune"])} == {"pretrain", "supervised"}
    with pytest.raises(PipelineError, match="starts from the checkpoint of stage pretrain"):
        select(stages, ["finetune/mae/*"], [])


def test_real_roots_that_are_absent_are_refused_before_any_work(tmp_path):
    cfg = config(tmp_path, data={"pretrain": str(tmp_path / "no-imagenet"), "imagenet": str(tmp_path / "no-in")})
    with pytest.raises(DatasetLayoutError, match=r"data.imagenet: .*no-in.*data.pretrain"):
        run_pipeline(write(tmp_path, cfg))
    assert not (tmp_path / "out").exists()


def test_a_failing_parallel_stage_stops_the_run_and_names_its_log(tmp_path):
    cfg = config(tmp_path, jobs=2, finetune=dict(COMMON, model="vit_no_such_preset"))
    with pytest.raises(PipelineError, match=r"stage finetune/scratch/seed0 failed .*stage\.log"):
        run_pipeline(write(tmp_path, cfg), only=["finetune/scratch/seed0"], tables=False)
    (stage,) = (tmp_path / "out").glob("finetune-scratch-seed0-*")
    assert "vit_no_such_preset" in (stage / "stage.log").read_text() and not (stage / "stage.json").exists()


def test_parallel_stages_start_with_what_others_wait_on_then_the_longest_tasks():
    ready = [Stage(f"{task}/scratch/seed0", task, []) for task in ("finetune", "linprobe", "detection", "segmentation")]
    ready += [Stage("finetune/mae/seed0", "finetune", []), Stage("supervised", "supervised", [])]
    assert [s.name for s in start_order(ready)] == [
        "supervised", "detection/scratch/seed0", "segmentation/scratch/seed0", "finetune/scratch/seed0",
        "finetune/mae/seed0", "linprobe/scratch/seed0"]


def test_unknown_config_keys_are_refused(tmp_path):
    with pytest.raises(PipelineError, match="unknown keys.*'finetuning'"):
        load_config(write(tmp_path, config(tmp_path, finetuning={})))


def test_a_variant_states_only_what_differs_from_its_base(tmp_path):
    base = config(tmp_path)
    base["finetune"] = {**base.get("finetune", {}), "by_init": {"scratch": {"blr": 1e-4}}}
    write(tmp_path, base, "config.yaml")
    (tmp_path / "variant.yaml").write_text(yaml.safe_dump({
        "_base_": "config.yaml", "name": "variant", "inits": ["mae"], "pretrain": {"seed": 1},
        "finetune": {"by_init": None}}))
    cfg = load_config(tmp_path / "variant.yaml")
    assert cfg["name"] == "variant" and cfg["inits"] == ["mae"]
    assert cfg["pretrain"] == {**base["pretrain"], "seed": 1}  # merged key by key
    assert "by_init" not in cfg["finetune"] and cfg["finetune"]["epochs"] == base["finetune"]["epochs"]
    assert cfg["data"] == base["data"]
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\nname: loop\n")
    with pytest.raises(PipelineError, match="leads back to itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("_base_: absent.yaml\nname: orphan\n")
    with pytest.raises(PipelineError, match="absent.yaml does not exist"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "list.yaml").write_text("- name\n")
    with pytest.raises(PipelineError, match="a mapping of keys.*not a list"):
        load_config(tmp_path / "list.yaml")


@pytest.mark.slow
def test_pipeline_runs_caches_and_reruns_only_what_changed(tmp_path):
    path = write(tmp_path, config(tmp_path))
    first = subprocess.run(maet("pipeline", "--config", str(path)), env=one_thread_env(), capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert all(stage_states(path).values())
    records = read_records(tmp_path / "runs")
    downstream = [r for r in records if r["protocol"] == "tiny-test"]
    assert sorted((r["task"], r["init"]) for r in downstream) == sorted(
        (t, i) for t in ("finetune", "linprobe") for i in ("mae", "supervised", "scratch"))
    assert "| mae |" in first.stdout and "## tiny-test (measured)" in first.stdout
    assert {r["output_dir"] for r in downstream} <= {str(p) for p in (tmp_path / "out").iterdir()}
    # Each pretraining's budget beside its result: 48 images, batch 16 (MAE) and 8 (supervised), 6 classes.
    budgets = (tmp_path / "tables" / "tiny-test__pretraining.md").read_text()
    assert budgets in first.stdout
    assert "| pretrain | 1 | 3 | 48 |" in budgets and "| supervised | 1 | 6 | 48 |" in budgets
    assert "chance 16.7 %" in budgets and "loss " in budgets

    # A record of the same protocol from another run (another checkpoint or recipe, an earlier run) is not mixed
    # into the pipeline's table as a second seed; `maet table` over all records shows it.
    foreign = make_record(task="finetune", dataset="imagenet", init="mae", arch=downstream[0]["arch"],
                          metrics={"top1": 99.0}, config={}, seed=1)
    append_record({**foreign, "protocol": "tiny-test"}, tmp_path / "runs")
    records = read_records(tmp_path / "runs")

    # Nothing changed: every stage is skipped and no record is added.
    second = subprocess.run(maet("pipeline", "--config", str(path)), env=one_thread_env(), capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0 and second.stdout.count("skipped") == 8
    assert len(read_records(tmp_path / "runs")) == len(records)
    assert "99.00" not in second.stdout and "seeds [0]" in second.stdout
    table = subprocess.run(maet("table", "--results-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "all"),
                                "--no-plots"), capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "seeds [0, 1]" in table.stdout, table.stdout + table.stderr

    # A stage that did not finish (no stage.json) runs again, and only it.
    stage = next((tmp_path / "out").glob("finetune-scratch-seed0-*"))
    (stage / "stage.json").unlink()
    third = subprocess.run(maet("pipeline", "--config", str(path), "--no-tables"), env=one_thread_env(),
                           capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stdout.count("skipped") == 7 and all(stage_states(path).values())
    assert json.loads((stage / "stage.json").read_text())["name"] == "finetune/scratch/seed0"

    # A recipe change leaves the stages it touches to run, and only those.
    cfg = yaml.safe_load(path.read_text())
    cfg["linprobe"]["blr"] = 0.2
    path.write_text(yaml.safe_dump(cfg))
    assert {name for name, done in stage_states(path).items() if not done} == {
        "linprobe/mae/seed0", "linprobe/supervised/seed0", "linprobe/scratch/seed0"}


@pytest.mark.parametrize("name", ["published_vit_b", "published_vit_l"])
def test_shipped_published_configs_plan_and_refuse_without_data(name, tmp_path):
    path = Path(__file__).resolve().parents[1] / "pipelines" / f"{name}.yaml"
    cfg = load_config(path)
    stages = {s.name: s for s in planned(cfg, tmp_path)}
    assert {"pretrain", "supervised", "finetune/mae/seed0", "linprobe/scratch/seed0"} <= set(stages)
    assert {"b": "mae_vit_base_patch16", "l": "mae_vit_large_patch16"}[name[-1]] in stages["pretrain"].argv
    with pytest.raises(DatasetLayoutError, match="reads data that is not here"):
        run_pipeline(path)


def test_transfer_stages_use_the_one_flag_vocabulary(tmp_path):
    path = Path(__file__).resolve().parents[1] / "pipelines" / "published_vit_b.yaml"
    cfg = load_config(path)
    stages = {s.name: s for s in planned(cfg, tmp_path)}
    from benchmarks.pipeline import launch_command, resolve

    det, seg = stages["detection/mae/seed0"], stages["segmentation/supervised/seed0"]
    det_argv, seg_argv = resolve(det, stages), resolve(seg, stages)
    assert det_argv[:4] == ["detect", "train", "--output-dir", str(det.folder)]
    assert det_argv[det_argv.index("--init") + 1] == str(stages["pretrain"].checkpoint)
    assert {"--config", "vit-b", "--num-processes", "8", "--protocol", "published-vit-b"} <= set(det_argv)
    assert seg_argv[:4] == ["segment", "train", "--output-dir", str(seg.folder)]
    assert seg_argv[seg_argv.index("--init") + 1] == str(stages["supervised"].checkpoint)
    assert "--amp" in seg_argv and seg_argv[seg_argv.index("--data-path") + 1] == "/datasets/ade20k"
    assert det_argv[det_argv.index("--data-path") + 1] == "/datasets/coco"
    # torchrun starts the torchrun engines; detectron2 starts its own processes
    assert launch_command(seg, cfg["launcher"])[:3] == ["torchrun", "--nproc_per_node", "8"]
    assert launch_command(det, cfg["launcher"])[1:] == ["-m", "benchmarks.cli"]


@pytest.mark.parametrize("name", ["synthetic", "synthetic_pseed1", "synthetic_sseed1", "published_vit_b",
                                  "published_vit_l"])
def test_every_planned_command_parses(name, tmp_path, monkeypatch):
    from benchmarks.cli import build_parser
    from benchmarks.cli_args import PathArg
    from benchmarks.pipeline import resolve

    # flags and their values' kinds are checked; the paths (real data roots, checkpoints of earlier stages)
    # do not exist before the run
    monkeypatch.setattr(PathArg, "__call__", lambda self, text: text)

    cfg = load_config(Path(__file__).resolve().parents[1] / "pipelines" / f"{name}.yaml")
    stages = {s.name: s for s in planned(cfg, tmp_path)}
    for stage in stages.values():
        args = build_parser().parse_args(resolve(stage, stages))  # argparse exits on an unknown flag
        assert args.func is not None, stage.name
        if stage.task == "linprobe":  # the demo probes cached features (+ k-NN); the published protocols, LARS
            assert args.probe == ("cached" if name.startswith("synthetic") else "official"), stage.name


def parsed(stage, stages, monkeypatch):
    """A planned stage's command as `maet` parses it (paths of earlier stages and real data are not checked)."""
    from benchmarks.cli import build_parser
    from benchmarks.cli_args import PathArg
    from benchmarks.pipeline import resolve

    monkeypatch.setattr(PathArg, "__call__", lambda self, text: text)
    return build_parser().parse_args(resolve(stage, stages))


@pytest.mark.parametrize("name, epochs, drop_path", [("published_vit_b", 300, 0.1), ("published_vit_l", 200, 0.2)])
def test_published_supervised_stage_is_the_paper_scratch_recipe_and_the_scratch_row(name, epochs, drop_path,
                                                                                    tmp_path, monkeypatch):
    cfg = load_config(Path(__file__).resolve().parents[1] / "pipelines" / f"{name}.yaml")
    stages = {s.name: s for s in planned(cfg, tmp_path)}
    sup = parsed(stages["supervised"], stages, monkeypatch)
    # P Table 11: AdamW (0.9, 0.95), blr 1e-4, wd 0.3, batch 4096, 20 warm-up epochs, 300 (B) / 200 (L) epochs,
    # RandAug (9, 0.5), smoothing 0.1, Mixup 0.8, CutMix 1.0, drop path 0.1 (B) / 0.2 (L), EMA 0.9999; and
    # "disable others": no layer decay, no random erasing
    assert (sup.init, sup.epochs, sup.warmup_epochs, sup.blr, sup.weight_decay, sup.beta2) == \
        ("scratch", epochs, 20, 1e-4, 0.3, 0.95)
    assert sup.batch_size * sup.accum_iter * 8 == 4096 and cfg["launcher"].endswith("--nproc_per_node 8")
    assert (sup.aa, sup.smoothing, sup.mixup, sup.cutmix, sup.drop_path) == \
        ("rand-m9-mstd0.5-inc1", 0.1, 0.8, 1.0, drop_path)
    assert (sup.layer_decay, sup.reprob, sup.model_ema, sup.model_ema_decay, sup.model_ema_warmup) == \
        (1.0, 0.0, True, 0.9999, False)
    # That run is the fine-tune table's scratch row: recorded in the downstream protocol, not trained twice.
    assert "finetune/scratch/seed0" not in stages and "linprobe/scratch/seed0" in stages
    assert (sup.protocol, sup.init_name) == (cfg["name"], "scratch")
    # The rows fine-tuned from a pretrained encoder keep the MAE fine-tune recipe (FINETUNE.md).
    for init in ("mae", "supervised"):
        ft = parsed(stages[f"finetune/{init}/seed0"], stages, monkeypatch)
        assert (ft.model_ema, ft.beta2, ft.layer_decay, ft.reprob) == (False, 0.999, {"b": 0.65, "l": 0.75}[name[-1]],
                                                                      0.25)


def test_scratch_row_reuses_the_supervised_stage_only_on_the_same_data(tmp_path):
    imagenet, other = tmp_path / "imagenet", tmp_path / "other"
    same = {"pretrain": str(imagenet), "imagenet": str(tmp_path / "." / "imagenet")}
    cfg = config(tmp_path, data=same, finetune=dict(COMMON, epochs=1, scratch_row="supervised"))
    stages = {s.name: s for s in planned(cfg, tmp_path / "out")}
    assert "finetune/scratch/seed0" not in stages and "finetune/mae/seed0" in stages
    argv = stages["supervised"].argv
    assert argv[argv.index("--protocol") + 1] == "tiny-test" and argv[argv.index("--init-name") + 1] == "scratch"
    assert "--scratch-row" not in " ".join(s for stage in stages.values() for s in stage.argv)

    cfg["finetune"].pop("scratch_row")  # without it the row is a run of its own, the baseline a protocol of its own
    stages = {s.name: s for s in planned(cfg, tmp_path / "out")}
    argv = stages["supervised"].argv
    assert "finetune/scratch/seed0" in stages and "--init-name" not in argv
    assert argv[argv.index("--protocol") + 1] == "tiny-test: supervised pretraining"

    cfg = config(tmp_path, finetune=dict(COMMON, scratch_row="supervised"))  # generated: two different sets
    with pytest.raises(PipelineError, match="needs one folder for both"):
        planned(cfg, tmp_path / "out")
    cfg = config(tmp_path, data={"pretrain": str(imagenet), "imagenet": str(other)},
                 finetune=dict(COMMON, scratch_row="pretrain"))
    with pytest.raises(PipelineError, match="the only stage it can name is 'supervised'"):
        planned(cfg, tmp_path / "out")
