"""`maet pipeline --config pipelines/<name>.yaml`: pretrain -> {finetune, linprobe, detection, segmentation} x inits.

Every stage is one `maet` command run in a subprocess, exactly what a user would type (its own
progress bars, logs and run record), in a folder named by the stage's content key: a hash of its
command line, of the checkpoints it starts from and of the detection / segmentation protocol files
it reads. A finished stage leaves `stage.json` there, so a second run skips it; a killed stage
leaves its engine's resumable checkpoint, so running the pipeline again resumes it. Changing a
recipe value, a protocol file or an input checkpoint changes the key: a new run, never a stale one.

The config (see pipelines/synthetic.yaml; read and checked in pipeline_config.py) names the data
(generated, or real roots), the MAE pretraining (or a given checkpoint), the supervised baseline
(classification from scratch on the pretraining data), the inits to compare (a task's `inits` may
pick a subset), each task's flags, and the seeds of the downstream runs. `jobs: N` runs up to N
stages at once, each as soon as the checkpoints it starts from exist, with the CPU threads shared
out and each stage's output in its `stage.log`.

The fine-tune table's scratch row trains a ViT from scratch on the downstream ImageNet. Where the
pretraining data is that same ImageNet (the published pipelines), the supervised stage already is
that run, with the recipe the paper's scratch numbers come from (P Table 11, with its EMA):
`finetune: {scratch_row: supervised}` then makes the supervised stage's record the scratch row,
and no `finetune/scratch` stage is planned; the row has the supervised stage's one seed (training
the same model on the same data with the same recipe twice would cost 300 ImageNet epochs of a ViT-B
again). Where the data differ (the demo), `by_init: {scratch: {blr: ..., ...}}` in a task gives an
init its own recipe changes: a ViT from scratch does not train at a pretrained encoder's learning rate.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mae_core.ckpt_io import sha256_file
from mae_core.errors import DatasetLayoutError
from transfer.detection.config import CONFIG_DIR as DETECTION_CONFIGS
from transfer.segmentation import CONFIG_DIR as SEGMENTATION_CONFIGS

from . import slurm
from .budgets import pretraining_table
from .pipeline_config import (
    TASKS,
    PipelineError,
    content_key,
    data_roots,
    inits_of,
    load_config,
    scratch_row_is_supervised,
    tables_dir,
)

STAGE_DONE = "stage.json"
STAGE_LOG = "stage.log"  # a stage's output when stages run in parallel (`jobs` > 1)
# What each task's command is and which data root it reads. Every training command takes the same flags
# (README, "Flags of the training commands"): --data-path, --output-dir (which also resumes a killed stage), ...
COMMANDS = {"pretrain": (["pretrain"], "pretrain"), "supervised": (["finetune"], "pretrain"),
            "finetune": (["finetune"], "imagenet"), "linprobe": (["linprobe"], "imagenet"),
            "detection": (["detect", "train"], "coco"), "segmentation": (["segment", "train"], "ade20k")}
PRODUCES = {"pretrain": "mae_pretrain.pth", "supervised": "finetuned.pth"}  # checkpoints later stages start from
# Which ready stage starts first when stages run in parallel: the ones others wait on, then the transfer tasks
# from the longest to the shortest, so that the short ones fill the gaps at the end (in the plan's order the
# demo ended on a long segmentation stage with one core idle).
START_ORDER = ("pretrain", "supervised", "detection", "segmentation", "finetune", "linprobe")
# The shipped protocol files of the dense tasks. A protocol imports its neighbours (tiny -> ViT-B -> the LSJ
# loader; mmseg `_base_`s), and a user's own may import them too, so the whole folder enters the stage key.
PROTOCOL_DIRS = {"detection": DETECTION_CONFIGS, "segmentation": SEGMENTATION_CONFIGS}


@dataclass
class Stage:
    name: str  # e.g. "finetune/mae/seed0"
    task: str  # a key of COMMANDS
    argv: list[str]  # the maet command's flags, without --output-dir (it holds the key)
    inputs: list[str] = field(default_factory=list)  # names of the stages whose checkpoints it reads
    key: str = ""
    folder: Path | None = None

    @property
    def done(self) -> bool:
        return (self.folder / STAGE_DONE).is_file()

    @property
    def checkpoint(self) -> Path | None:
        return self.folder / PRODUCES[self.task] if self.task in PRODUCES else None


def flags(options: dict) -> list[str]:
    """A dict of options as maet flags: `blr: 1e-3` -> `--blr 1e-3`; bools -> --x / --no-x; dicts -> JSON;
    lists -> several values (`cfg_options`, the KEY=VALUE overrides of `maet detect/segment`, go last)."""
    argv = []
    for key, value in sorted(options.items(), key=lambda kv: isinstance(kv[1], list)):
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value, sort_keys=True)]
        elif isinstance(value, list):  # nargs="+" options, e.g. --cfg-options
            argv += [flag, *map(str, value)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def plan(cfg: dict, roots: dict[str, Path], out: Path) -> list[Stage]:
    """Every stage in run order, with its command, inputs, content key and folder."""
    stages: dict[str, Stage] = {}
    results = ["--results-dir", str(Path(cfg.get("results_dir") or "results/runs").resolve())]
    record = [*results, "--protocol", cfg["name"]]
    inits = inits_of(cfg)
    reuse = scratch_row_is_supervised(cfg, roots)
    needs_pretrain = "mae" in inits and "checkpoint" not in (cfg.get("pretrain") or {})
    if needs_pretrain:
        stages["pretrain"] = _stage("pretrain", "pretrain", roots, cfg["pretrain"], [])
    if "supervised" in inits or reuse:
        sup = {"init": "scratch", **(cfg.get("supervised") or {})}
        # Its top-1 is on the pretraining data: a protocol of its own, never in the downstream table; unless
        # that data is the downstream ImageNet and the run is the fine-tune table's scratch row (`scratch_row`).
        label = ["--protocol", cfg["name"], "--init-name", "scratch"] if reuse else \
            ["--protocol", f"{cfg['name']}: supervised pretraining"]
        stages["supervised"] = _stage("supervised", "supervised", roots, sup, [*results, *label])
    for task in TASKS:
        if task not in cfg:
            continue
        recipe = dict(cfg[task])
        recipe.pop("scratch_row", None)
        chosen = recipe.pop("inits", list(inits))  # a task may run a subset of the inits
        by_init = recipe.pop("by_init", None) or {}  # an init's own recipe changes, e.g. scratch's from-scratch lr
        for key, names in (("inits", chosen), ("by_init", list(by_init))):
            if unknown := [i for i in names if i not in inits]:
                raise PipelineError(f"{task}.{key}: {unknown} are not among the config's inits {list(inits)}")
        for init, source in inits.items():
            if init not in chosen or (reuse and task == "finetune" and init == "scratch"):
                continue
            for seed in cfg["seeds"]:
                name = f"{task}/{init}/seed{seed}"
                ckpt, inputs = _init_checkpoint(cfg, stages, init, source)
                options = {**recipe, **by_init.get(init, {}), "seed": seed, "init": ckpt}
                stages[name] = _stage(name, task, roots, options, record + ["--init-name", init], inputs)
    for stage in stages.values():  # keys after all stages exist: an input's key enters its users' keys
        inputs = {i: stages[i].key for i in stage.inputs}
        files = {**{p: sha256_file(p) for p in _user_files(stage.argv)}, **_protocol_files(stage)}
        stage.key = content_key({"argv": stage.argv, "inputs": inputs, "files": files})
        stage.folder = out / f"{stage.name.replace('/', '-')}-{stage.key[:10]}"
    return list(stages.values())


def _stage(name, task, roots, options, extra, inputs=()) -> Stage:
    _, root = COMMANDS[task]  # flags(options) last: it ends with the key=value overrides
    return Stage(name=name, task=task, argv=["--data-path", str(roots[root]), *extra, *flags(options)],
                 inputs=list(inputs))


def _init_checkpoint(cfg, stages, init, source) -> tuple[str, list[str]]:
    if source == "scratch":
        return "scratch", []
    if source == "mae" and "checkpoint" in (cfg.get("pretrain") or {}):
        return str(cfg["pretrain"]["checkpoint"]), []
    if source in ("mae", "supervised"):
        stage = "pretrain" if source == "mae" else "supervised"
        return f"@{stage}", [stage]  # resolved to the stage's checkpoint once its folder is known
    return source, []


def _user_files(argv: list[str]) -> list[str]:
    """Checkpoint files a command reads that no stage produced (published weights): their hash enters the key."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--init" and Path(argv[i + 1]).is_file()]


def _protocol_files(stage: Stage) -> dict[str, str]:
    """The hashes of the protocol files a dense stage may read (the shipped folder, and the user's own file if
    `--config` names one): an edited protocol re-runs its stages."""
    if stage.task not in PROTOCOL_DIRS:
        return {}
    folder = PROTOCOL_DIRS[stage.task]
    files = {str(f.relative_to(folder)): sha256_file(f) for f in sorted(folder.rglob("*.py"))}
    config = stage.argv[stage.argv.index("--config") + 1] if "--config" in stage.argv[:-1] else ""
    return {**files, config: sha256_file(config)} if Path(config).is_file() else files


def resolve(stage: Stage, stages: dict[str, Stage]) -> list[str]:
    """The full maet command: `@stage` inputs replaced by that stage's checkpoint, the output folder added."""
    argv = [str(stages[a[1:]].checkpoint) if a.startswith("@") else a for a in stage.argv]
    command, _ = COMMANDS[stage.task]
    return [*command, "--output-dir", str(stage.folder), *argv]


def select(stages: list[Stage], only: list[str], skip: list[str]) -> list[Stage]:
    """`--only` / `--skip` patterns: a task (`finetune`), an init (`mae`), a stage name, or a glob of one."""
    def matches(stage: Stage, pattern: str) -> bool:
        return fnmatch.fnmatch(stage.name, pattern) or pattern in stage.name.split("/")

    chosen = [s for s in stages if (not only or any(matches(s, p) for p in only))
              and not any(matches(s, p) for p in skip)]
    names = {s.name for s in chosen}
    by_name = {s.name: s for s in stages}
    for stage in chosen:
        for need in stage.inputs:
            if need not in names and not by_name[need].done:
                raise PipelineError(f"stage {stage.name} starts from the checkpoint of stage {need}, which has not "
                                    f"run: select it too (or drop it from --skip)")
    return chosen


def check_roots(cfg: dict, roots: dict[str, Path], stages: list[Stage]) -> None:
    """Refuse before any work when a real data root a selected stage reads is absent."""
    if "generate" in cfg["data"]:
        return
    needed = {COMMANDS[s.task][1] for s in stages}
    missing = [f"data.{name}: {roots.get(name, '(not set)')}" for name in sorted(needed)
               if name not in roots or not roots[name].is_dir()]
    if missing:
        raise DatasetLayoutError(
            f"pipeline '{cfg['name']}' reads data that is not here: {'; '.join(missing)}. Point these keys of the "
            "config at the dataset roots (ImageNet train/ val/ folders, the COCO root with annotations/, the "
            "folder holding ADEChallengeData2016/), or run a subset with --only/--skip.")


def generate_data(cfg: dict, roots: dict[str, Path]) -> None:
    from mae_core.data import write_synthetic

    gen = cfg["data"]["generate"]
    for part in ("pretrain", "downstream"):
        base = roots["pretrain" if part == "pretrain" else "imagenet"].parent
        if (base / ".complete").is_file():
            continue
        options = dict(gen[part])
        print(f"[data] writing the generated {part} set to {base}", flush=True)
        write_synthetic(base, overwrite=True, **options)
        (base / ".complete").write_text(json.dumps(options))


def launch_command(stage: Stage, launcher: str | None) -> list[str]:
    """How a stage's process starts: plain Python, or the config's `launcher` (e.g. `torchrun --nproc_per_node 8`)
    for the torchrun-based engines. detectron2 starts its own processes (`num_processes` in `detection`)."""
    if launcher and stage.task != "detection":
        return [*shlex.split(launcher), "-m", "benchmarks.cli"]
    return [sys.executable, "-m", "benchmarks.cli"]


def run_stage(stage: Stage, stages: dict[str, Stage], position: str, launcher: str | None = None) -> None:
    """Run one stage in the foreground (its progress bars on this terminal)."""
    argv = resolve(stage, stages)
    print(f"[{position}] {stage.name}: maet {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    result = subprocess.run([*launch_command(stage, launcher), *argv], env=os.environ.copy())
    finish_stage(stage, argv, result.returncode, time.perf_counter() - t0, position)


def finish_stage(stage: Stage, argv: list[str], returncode: int, seconds: float, position: str) -> None:
    """Fail clearly, or write `stage.json` (atomically): the marker that the stage is done."""
    if returncode != 0:
        log = stage.folder / STAGE_LOG
        raise PipelineError(f"stage {stage.name} failed (exit {returncode}); its files are in {stage.folder}"
                            f"{f' (output: {log})' if log.is_file() else ''}. Fix the cause and run the pipeline "
                            "again: finished stages are skipped and this one resumes from its last checkpoint.")
    done = {"name": stage.name, "key": stage.key, "argv": argv, "duration_s": round(seconds, 1),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if stage.checkpoint is not None:
        done["checkpoint"] = {"path": str(stage.checkpoint), "sha256": sha256_file(stage.checkpoint)}
    tmp = stage.folder / (STAGE_DONE + ".tmp")
    tmp.write_text(json.dumps(done, indent=2))
    os.replace(tmp, stage.folder / STAGE_DONE)
    print(f"[{position}] {stage.name}: finished in {seconds:.0f} s", flush=True)


def run_parallel(chosen: list[Stage], stages: dict[str, Stage], jobs: int, launcher: str | None = None,
                 heartbeat_s: float = 30.0) -> None:
    """Up to `jobs` stages at once, each started once its input checkpoints exist, with the CPU threads shared
    out (OMP_NUM_THREADS = cores // jobs). On the demo's 2 cores, two 1-thread stages did about 10 % more work
    than one 2-thread stage at a time (small matrices scale poorly over threads; one stage's start-up overlaps
    another's work). Each stage's output goes to its `stage.log`; every `heartbeat_s` the last line of each
    running log is shown.
    """
    total, index = len(chosen), {s.name: i for i, s in enumerate(chosen, 1)}
    pending = [s for s in chosen if not s.done]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}
    running: dict[str, tuple[Stage, subprocess.Popen, list[str], float]] = {}
    last_beat = time.perf_counter()
    try:
        while pending or running:
            ready = start_order([s for s in pending if all(stages[i].done for i in s.inputs)])
            for stage in ready[:jobs - len(running)]:
                pending.remove(stage)
                argv = resolve(stage, stages)
                print(f"[{index[stage.name]}/{total}] {stage.name}: maet {shlex.join(argv)}  (output: "
                      f"{stage.folder / STAGE_LOG})", flush=True)
                with open(stage.folder / STAGE_LOG, "ab") as log:
                    proc = subprocess.Popen([*launch_command(stage, launcher), *argv], env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
                running[stage.name] = (stage, proc, argv, time.perf_counter())
            if not running:
                raise PipelineError(f"stages {[s.name for s in pending]} wait for checkpoints no selected stage makes")
            time.sleep(0.5)
            for name, (stage, proc, argv, t0) in list(running.items()):
                if proc.poll() is not None:
                    del running[name]
                    finish_stage(stage, argv, proc.returncode, time.perf_counter() - t0, f"{index[name]}/{total}")
            if time.perf_counter() - last_beat >= heartbeat_s and running:
                last_beat = time.perf_counter()
                for name, (stage, _, _, t0) in running.items():
                    print(f"    {name} ({time.perf_counter() - t0:.0f} s): {last_line(stage.folder / STAGE_LOG)}",
                          flush=True)
    finally:
        for _, proc, _, _ in running.values():  # an error or Ctrl-C: stop the others (they resume next time)
            proc.terminate()


def start_order(ready: list[Stage]) -> list[Stage]:
    """The ready stages in the order they start (START_ORDER by task; the plan's order within a task)."""
    return sorted(ready, key=lambda stage: START_ORDER.index(stage.task))


def last_line(path: Path, width: int = 110) -> str:
    """The last non-empty line of a log, progress-bar carriage returns included, cut to `width`."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
        tail = f.read().decode(errors="replace").replace("\r", "\n")
    lines = [line.strip() for line in tail.split("\n") if line.strip()]
    return (lines[-1] if lines else "(no output yet)")[:width]


def own_records(cfg: dict, stages: list[Stage]) -> list[dict]:
    """Every record, except that the pipeline's own protocols keep only the runs of its stages' folders: a table
    never mixes this run's seeds with records of another checkpoint or recipe (an earlier run's)."""
    from .records import read_records
    from .tables import protocol_of

    folders = {os.path.abspath(s.folder) for s in stages}
    mine = {s.argv[s.argv.index("--protocol") + 1] for s in stages if "--protocol" in s.argv}
    return [r for r in read_records(cfg.get("results_dir"))
            if protocol_of(r) not in mine or r.get("output_dir") in folders]


def run_pipeline(config: str | Path, only: list[str] = (), skip: list[str] = (), tables: bool = True,
                 dry_run: bool = False, jobs: int | None = None, seeds: list[int] | None = None,
                 status: bool = False) -> list[Stage]:
    """Run (or with `dry_run` list, with `status` show the submitit jobs of) the selected stages; `jobs` and
    `seeds` (of the downstream runs, which share the pretrained checkpoints) override the config's. With
    `launcher: slurm` / `local-submitit` each stage is a submitit job (slurm.py)."""
    cfg = load_config(config)
    if seeds:
        cfg["seeds"] = list(seeds)
    jobs = int(cfg.get("jobs", 1)) if jobs is None else jobs
    if jobs < 1:
        raise PipelineError(f"jobs must be >= 1, got {jobs}")
    out = Path(cfg["output_dir"])
    roots = data_roots(cfg, out)
    stages = plan(cfg, roots, out)
    by_name = {s.name: s for s in stages}
    chosen = select(stages, list(only), list(skip))
    if status:
        for name, job_id, state in slurm.status(cfg, chosen):
            print(f"{name:32s} job {job_id:>12s}  {state}")
        return chosen
    if dry_run:
        try:
            check_roots(cfg, roots, chosen)
        except DatasetLayoutError as e:
            print(f"note: {e}")
        if slurm.uses_submitit(cfg):
            slurm.describe(cfg, chosen, by_name, resolve)
            return chosen
        for s in chosen:
            print(f"{s.name:32s} {'done' if s.done else 'to run':7s} maet {shlex.join(resolve(s, by_name))}")
        return chosen
    check_roots(cfg, roots, chosen)
    t0 = time.perf_counter()
    if "generate" in cfg["data"]:
        generate_data(cfg, roots)
    for i, stage in enumerate(chosen, 1):
        stage.folder.mkdir(parents=True, exist_ok=True)
        if stage.done:
            print(f"[{i}/{len(chosen)}] {stage.name}: done earlier ({stage.folder}), skipped", flush=True)
    if slurm.uses_submitit(cfg):
        if not slurm.submit(cfg, chosen, by_name, resolve, finish_stage, STAGE_LOG):
            return chosen  # queued on SLURM: the tables come from a later run (or `maet table`)
    elif jobs > 1:
        run_parallel(chosen, by_name, jobs, cfg.get("launcher"))
    else:
        for i, stage in enumerate(chosen, 1):
            if not stage.done:
                run_stage(stage, by_name, f"{i}/{len(chosen)}", cfg.get("launcher"))
    print(f"pipeline '{cfg['name']}': {len(chosen)} stages in {time.perf_counter() - t0:.0f} s", flush=True)
    if tables:
        from .tables import write_tables

        report = write_tables(cfg.get("results_dir"), out=tables_dir(cfg), records=own_records(cfg, stages))
        section = report.split(f"## {cfg['name']} (measured)")
        print(f"## {cfg['name']} (measured)" + section[1].split("\n## ")[0] if len(section) > 1 else report)
        runs = [(s.name, s.folder, json.loads((s.folder / STAGE_DONE).read_text())["duration_s"])
                for s in stages if s.task in ("pretrain", "supervised") and s.done]
        if runs:  # the budget and result of each init's pretraining, beside the transfer table
            print(pretraining_table(cfg["name"], runs, out=tables_dir(cfg)))
    return chosen
