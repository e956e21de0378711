"""One flag vocabulary across maet's training commands (README, "Flags of the training commands"): the same
thing has the same flag in pretrain, finetune, linprobe, detect train and segment train, read off the real parsers."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks.cli import build_parser

TRAINING = [("pretrain",), ("finetune",), ("linprobe",), ("detect", "train"), ("segment", "train")]
EVALUATION = [("eval",), ("detect", "eval"), ("segment", "eval")]
# the thing -> its flag, in every training command (pretrain has no --init, it starts from random weights, and
# writes no run record)
SHARED = {"data folder": "--data-path", "output folder": "--output-dir", "seed": "--seed",
          "resume from the output folder": "--resume", "start over": "--no-resume",
          "record folder": "--results-dir", "init": "--init"}
OLD = {"--work-dir", "--data-root", "--weights", "--max-iter"}  # accepted, as aliases, never the name


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def command(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        parser = _subparser(parser, name)
    return parser


def flags(parser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("path", TRAINING, ids=" ".join)
def test_every_training_command_names_the_same_things_alike(path):
    have = flags(command(*path))
    wanted = {k: v for k, v in SHARED.items() if not (path == ("pretrain",) and k in ("init", "record folder"))}
    assert {k: v for k, v in wanted.items() if v not in have} == {}
    assert have["--resume"] is have["--no-resume"] and have["--resume"].default is True  # auto-resume by default
    names = {a.option_strings[0] for a in have.values()}
    assert not names & OLD


@pytest.mark.parametrize("path", EVALUATION, ids=" ".join)
def test_every_evaluation_command_takes_the_file_as_checkpoint(path):
    have = flags(command(*path))
    assert have["--checkpoint"].required and "--data-path" in have


def test_schedule_length_overrides_and_protocols_are_shared_by_the_dense_tasks(tmp_path):
    det, seg = command("detect", "train"), command("segment", "train")
    for parser in (det, seg):
        assert {"--max-iters", "--cfg-options", "--config"} <= set(flags(parser))
        for protocol in ("tiny", "vit-b", "vit-l"):
            args = parser.parse_args(["--data-path", ".", "--output-dir", str(tmp_path), "--config", protocol])
            assert args.config == protocol
    for path in (("pretrain",), ("finetune",), ("linprobe",)):
        assert "--epochs" in flags(command(*path)) and "--max-iters" not in flags(command(*path))


def test_old_spellings_are_aliases_of_the_same_option(tmp_path):
    det = command("detect", "eval").parse_args(["--data-root", ".", "--weights", "README.md",
                                                 "--output-dir", str(tmp_path), "--cfg-options", "a=1"])
    assert (det.data_path, det.checkpoint, det.cfg_options) == (".", "README.md", ["a=1"])
    seg = command("segment", "train").parse_args(["--data-root", ".", "--work-dir", str(tmp_path), "--no-resume"])
    assert (seg.data_path, seg.output_dir, seg.resume) == (".", str(tmp_path), False)
    det = command("detect", "train").parse_args(["--data-path", ".", "--output-dir", str(tmp_path), "--max-iter", "3"])
    assert det.max_iters == 3


def test_segment_cfg_options_are_parsed_by_mmengine(capsys):
    pytest.importorskip("mmengine")
    args = command("segment", "train").parse_args(["--data-path", ".", "--cfg-options", "a.b=1", "c=[1,2]", "d=x"])
    assert args.cfg_options == {"a.b": 1, "c": [1, 2], "d": "x"}
    with pytest.raises(SystemExit) as e:
        command("segment", "train").parse_args(["--data-path", ".", "--cfg-options", "novalue"])
    assert e.value.code == 2 and "KEY=VALUE" in capsys.readouterr().err


def test_no_resume_starts_over_in_a_folder_with_a_checkpoint(tmp_path):
    from mae_core.train.state import LAST, find_resume

    (tmp_path / LAST).write_bytes(b"")
    assert find_resume(None, tmp_path) == tmp_path / LAST
    assert find_resume(None, tmp_path, resume=False) is None
    assert find_resume("elsewhere.pth", tmp_path, resume=False) == Path("elsewhere.pth")
