#!/usr/bin/env bash
# Every CUDA path of the suite for a few steps, in one command (<= 8 minutes on one GPU); stops with a
# non-zero exit at the first broken one. Writes a JSON summary: each check's name, ok, seconds, key figure.
#
#   bash scripts/gpu_check.sh                       # uses .venv/bin/python, a fresh folder under /tmp
#   PYTHON=python GPU_CHECK_DIR=/scratch/gc OFFICIAL_MAE=/path/to/mae bash scripts/gpu_check.sh
#   GPU_CHECK_KEEP_GOING=1 bash scripts/gpu_check.sh  # a rare, short GPU lease: run every check, exit 1 at the end
#
# Checks: pretrain fp16 + GradScaler; pretrain bf16 + --compile (fused AdamW); finetune fp16 AMP;
# torchrun + NCCL (2 processes if 2 GPUs, else 1); `maet detect train` tiny with detectron2 AMP;
# `maet segment train` tiny with --amp; benchmarks.perf.pretrain_step and benchmarks.perf.asymmetry on CUDA.
# tests/test_gpu_check.py parses every maet / benchmark invocation below against the real parsers.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
W=${GPU_CHECK_DIR:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
SUMMARY=${GPU_CHECK_SUMMARY:-$W/gpu_check.json}
MAET="$PY -m benchmarks.cli"
D=$W/data
ROWS=$W/checks.tsv
mkdir -p "$W"
: > "$ROWS"
FAILED=()

summary() {  # the JSON summary from the rows written so far (called on success and on the first failure)
    "$PY" - "$ROWS" "$SUMMARY" <<'EOF'
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
checks = [dict(name=n, ok=ok == "1", seconds=float(s), key_figure=json.loads(f) if f else None) for n, ok, s, f in rows]
json.dump(dict(ok=all(c["ok"] for c in checks), checks=checks), open(sys.argv[2], "w"), indent=2)
print(f"gpu_check: {sum(c['ok'] for c in checks)}/{len(checks)} checks ok; summary in {sys.argv[2]}")
EOF
}

check() {  # check NAME FIGURE_CMD -- COMMAND...: run COMMAND; on success FIGURE_CMD prints the key figure (JSON)
    local name=$1 figure=$2 start end
    shift 3
    echo "=== gpu_check: $name"
    start=$(date +%s.%N)
    if ! "$@"; then
        end=$(date +%s.%N)
        printf '%s\t0\t%s\t\n' "$name" "$(awk "BEGIN { print $end - $start }")" >> "$ROWS"
        echo "gpu_check: FAILED at '$name' (command: $*)" >&2
        FAILED+=("$name")
        if [[ "${GPU_CHECK_KEEP_GOING:-0}" == 1 ]]; then return 0; fi
        summary
        exit 1
    fi
    end=$(date +%s.%N)
    printf '%s\t1\t%s\t%s\n' "$name" "$(awk "BEGIN { print $end - $start }")" "$(eval "$figure")" >> "$ROWS"
}

last_loss() {  # the last logged loss of an engine run folder (log.jsonl)
    "$PY" -c "import json,sys; print(json.dumps([json.loads(l)['loss'] for l in open(sys.argv[1]) if '\"loss\"' in l][-1]))" \
        "$1/log.jsonl"
}

last_metric() {  # last_metric FILE KEY: the last value of KEY in a JSON-lines file (detectron2's metrics.json)
    "$PY" -c "import json,sys; print(json.dumps([r[sys.argv[2]] for r in map(json.loads, open(sys.argv[1])) if sys.argv[2] in r][-1]))" \
        "$1" "$2"
}

json_field() {  # json_field FILE EXPR: EXPR evaluated on the loaded JSON `r`
    "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps($2))" "$1"
}

NGPU=$("$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(min(2, torch.cuda.device_count()))")
echo "gpu_check: $NGPU GPU(s) used, folder $W"

check make-data 'echo null' -- \
    $MAET make-data synthetic --out "$D" --seed 0 --num-train 256 --num-val 32 --img-size 64 --textures class

TINY=(--model mae_vit_tiny_patch16 --img-size 64 --epochs 1 --warmup-epochs 0 --batch-size 32 --num-workers 2 --no-progress --keep-every 0 --device cuda)
check pretrain-fp16-gradscaler "last_loss $W/pt_fp16" -- \
    $MAET pretrain --data-path "$D/imagenet" --output-dir "$W/pt_fp16" "${TINY[@]}" --precision fp16
# the scaler really ran (fp16): its state is in the checkpoint with a finite scale
check pretrain-fp16-scaler-state 'echo null' -- \
    "$PY" -c "import torch,sys; s=torch.load(sys.argv[1], weights_only=True)['scaler']; assert s and s['scale'] > 0, s" \
    "$W/pt_fp16/checkpoint-last.pth"
check pretrain-bf16-compile "last_loss $W/pt_bf16" -- \
    $MAET pretrain --data-path "$D/imagenet" --output-dir "$W/pt_bf16" "${TINY[@]}" --precision bf16 --compile
check finetune-amp "last_loss $W/ft" -- \
    $MAET finetune --data-path "$D/imagenet" --output-dir "$W/ft" --init "$W/pt_fp16/mae_pretrain.pth" \
    --model vit_tiny_patch16 --img-size 64 --epochs 1 --warmup-epochs 0 --batch-size 32 --num-workers 2 \
    --no-progress --device cuda --precision fp16 --no-record
check "torchrun-nccl-${NGPU}proc" "last_loss $W/pt_ddp" -- \
    "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NGPU" -m benchmarks.cli \
    pretrain --data-path "$D/imagenet" --output-dir "$W/pt_ddp" "${TINY[@]}" --precision fp16
check detect-amp "last_metric $W/det/metrics.json total_loss" -- \
    $MAET detect train --data-path "$D/coco" --output-dir "$W/det" --init scratch --max-iters 20 --device cuda \
    --seed 0 --no-record --cfg-options train.amp.enabled=True
check segment-amp 'echo null' -- \
    $MAET segment train --data-path "$D/ade20k" --output-dir "$W/seg" --init scratch --max-iters 20 \
    --val-interval 20 --batch-size 4 --seed 0 --amp --no-record

OFFICIAL=()
if [[ -n "${OFFICIAL_MAE:-}" ]]; then OFFICIAL=(--official "$OFFICIAL_MAE"); fi
check perf-pretrain-step "json_field $W/step.json 'r[\"ratios\"]'" -- \
    "$PY" -m benchmarks.perf.pretrain_step --config vit_base --batch 32 --steps 5 --warmup 3 --repeats 1 \
    --device cuda --json "$W/step.json" "${OFFICIAL[@]}"
check perf-asymmetry "json_field $W/asym.json '[(x[\"decoder_depth\"], x[\"speed_up\"]) for x in r[\"results\"]]'" -- \
    "$PY" -m benchmarks.perf.asymmetry --batch 32 --steps 5 --warmup 2 --device cuda --json "$W/asym.json"

summary
if (( ${#FAILED[@]} )); then echo "gpu_check: FAILED: ${FAILED[*]}" >&2; exit 1; fi
