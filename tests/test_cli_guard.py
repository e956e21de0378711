"""Every option of every `maet` command refuses a bad value with exit 2 and one error line, no traceback.

The guard walks the real parser: each option with a value gets the bad value of its kind (a wrong
choice, a number below its range, a missing input path, an output folder under a file, broken JSON).
A new option that declares no checkable kind fails `test_every_option_declares_what_it_accepts`
unless it is free text on purpose.
"""

from __future__ import annotations

import argparse
import subprocess

import pytest
import torch

from benchmarks.cli import build_parser, main
from benchmarks.cli_args import Number, PathArg, ProtocolArg, json_object, name_list, seed_list
from benchmarks.perf import asymmetry, eval_throughput, pretrain_step
from mae_core.train.pretrain import PretrainConfig

from .conftest import TINY_IMG, TINY_MODEL
from .helpers import cli_args, maet, one_thread_env

# Options whose value is a label or a string the library itself interprets (or a path to be written).
FREE_TEXT = {"dataset_name", "init_name", "protocol", "dist_url", "aa", "split", "only", "skip", "baseline",
             "arch", "opts", "cfg_options", "kind"}


def _commands(parser: argparse.ArgumentParser, prefix=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _commands(sub, (*prefix, name))


def _valued_options(parser):
    for a in parser._actions:
        if a.option_strings and a.nargs != 0 and not isinstance(a, argparse.BooleanOptionalAction) \
                and a.help != argparse.SUPPRESS:
            yield a


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    data = root / "data"
    (data / "train" / "a").mkdir(parents=True)
    ckpt = root / "model.pth"
    ckpt.write_bytes(b"x")
    a_file = root / "a_file"
    a_file.write_text("")
    return {"root": root, "data": str(data), "ckpt": str(ckpt), "missing": str(root / "missing"),
            "under_file": str(a_file / "sub"), "out": str(root / "out")}


def _base(command: tuple, p: dict) -> list[str]:
    """A valid command line for each command (it parses; nothing is run)."""
    data, ckpt, out = p["data"], p["ckpt"], p["out"]
    return {
        ("pretrain",): ["--data-path", data, "--output-dir", out],
        ("finetune",): ["--data-path", data, "--output-dir", out, "--init", "scratch"],
        ("linprobe",): ["--data-path", data, "--output-dir", out, "--init", ckpt],
        ("eval",): ["--data-path", data, "--checkpoint", ckpt],
        ("detect", "train"): ["--data-root", data, "--output-dir", out],
        ("detect", "eval"): ["--data-root", data, "--output-dir", out, "--weights", ckpt],
        ("segment", "train"): ["--data-root", data],
        ("segment", "eval"): ["--data-root", data, "--checkpoint", ckpt],
        ("make-data",): ["synthetic", "--out", out],
        ("visualize",): ["--checkpoint", ckpt, "--images", data],
        ("demo",): [],
        ("pipeline",): ["--config", ckpt],
        ("regression",): [],
        ("table",): [],
        ("inspect",): [ckpt],
        ("convert",): [ckpt, "--to", "ours", "--out", out + ".pth"],
    }[command]


def _bad_value(action, p: dict) -> str | None:
    t = action.type
    if action.choices:
        return "not-a-choice"
    if isinstance(t, Number):
        if t.min is not None:
            return str(t.min - 1)
        return str(t.max + 1)
    if isinstance(t, PathArg):
        return p["under_file"] if t.kind in ("output", "file-out") else p["missing"]
    if isinstance(t, ProtocolArg):
        return "no-such-protocol"
    if t is json_object:
        return "{not json"
    if t is seed_list:
        return "0,-1"
    if t is name_list:
        return "synthetic_pseed1,synthetic_pseed1"
    return None


def test_every_command_parses_its_base_line(paths):
    for command, parser in _commands(build_parser()):
        parser.parse_args(_base(command, paths))  # raises SystemExit if the base line were wrong


def test_every_option_declares_what_it_accepts(paths):
    """A number without a range, a path without a kind, a fixed set without choices: named here."""
    loose = [f"maet {' '.join(c)} {a.option_strings[0]}" for c, parser in _commands(build_parser())
             for a in _valued_options(parser) if _bad_value(a, paths) is None and a.dest not in FREE_TEXT]
    assert not loose, f"options that accept anything: {loose}"


def test_every_option_has_a_sentence_of_help():
    commands = [(("maet", *c), parser) for c, parser in _commands(build_parser())]
    commands += [(("python -m", m.__name__), m.parser()) for m in (asymmetry, eval_throughput, pretrain_step)]
    silent = [f"{' '.join(c)} {a.option_strings or a.dest}"
              for c, parser in commands
              for a in parser._actions if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS
              and not (a.help or "").split("(default")[0].strip()]
    assert not silent, f"options without help: {silent}"


def test_every_bad_option_value_is_one_clear_error(paths, capsys):
    tried = 0
    for command, parser in _commands(build_parser()):
        for action in _valued_options(parser):
            bad = _bad_value(action, paths)
            if bad is None:
                continue
            flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
            base, rest = _base(command, paths), []
            for i, tok in enumerate(base):  # drop the base's own value of this option
                if tok in action.option_strings:
                    rest = base[:i] + base[i + 2:]
                    break
            else:
                rest = base
            argv = [*command, flag, bad, *rest]
            with pytest.raises(SystemExit) as exit_info:
                build_parser().parse_args(argv)  # a bad value never reaches a handler
            err = capsys.readouterr().err
            assert exit_info.value.code == 2, argv
            assert "Traceback" not in err and f"argument {'/'.join(action.option_strings)}" in err, (argv, err)
            tried += 1
    assert tried > 60  # every command's numbers, paths and choices


@pytest.mark.parametrize("argv, expected", [
    (["--precision", "fp8"], "invalid choice: 'fp8'"),
    (["--model", "mae_bogus"], "invalid choice: 'mae_bogus'"),
    (["--output-dir", "/proc/nope"], "cannot create /proc/nope"),
    (["--epochs", "-1"], "--epochs: must be >= 1"),
    (["--mask-ratio", "1.5"], "must be <= 0.99"),
    (["--model-kwargs", "[1, 2]"], "expected a JSON object"),
])
def test_pretrain_bad_values_exit_2_in_a_real_process(tiny_imagenet, tmp_path, argv, expected):
    cmd = maet("pretrain", "--data-path", str(tiny_imagenet), "--output-dir",
               str(tmp_path / "o"), *argv)
    result = subprocess.run(cmd, capture_output=True, text=True, env=one_thread_env(), timeout=120)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr


def _pretrain_config(tiny_imagenet, tmp_path, **kw) -> PretrainConfig:
    return PretrainConfig(data_path=str(tiny_imagenet), output_dir=str(tmp_path / "o"),
                          img_size=TINY_IMG, epochs=1, num_workers=0, progress=False, **TINY_MODEL, **kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_device_cuda_without_cuda_is_a_clear_error(tiny_imagenet, tmp_path, capsys):
    cfg = _pretrain_config(tiny_imagenet, tmp_path, device="cuda")
    assert main(["pretrain", *cli_args(cfg)]) == 2
    err = capsys.readouterr().err
    assert "maet pretrain: error: --device cuda, but torch sees no CUDA device" in err and "--device cpu" in err


def test_batch_larger_than_the_dataset_is_a_clear_error(tiny_imagenet, tmp_path, capsys):
    cfg = _pretrain_config(tiny_imagenet, tmp_path, batch_size=1000)
    assert main(["pretrain", *cli_args(cfg)]) == 2
    err = capsys.readouterr().err
    assert "cannot fill one batch of 1000" in err and "lower --batch-size to at most 64" in err


def test_config_objects_check_their_values_too(tiny_imagenet, tmp_path):
    """The Python API refuses what the command line refuses (same declaration)."""
    from mae_core.errors import OptionError

    with pytest.raises(OptionError, match="--accum-iter must be >= 1"):
        _pretrain_config(tiny_imagenet, tmp_path, accum_iter=0)
    with pytest.raises(OptionError, match="--precision must be one of"):
        _pretrain_config(tiny_imagenet, tmp_path, precision="fp8")
    with pytest.raises(OptionError, match="no such folder"):
        PretrainConfig(data_path=str(tmp_path / "nope"), output_dir=str(tmp_path / "o"))
