#!/usr/bin/env bash
# The checks a GPU makes possible, in under 8 minutes on one recent GPU:
#   1. the GPU-marked tests (no host-device sync in the PUMA update and the sampler's loop,
#      fused attention under bf16, the 125M config end to end on CUDA at a tiny size);
#   2. a short throughput benchmark of the tinygsm-125m recipe (both arms, bf16, eager and
#      torch.compile): tokens/s, seconds per step, PUMA's share of the step, peak memory.
# The data are synthetic (scripts/synthetic_tinygsm.py) with Qwen2's vocabulary size, so the
# network has the paper's 125M shape. Results: $OUT (default runs/gpu-check).
# Usage: scripts/gpu_check.sh            (after `make setup`; PYTHON=... to use another venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" | tee "$OUT/device.txt"
date -u +%Y-%m-%dT%H:%MZ >> "$OUT/device.txt"

echo "== GPU-marked tests"
timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu-tests.txt"

echo "== synthetic TinyGSM data with a 151,646-id vocabulary"
DATA="$OUT/data"
[ -f "$DATA/tokenizer/tokenizer.json" ] || "$PY" scripts/synthetic_tinygsm.py "$DATA" --problems 20000
DATA_ARGS=(
  "task.options.train_data=$DATA/train.jsonl"
  "task.options.eval_data=$DATA/test.jsonl"
  "task.options.tokenizer=$DATA/tokenizer"
  "task.options.prepared=$DATA/prepared"
)
[ -f "$DATA/prepared/manifest.json" ] || "$PY" -m puma_mdm.cli prepare --config tinygsm-125m "${DATA_ARGS[@]}" \
  | tee "$OUT/prepare.txt"

echo "== throughput of the 125M recipe (both arms, bf16, eager and compiled)"
timeout 330 "$PY" -m puma_mdm.cli bench throughput --config tinygsm-125m --sizes shipped \
  --strategies standard,progressive --autocast bf16 --compile \
  --train-steps 20 --warmup-steps 3 --sample-batches "" --out-dir "$OUT" \
  "${DATA_ARGS[@]}" "logging.out_dir=$OUT/scratch" | tee "$OUT/throughput.txt"
echo "wrote $OUT/throughput.json"
