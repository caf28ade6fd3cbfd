#!/usr/bin/env bash
# Fine-tunes one pretrained generator with and without discriminator warm-up (docs/results.md,
# "Fine-tuning"). The generator goes through DAC's format first (export-dac, then import-dac), so
# the runs start as from DAC's released weights: a generator and no discriminators.
#
#   tools/warmup_ablation.sh RUN_DIR OUT_DIR [PYTHON_WITH_TORCH]
#
# RUN_DIR: one of our run directories; OUT_DIR gets demo.pth, pretrained/, w0/ and w200/ (each
# with metrics.jsonl: validation every 50 steps). The export and import need torch and dac.
set -euo pipefail
RUN=$(realpath "$1")  # absolute: the script runs from the repository root
OUT=$(realpath -m "$2")
TORCH_PYTHON=${3:-python}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
[ -f "$OUT/demo.pth" ] || "$TORCH_PYTHON" -m codec export-dac --checkpoint "$RUN" -o "$OUT/demo.pth"
[ -d "$OUT/pretrained" ] || "$TORCH_PYTHON" -m codec import-dac "$OUT/demo.pth" -o "$OUT/pretrained"
for w in 0 200; do
  [ -f "$OUT/w$w/done" ] && continue
  python run_experiment.py --config experiments/telugu_demo.py --init_from "$OUT/pretrained" \
    --checkpoint_dir "$OUT/w$w" --experiment_name "w$w" --config.optim.ema_decay=0.0 \
    --config.optim.learning_rate=0.0001 --config.optim.discriminator_warmup_steps=$w \
    --config.max_steps=400 --config.eval_every_steps=50 --config.seed=0 > "$OUT/w$w.log" 2>&1
  touch "$OUT/w$w/done"
done
