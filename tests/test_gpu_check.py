"""scripts/gpu_check.sh cannot run without a GPU; what can be checked here is: it is valid bash, and every
maet / benchmark invocation in it parses with the real parsers (commands, flags, choices, the paths it makes)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.cli import build_parser
from benchmarks.perf import asymmetry, pretrain_step

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def logical_lines(text: str) -> list[str]:
    """The script's lines with backslash continuations joined and comments dropped."""
    return [ln for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def invocations(text: str, root: Path) -> list[tuple[str, list[str]]]:
    """(program, argv) of every `$MAET ...`, `-m benchmarks.cli ...` (torchrun) and `-m benchmarks.perf.X ...`,
    with the script's variables replaced by real paths under `root` and its arrays expanded."""
    tiny = shlex.split(re.search(r"^TINY=\((.*)\)$", text, re.M).group(1))
    found = []
    for line in logical_lines(text):
        m = re.search(r"(\$MAET|-m benchmarks\.cli|-m benchmarks\.perf\.(\w+)) (.*)", line)
        if not m or line.lstrip().startswith(("MAET=", "local")):
            continue
        args = m.group(3).replace('"${TINY[@]}"', " ".join(map(shlex.quote, tiny)))
        args = args.replace('"${OFFICIAL[@]}"', "").replace('"$NGPU"', "1").replace("${NGPU}", "1")
        args = args.replace("$W", str(root)).replace("$D", str(root / "data"))
        found.append((m.group(2) or "maet", shlex.split(args)))
    return found


def _run_with_every_check_failing(tmp_path, keep_going: bool) -> tuple[int, dict]:
    """The script with a `python` that reports one GPU and fails every check (the summary uses the real one)."""
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
case "$*" in
  *cuda.device_count*) echo 1 ;;
  -\\ *) exec {sys.executable} "$@" ;;
  *) exit 3 ;;
esac
""")
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), GPU_CHECK_DIR=str(tmp_path / "w"),
               GPU_CHECK_KEEP_GOING=str(int(keep_going)))
    rc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True).returncode
    return rc, json.loads((tmp_path / "w" / "gpu_check.json").read_text())


def test_script_is_valid_bash_and_stops_at_the_first_failure(tmp_path):
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    rc, summary = _run_with_every_check_failing(tmp_path, keep_going=False)
    assert rc == 1 and not summary["ok"]
    assert [c["name"] for c in summary["checks"]] == ["make-data"]


def test_keep_going_runs_every_check_and_still_fails(tmp_path):
    rc, summary = _run_with_every_check_failing(tmp_path, keep_going=True)
    assert rc == 1 and not summary["ok"]
    names = [c["name"] for c in summary["checks"]]
    assert len(names) == 10 and names[0] == "make-data" and names[-1] == "perf-asymmetry"
    assert not any(c["ok"] for c in summary["checks"])


def test_every_invocation_parses_with_the_real_parsers(tmp_path):
    for sub in ("data/imagenet", "data/coco", "data/ade20k", "pt_fp16"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "pt_fp16" / "mae_pretrain.pth").write_bytes(b"")  # made by an earlier check in the script
    calls = invocations(SCRIPT.read_text(), tmp_path)
    maet_commands = [tuple(a for a in argv[:2] if not a.startswith("-")) for prog, argv in calls if prog == "maet"]
    assert {c[0] for c in maet_commands} == {"make-data", "pretrain", "finetune", "detect", "segment"}
    assert ("detect", "train") in maet_commands and ("segment", "train") in maet_commands
    assert {prog for prog, _ in calls} == {"maet", "pretrain_step", "asymmetry"}
    for prog, argv in calls:
        parser = {"maet": build_parser, "pretrain_step": pretrain_step.parser, "asymmetry": asymmetry.parser}[prog]()
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"gpu_check.sh: `{prog} {shlex.join(argv)}` does not parse")
        assert getattr(args, "device", "cuda") in ("cuda", None) or prog == "maet" and argv[0] == "make-data"


def test_detectron2_amp_override_exists_in_the_tiny_config():
    pytest.importorskip("detectron2")
    from transfer.detection.config import load_config

    assert "enabled" in load_config("tiny").train.get("amp", {})  # detectron2 creates missing keys: it must exist
    cfg = load_config("tiny", ["train.amp.enabled=True"])
    assert cfg.train.amp.enabled is True
