"""Pipeline stages as submitit jobs: `launcher: slurm` (a SLURM cluster) or `launcher: local-submitit` (the same
jobs on this machine, through submitit's LocalExecutor: how the tests run this code without a cluster).

As the official MAE's `submitit_pretrain.py`: one job per stage, with submitit's `AutoExecutor`, one task per
GPU, and a callable whose `checkpoint()` requeues itself on preemption or time-out (our engines resume from
their output folder by default, so the requeued job continues where the killed one stopped). Resources come
from the config's `slurm:` block: defaults at its top level, per-task overrides under a task's name. A stage
that starts from another stage's checkpoint waits for that job: SLURM's `afterok` dependency, or, with the
local executor (which has no dependencies), the driver waits for the input job before submitting.

The rendezvous each engine needs comes from `submitit.JobEnvironment` (through submitit's
`TorchDistributedEnvironment`): torchrun's variables (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK) for ours
and mmengine's (segmentation gets `--launcher pytorch` when it spans several processes); detectron2 starts its
own process per GPU, so a detection job runs one task per node with `--num-gpus/--num-machines/--machine-rank/
--dist-url`. The job ids are kept in `<output_dir>/submitit/jobs.json` for `maet pipeline --status`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .pipeline_config import PipelineError

LAUNCHERS = {"slurm": "slurm", "local-submitit": "local"}  # config `launcher` -> submitit cluster
RESOURCES = {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": None, "cpus_per_task": 1, "mem_gb": None,
             "timeout_min": 60, "partition": None, "account": None, "constraint": None, "max_requeues": 3}
STAGE_TASKS = ("pretrain", "supervised", "finetune", "linprobe", "detection", "segmentation")
JOBS_FILE = "jobs.json"


def uses_submitit(cfg: dict) -> bool:
    return cfg.get("launcher") in LAUNCHERS


def resources(cfg: dict, task: str) -> dict:
    """A task's job resources: RESOURCES, then the `slurm:` block's top level, then its entry for the task."""
    block = dict(cfg.get("slurm") or {})
    unknown = set(block) - set(RESOURCES) - set(STAGE_TASKS)
    if unknown:
        raise PipelineError(f"slurm: unknown keys {sorted(unknown)}; it takes {sorted(RESOURCES)} as defaults and "
                            f"per-task blocks named {list(STAGE_TASKS)}")
    override = block.pop(task, None) or {}
    if bad := set(override) - set(RESOURCES):
        raise PipelineError(f"slurm.{task}: unknown keys {sorted(bad)}; a task block takes {sorted(RESOURCES)}")
    res = {**RESOURCES, **{k: v for k, v in block.items() if k not in STAGE_TASKS}, **override}
    at_least = {"nodes": 1, "cpus_per_task": 1, "timeout_min": 1, "tasks_per_node": 1, "gpus_per_node": 0,
                "max_requeues": 0}
    for key, low in at_least.items():
        if (res[key] is not None or key != "tasks_per_node") and (not isinstance(res[key], int) or res[key] < low):
            raise PipelineError(f"slurm.{task}.{key}: {res[key]!r} is not a whole number in range")
    if cfg["launcher"] == "local-submitit" and res["nodes"] > 1:
        raise PipelineError(f"slurm.{task}.nodes: {res['nodes']}, but launcher local-submitit runs on this one "
                            "machine; use launcher: slurm, or nodes: 1")
    return res


def tasks_per_node(task: str, res: dict) -> int:
    """One task per GPU (torchrun's layout; `tasks_per_node` sets it on CPU nodes), except detection:
    detectron2's `launch` starts its own process per GPU."""
    if task == "detection":
        return 1
    return res["tasks_per_node"] or max(1, res["gpus_per_node"])


def executor_parameters(cfg: dict, stage, dependency: list[str]) -> dict:
    """The AutoExecutor parameters of a stage's job (the slurm_* ones are ignored by the local executor)."""
    res = resources(cfg, stage.task)
    params = {"name": f"{cfg['name']}:{stage.name}", "nodes": res["nodes"], "gpus_per_node": res["gpus_per_node"],
              "tasks_per_node": tasks_per_node(stage.task, res), "cpus_per_task": res["cpus_per_task"],
              "timeout_min": res["timeout_min"]}
    if res["mem_gb"] is not None:
        params["mem_gb"] = res["mem_gb"]
    for key in ("partition", "account", "constraint"):
        if res[key]:
            params[f"slurm_{key}"] = res[key]
    if dependency:
        params["slurm_additional_parameters"] = {"dependency": "afterok:" + ":".join(dependency)}
    return params


@dataclass
class StageJob:
    """What one task of a stage's job runs: the stage's maet command, with the rendezvous of its engine."""

    stage: object  # pipeline.Stage
    argv: list[str]  # the resolved maet command
    gpus_per_node: int
    finish: Callable  # pipeline.finish_stage: fail clearly or write stage.json (passed in: pipeline imports us)
    log_name: str = "stage.log"

    def __call__(self) -> str:
        import submitit

        if self.stage.done:  # a requeued job whose stage finished before it was stopped
            return "done earlier"
        job = submitit.JobEnvironment()
        dist = submitit.helpers.TorchDistributedEnvironment()
        argv, env = list(self.argv), dict(os.environ)
        if self.stage.task == "detection":
            if self.gpus_per_node:
                argv += ["--num-gpus", str(self.gpus_per_node)]
            if job.num_nodes > 1:
                argv += ["--num-machines", str(job.num_nodes), "--machine-rank", str(job.node),
                         "--dist-url", f"tcp://{dist.master_addr}:{dist.master_port}"]
        else:
            env.update(MASTER_ADDR=dist.master_addr, MASTER_PORT=str(dist.master_port), RANK=str(dist.rank),
                       WORLD_SIZE=str(dist.world_size), LOCAL_RANK=str(dist.local_rank),
                       LOCAL_WORLD_SIZE=str(dist.local_world_size))
            if self.stage.task == "segmentation" and dist.world_size > 1 and "--launcher" not in argv:
                argv += ["--launcher", "pytorch"]
        log = self.stage.folder / (self.log_name if job.global_rank == 0 else f"stage.rank{job.global_rank}.log")
        t0 = time.perf_counter()
        with open(log, "ab") as out:
            out.write(f"[job {job.job_id}, task {job.global_rank}] maet {shlex.join(argv)}\n".encode())
            out.flush()
            rc = subprocess.run([sys.executable, "-m", "benchmarks.cli", *argv], env=env, stdout=out,
                                stderr=subprocess.STDOUT).returncode
        if job.global_rank == 0:
            self.finish(self.stage, self.argv, rc, time.perf_counter() - t0, f"job {job.job_id}")
        elif rc:
            raise PipelineError(f"stage {self.stage.name}: task {job.global_rank} failed (exit {rc}); see {log}")
        return "finished"

    def checkpoint(self, *args, **kwargs):
        """Preempted or out of time: requeue the same stage; its engine resumes from its output folder."""
        import submitit

        return submitit.helpers.DelayedSubmission(StageJob(self.stage, self.argv, self.gpus_per_node, self.finish,
                                                            self.log_name))


def _submitit():
    try:
        import submitit
    except ImportError:
        raise PipelineError("launcher slurm / local-submitit runs stages through submitit, which is not installed: "
                            "pip install 'mae-transfer[slurm]' (or pip install submitit)") from None
    return submitit


def jobs_folder(cfg: dict) -> Path:
    return Path(cfg["output_dir"]) / "submitit"


def describe(cfg: dict, chosen: list, by_name: dict, resolve: Callable) -> None:
    """`--dry-run`: each stage's job parameters, its dependency and its command."""
    print(f"launcher {cfg['launcher']}: one submitit job per stage (logs in {jobs_folder(cfg)})")
    names = {s.name for s in chosen}
    for s in chosen:
        res = resources(cfg, s.task)
        after = [i for i in s.inputs if i in names and not by_name[i].done]
        print(f"{s.name:32s} {'done' if s.done else 'to run':7s} nodes {res['nodes']}, gpus/node "
              f"{res['gpus_per_node']}, tasks/node {tasks_per_node(s.task, res)}, cpus/task {res['cpus_per_task']}, "
              f"mem {res['mem_gb'] or '-'} GB, time {res['timeout_min']} min, partition {res['partition'] or '-'}, "
              f"account {res['account'] or '-'}, dependency {'afterok:' + ','.join(after) if after else '-'}\n"
              f"{'':32s} maet {shlex.join(resolve(s, by_name))}")


def submit(cfg: dict, chosen: list, by_name: dict, resolve: Callable, finish: Callable, log_name: str) -> bool:
    """Submit every stage not done yet as a job; returns True when they have all finished (the local executor,
    whose jobs this process waits for), False when they were left queued on SLURM."""
    submitit = _submitit()

    cluster = LAUNCHERS[cfg["launcher"]]
    folder = jobs_folder(cfg)
    ids_file = folder / JOBS_FILE
    known = json.loads(ids_file.read_text()) if ids_file.is_file() else {}
    jobs: dict[str, object] = {}
    for stage in chosen:
        if stage.done:
            continue
        waits = [jobs[i] for i in stage.inputs if i in jobs]
        if cluster == "local":  # no dependencies here: wait for the input jobs
            for job in waits:
                _wait(job, by_name)
        res = resources(cfg, stage.task)  # requeues on preemption / time-out: an executor's own setting
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster,
                                         slurm_max_num_timeout=res["max_requeues"])
        executor.update_parameters(**executor_parameters(cfg, stage, [j.job_id for j in waits]))
        job = executor.submit(StageJob(stage, resolve(stage, by_name), res["gpus_per_node"], finish, log_name))
        jobs[stage.name] = job
        known[stage.name] = {"job_id": job.job_id, "cluster": cluster, "key": stage.key,
                             "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        ids_file.write_text(json.dumps(known, indent=2))
        print(f"{stage.name}: submitted job {job.job_id}"
              f"{' after ' + ', '.join(j.job_id for j in waits) if waits else ''}", flush=True)
    if cluster == "slurm":
        print(f"{len(jobs)} jobs queued; `maet pipeline --config ... --status` shows where they are", flush=True)
        return not jobs
    for job in jobs.values():
        _wait(job, by_name)
    return True


def _wait(job, by_name: dict) -> None:
    import submitit

    try:
        job.results()  # every task of the job (one per GPU)
    except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as e:
        raise PipelineError(f"job {job.job_id} failed: {str(e).strip().splitlines()[-1] if str(e).strip() else e}; "
                            f"its submitit logs are {job.paths.stderr}. Fix the cause and run the pipeline again: "
                            "finished stages are skipped and this one resumes from its last checkpoint.") from None


def status(cfg: dict, stages: list) -> list[tuple[str, str, str]]:
    """(stage, job id, state) for each planned stage: `done` once its stage.json exists, else the job's state."""
    submitit = _submitit()

    ids_file = jobs_folder(cfg) / JOBS_FILE
    known = json.loads(ids_file.read_text()) if ids_file.is_file() else {}
    rows = []
    for stage in stages:
        entry = known.get(stage.name)
        if stage.done:
            rows.append((stage.name, entry["job_id"] if entry else "-", "done"))
        elif entry is None or entry["key"] != stage.key:
            rows.append((stage.name, "-", "not submitted"))
        else:
            kind = submitit.SlurmJob if entry["cluster"] == "slurm" else submitit.LocalJob
            job = kind(folder=jobs_folder(cfg) / "%j", job_id=entry["job_id"])
            rows.append((stage.name, entry["job_id"], job.state))
    return rows
