"""How `maet` declares its options: typed values that refuse a bad input at parse time, with one line.

A wrong choice, a number out of range, a missing input path or an output folder that cannot be
created ends the command before any model is built, as argparse's own `error:` line and exit 2.
The engine configs declare their options once (`mae_core.train.options.opt`); `add_dataclass_args`
turns that declaration into argparse arguments, and the detection and segmentation commands use
the same types directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import tempfile
import types
import typing
from pathlib import Path

from mae_core.train.options import value_problem


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (what was wrong, where the help is) instead of the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class Number:
    """An int or float in [min, max] (inclusive; the range rule is `value_problem`'s, as for the Python API)."""

    def __init__(self, kind: type, min=None, max=None):
        self.kind, self.min, self.max = kind, min, max
        self.__name__ = kind.__name__

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n' if self.kind is int else ''} "
                                             f"{self.__name__}") from None
        problem = value_problem(value, min=self.min, max=self.max)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    def __repr__(self):
        return f"Number({self.__name__}, min={self.min}, max={self.max})"


class PathArg:
    """A path option: `dir` (an existing folder), `exists` (a file or folder), `init` (a checkpoint or
    'scratch'), `output` (a folder that exists or can be created: probed, nothing is left behind),
    `file-out` (a file to write, in such a folder)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.__name__ = f"path ({kind})"

    def __call__(self, text: str) -> str:
        p = Path(text).expanduser()
        if self.kind == "output":
            _check_creatable(p)
        elif self.kind == "file-out":
            _check_creatable(p.parent)
        else:
            problem = value_problem(text, path=self.kind)
            if problem:
                raise argparse.ArgumentTypeError(problem)
        return text

    def __repr__(self):
        return f"PathArg({self.kind!r})"


class ProtocolArg:
    """A shipped protocol's name, a file of the shipped config folder, or the path of the user's own config."""

    def __init__(self, names, folder: Path | None = None):
        self.names, self.folder = tuple(names), folder
        self.__name__ = "protocol"

    def __call__(self, text: str) -> str:
        shipped = self.folder is not None and any((self.folder / n).is_file() for n in (text, f"{text}.py"))
        if text in self.names or shipped or Path(text).is_file():
            return text
        raise argparse.ArgumentTypeError(f"{text!r} is neither a shipped protocol ({', '.join(self.names)}) nor a "
                                         "config file that exists")

    def __repr__(self):
        return f"ProtocolArg({self.names})"


class CfgOptions(argparse.Action):
    """`--cfg-options KEY=VALUE ...` parsed by mmengine's own `DictAction` (lists, tuples, numbers, booleans),
    imported only when the option is given: mmengine is the segmentation extra, and `--help` stays light."""

    def __call__(self, parser, namespace, values, option_string=None):
        bad = [v for v in values if "=" not in v]
        if bad:
            raise argparse.ArgumentError(self, f"takes KEY=VALUE pairs, got {bad}")
        from mmengine.config import DictAction

        DictAction(self.option_strings, self.dest)(parser, namespace, values, option_string)


def _check_creatable(p: Path) -> None:
    if p.exists():
        if not p.is_dir():
            raise argparse.ArgumentTypeError(f"{p} is a file; give a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"{p} is not writable; give another folder")
        return
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    try:  # the only sure test (root can "write" to /proc, yet nothing can be made there): make and remove one
        os.rmdir(tempfile.mkdtemp(prefix=".maet-probe-", dir=parent))
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot create {p} ({e.strerror or e} in {parent}); "
                                         "give a folder you can write to") from None


def seed_list(text: str) -> list[int]:
    """Comma-separated seeds, e.g. 0,1,2."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,1,2; got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds >= 0 like 0,1,2; got {text!r}")
    return seeds


seed_list.__name__ = "seed list"


def name_list(text: str) -> list[str]:
    """Comma-separated names (of pipelines: letters, digits, '_', '-', '.'), e.g. synthetic_pseed1,synthetic_sseed1."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_.-]+", n)]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated names like synthetic_pseed1,"
                                         f"synthetic_sseed1; got {text!r}")
    return names


name_list.__name__ = "name list"


def json_object(text: str) -> dict:
    """A JSON object given on the command line (e.g. model overrides)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg}): {text}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"depth\": 4}}', got {text}")
    return value


json_object.__name__ = "JSON object"


def add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    """Expose every field of a config dataclass as `--field-name`, with its help, choices and range."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag, kind, meta = "--" + f.name.replace("_", "-"), _base_type(hints[f.name]), f.metadata
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = (f.default if f.default is not dataclasses.MISSING else f.default_factory()) if has_default \
            else None
        if not has_default:
            suffix = " (required)"
        else:
            suffix = "" if kind is bool or default in (None, {}) else f" (default: {default})"
        help_text = meta.get("help", "") + suffix
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        kw = {"default": default, "required": not has_default, "help": help_text}
        if kind is dict:
            kw.update(type=json_object, metavar="JSON")
        elif meta.get("choices"):
            kw.update(choices=meta["choices"], type=kind)
        elif meta.get("path"):
            kw.update(type=PathArg(meta["path"]), metavar="PATH")
        elif kind in (int, float):
            kw.update(type=Number(kind, meta.get("min"), meta.get("max")), metavar=kind.__name__.upper())
        else:
            kw.update(type=kind)
        parser.add_argument(flag, **kw)


def _base_type(hint):
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def dataclass_from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
