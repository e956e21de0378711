"""`launcher: slurm` / `local-submitit`: pipeline stages as submitit jobs, with per-task resources, dependencies,
job ids kept for `--status`, and the same results as the local launcher."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks.pipeline import PipelineError, load_config, run_pipeline
from benchmarks.records import read_records

from .helpers import maet, one_thread_env
from .test_pipeline import config, planned, write

SLURM = {"partition": "learnfair", "account": "mae", "gpus_per_node": 8, "cpus_per_task": 10, "mem_gb": 480,
         "timeout_min": 4320, "pretrain": {"nodes": 8}, "detection": {"nodes": 2, "timeout_min": 2880}}


def test_dry_run_shows_each_job_with_its_resources_and_dependency(tmp_path, capsys):
    cfg = config(tmp_path, launcher="slurm", slurm=SLURM, inits=["mae", "scratch"],
                 detection={"config": "tiny", "max_iters": 1})
    run_pipeline(write(tmp_path, cfg), dry_run=True)
    lines = capsys.readouterr().out.splitlines()
    pretrain = next(line for line in lines if line.startswith("pretrain "))
    assert "nodes 8, gpus/node 8, tasks/node 8, cpus/task 10, mem 480 GB, time 4320 min, partition learnfair, " \
           "account mae, dependency -" in pretrain
    det = next(line for line in lines if line.startswith("detection/mae/seed0"))
    # detectron2 starts its own process per GPU: one task per node
    assert "nodes 2, gpus/node 8, tasks/node 1," in det and "time 2880 min" in det
    assert "dependency afterok:pretrain" in det
    ft = lines[lines.index(next(line for line in lines if line.startswith("finetune/scratch/seed0"))) + 1]
    assert ft.strip().startswith("maet finetune --output-dir")


def test_job_parameters_follow_the_slurm_block(tmp_path):
    from benchmarks.slurm import executor_parameters

    cfg = config(tmp_path, launcher="slurm", slurm=SLURM, detection={"config": "tiny"})
    stages = {s.name: s for s in planned(cfg, tmp_path / "out")}
    params = executor_parameters(cfg, stages["pretrain"], [])
    assert params == {"name": "tiny-test:pretrain", "nodes": 8, "gpus_per_node": 8, "tasks_per_node": 8,
                      "cpus_per_task": 10, "mem_gb": 480, "timeout_min": 4320,
                      "slurm_partition": "learnfair", "slurm_account": "mae"}
    det = executor_parameters(cfg, stages["detection/mae/seed0"], ["123", "124"])
    assert det["tasks_per_node"] == 1 and det["slurm_additional_parameters"] == {"dependency": "afterok:123:124"}


@pytest.mark.parametrize("slurm, message", [
    ({"gpus": 8}, r"slurm: unknown keys \['gpus'\]"),
    ({"finetune": {"walltime": 3}}, r"slurm.finetune: unknown keys \['walltime'\]"),
    ({"nodes": 0}, r"slurm.pretrain.nodes: 0 is not a whole number"),
])
def test_a_bad_slurm_block_is_refused(tmp_path, slurm, message):
    cfg = config(tmp_path, launcher="slurm", slurm=slurm)
    with pytest.raises(PipelineError, match=message):
        run_pipeline(write(tmp_path, cfg), dry_run=True)


def test_local_submitit_is_one_machine(tmp_path):
    cfg = config(tmp_path, launcher="local-submitit", slurm={"pretrain": {"nodes": 2}})
    with pytest.raises(PipelineError, match="launcher local-submitit runs on this one machine"):
        run_pipeline(write(tmp_path, cfg), dry_run=True)


def metrics_of(runs: Path) -> dict:
    """Each record's metrics without its timing fields (img/s, seconds differ from run to run)."""
    timing = ("per_s", "time", "duration", "seconds")
    return {(r["task"], r["init"]): {k: v for k, v in r["metrics"].items() if not any(t in k for t in timing)}
            for r in read_records(runs)}


@pytest.mark.slow
def test_stages_as_local_submitit_jobs_finish_with_the_local_launchers_records(tmp_path):
    results = {}
    for launcher in ("local", "local-submitit"):
        root = tmp_path / launcher
        root.mkdir()
        cfg = config(root, inits=["mae"])
        del cfg["linprobe"], cfg["supervised"]
        if launcher != "local":
            cfg.update(launcher=launcher, slurm={"timeout_min": 20})
        path = write(root, cfg)
        run = subprocess.run(maet("pipeline", "--config", str(path), "--no-tables"), env=one_thread_env(),
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        results[launcher] = (path, run.stdout, metrics_of(root / "runs"))
    path, stdout, metrics = results["local-submitit"]
    assert metrics == results["local"][2] and ("finetune", "mae") in metrics and metrics[("finetune", "mae")]
    # each stage ran as a job whose id is kept, and the dependent one was submitted after its input finished
    jobs = json.loads((Path(load_config(path)["output_dir"]) / "submitit" / "jobs.json").read_text())
    assert set(jobs) == {"pretrain", "finetune/mae/seed0"}
    assert f"finetune/mae/seed0: submitted job {jobs['finetune/mae/seed0']['job_id']} after " \
           f"{jobs['pretrain']['job_id']}" in stdout
    status = subprocess.run(maet("pipeline", "--config", str(path), "--status"), env=one_thread_env(),
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and status.stdout.count("done") == 2, status.stdout + status.stderr


@pytest.mark.slow
def test_a_two_task_job_gets_the_torchrun_rendezvous(tmp_path):
    """Two tasks of one local job: each runs the engine with RANK / WORLD_SIZE / MASTER_* from submitit's
    JobEnvironment, and they train as one 2-process DDP run (gloo)."""
    cfg = config(tmp_path, inits=["mae"], launcher="local-submitit", slurm={"tasks_per_node": 2, "timeout_min": 10})
    for task in ("supervised", "finetune", "linprobe"):
        del cfg[task]
    path = write(tmp_path, cfg)
    run = subprocess.run(maet("pipeline", "--config", str(path), "--no-tables"), env=one_thread_env(),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (stage,) = (tmp_path / "out").glob("pretrain-*")
    run_info = json.loads((stage / "config.json").read_text())
    assert run_info["world_size"] == 2 and run_info["effective_batch"] == 2 * cfg["pretrain"]["batch_size"]
    assert (stage / "stage.json").is_file() and (stage / "stage.rank1.log").is_file()
