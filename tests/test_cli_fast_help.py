"""`maet --help` is fast: building the whole parser imports neither torch nor timm (the engines' configs are
declared in the torch-free mae_core.train.configs), and those declarations name the same presets as the models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_building_every_parser_imports_no_heavy_library():
    code = ("import sys\nfrom benchmarks.cli import build_parser\nparser = build_parser()\n"
            "for argv in (['pretrain', '--help'], ['detect', 'train', '--help'], ['segment', 'eval', '--help'],\n"
            "             ['finetune', '--help'], ['linprobe', '--help'], ['eval', '--help']):\n"
            "    try:\n        parser.parse_args(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'timm', 'detectron2', 'mmengine', 'mmseg', 'pandas') "
            "if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-500:]


def test_config_preset_names_are_the_models_presets():
    from mae_core.mae import MAE_PRESETS
    from mae_core.models_vit import CLASSIFIER_PRESETS
    from mae_core.train.configs import CLASSIFIER_PRESET_NAMES, MAE_PRESET_NAMES

    assert MAE_PRESET_NAMES == tuple(MAE_PRESETS)
    assert CLASSIFIER_PRESET_NAMES == tuple(CLASSIFIER_PRESETS)


def test_engines_reexport_their_configs():
    from mae_core.train import configs, evaluate, finetune, linprobe, pretrain

    assert pretrain.PretrainConfig is configs.PretrainConfig and finetune.FinetuneConfig is configs.FinetuneConfig
    assert linprobe.LinprobeConfig is configs.LinprobeConfig and evaluate.EvalConfig is configs.EvalConfig
