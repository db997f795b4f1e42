#!/usr/bin/env bash
# The paper's Sudoku shape on one GPU (README Results, "Where PUMA pays"): the bundled study
# `sudoku-paper` (162-token reference encoding, hidden 256, 8 layers, ≈6.8M parameters, lr 3e-4,
# 1000 warm-up steps, batch 64), PUMA against random masking, SEEDS seeds, every arm at once,
# for as many steps as fit in BUDGET_S seconds of training:
#   1. a probe: all arms for PROBE_STEPS steps, to measure seconds per step with every arm sharing
#      the GPU;
#   2. the study at the step count that fits (evaluated on 500 held-out puzzles four times);
#   3. $OUT/gpu-sudoku.tar.gz: study.json, the arms' configs and curves, summary.json and the plot,
#      ready for `puma bench speedup --merge` beside the CPU studies.
# Usage: scripts/gpu_sudoku_paper.sh       (after `make setup`; PYTHON=... to use another venv)
#        TINY=1 scripts/gpu_sudoku_paper.sh   a minute-long smoke test of the same path on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/gpu-sudoku}
BUDGET_S=${BUDGET_S:-480}
SEEDS=${SEEDS:-3}
PROBE_STEPS=${PROBE_STEPS:-150}
WORK=${WORK:-runs/gpu-sudoku-work}
mkdir -p "$OUT" "$WORK"
rm -rf "$WORK/probe" "$WORK/study"

EXTRA=()
if [ "${TINY:-0}" = 1 ]; then  # the CPU smoke test: a small network, few puzzles
  EXTRA=(model.dim=32 model.n_layers=1 model.n_heads=2 model.mlp_hidden=64 training.threads=1
         training.warmup_steps=5 eval.examples=20 eval.batch_size=20)
  BUDGET_S=${TINY_BUDGET_S:-20}
  PROBE_STEPS=10
fi

# the device, as the summary's "device" names it: h200, h100, … or cpu
DEVICE=$("$PY" -c "
import re, torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'
match = re.search(r'\b([A-Z]\d{2,4})\b', name)
print(match.group(1).lower() if match and name != 'cpu' else ('cuda' if name != 'cpu' else 'cpu'))
")
echo "device: $DEVICE" | tee "$OUT/device.txt"

# a copy of the bundled study with this run's steps, evaluation cadence and device
study_copy() {  # $1 = steps, $2 = eval/checkpoint interval, $3 = path
  "$PY" - "$1" "$2" "$3" "$DEVICE" "${EXTRA[@]}" <<'EOF'
import sys
from omegaconf import OmegaConf
from puma_mdm.bench.study import bundled_study
steps, every, path, device, *extra = sys.argv[1:]
study = OmegaConf.load(bundled_study("sudoku-paper"))
study.device = device
study.common = [*study.common, f"training.steps={steps}", f"eval.every={every}",
                f"checkpoint.every={every}", *extra]
OmegaConf.save(study, path)
EOF
}

echo "== probe: $SEEDS seeds x 2 arms, $PROBE_STEPS steps, side by side"
study_copy "$PROBE_STEPS" 0 "$WORK/probe.yaml"
"$PY" -m puma_mdm.cli bench speedup --grid "$WORK/probe.yaml" --seeds "$SEEDS" \
  --jobs $((2 * SEEDS)) --out-dir "$WORK/probe" > "$WORK/probe.log" 2>&1 || {
  cat "$WORK/probe.log"; exit 1; }

# steps that fit: the slowest arm's seconds per step, 85% of the budget (evaluations, start-up)
read -r STEPS EVERY < <("$PY" - "$WORK/probe" "$BUDGET_S" <<'EOF'
import json, sys
from pathlib import Path
probe, budget = Path(sys.argv[1]), float(sys.argv[2])
per_step = []
for metrics in probe.glob("arms/*/metrics.jsonl"):
    last = [json.loads(x) for x in metrics.read_text().splitlines() if "train_seconds" in x][-1]
    per_step.append(last["train_seconds"] / last["step"])
seconds = max(per_step)
steps = max(40, int(0.85 * budget / seconds) // 40 * 40)
print(f"{steps} {steps // 4}")
print(f"probe: {seconds:.4f} s/step (slowest arm) -> {steps} steps", file=sys.stderr)
EOF
)
echo "== study: $STEPS steps, evaluations every $EVERY" | tee -a "$OUT/device.txt"
study_copy "$STEPS" "$EVERY" "$WORK/study.yaml"
# a stop at the time limit still brings back every evaluation logged so far
timeout $((BUDGET_S * 2 + 300)) "$PY" -m puma_mdm.cli bench speedup --grid "$WORK/study.yaml" \
  --seeds "$SEEDS" --jobs $((2 * SEEDS)) --out-dir "$WORK/study" > "$OUT/study.log" 2>&1 \
  || echo "study stopped early (exit $?); packing the curves logged so far"
cat "$OUT/study.log"
(cd "$WORK/study" && tar -czf - $(ls study.json summary.json speedup.png arms/*.yaml \
  arms/*/metrics.jsonl arms/*.log 2>/dev/null)) > "$OUT/gpu-sudoku.tar.gz"
echo "wrote $OUT/gpu-sudoku.tar.gz"
