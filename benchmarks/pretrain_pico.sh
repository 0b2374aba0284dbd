#!/usr/bin/env bash
# Pretrain the built-in `pico` model on a lent GPU machine, in calls of at most 10 minutes each.
#
# Here, once: download the wheels the machine lacks (it has torch, transformers, tokenizers, pyarrow, peft):
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 tree-sitter==0.25.2 transformers==5.23.0
# Then call the device, carrying `.whl`, with the same command until it prints "pico: finished":
#   bash benchmarks/pretrain_pico.sh [CALL_MINUTES=8.5] [TRAIN_MINUTES=18]
# The first call collects the machine's site-packages, trains the tokenizer, times a few steps to size the schedule
# to TRAIN_MINUTES of training, and starts; later calls resume from the checkpoint in runs/pico (kept while the
# machine stays warm). Every call returns the report and the loss curve in $OUT; the last one also returns the model
# as a tar split into parts of 15 MiB (with their sha256): here, `cat pico-model.tar.part-* | tar -x -C fimtune/models/`
# makes fimtune/models/pico/, which `--base-model pico` loads.
set -euo pipefail
call_minutes=${1:-8.5}
train_minutes=${2:-18}
preset=${PRESET:-pico}  # PRESET=micro RUN=runs/pico-dry: a dry run of this script on a CPU
run=${RUN:-runs/pico}
out=${OUT:-/tmp/pico-out}
mkdir -p "$out"

if ! python3 -c "import trl, datasets, tree_sitter" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

finished() { python3 -c "import json,sys; sys.exit(0 if json.load(open('$run/pretrain_report.json'))['finished'] else 1)" 2>/dev/null; }
if finished; then
  echo "pico: $run has finished training; exporting it again"
elif [ -f "$run/pretrain_config.json" ]; then
  python3 -m fimtune pretrain --out "$run" --resume --max-minutes "$call_minutes" 2>&1 | grep -v "Writing model"
else
  python3 -m fimtune pretrain --preset "$preset" --out "$run" --holdout click,h11,pluggy \
    --train-minutes "$train_minutes" --max-minutes "$call_minutes" 2>&1 | grep -v "Writing model"
fi

cp "$run/pretrain_report.json" "$run/loss_curve.json" "$run/loss_curve.png" "$out/"
if finished; then
  mkdir -p "$run/export" && rm -rf "$run/export/pico" && cp -r "$run/model" "$run/export/pico"
  tar -C "$run/export" -cf - pico | split -b 15M - "$out/pico-model.tar.part-"
  (cd "$out" && sha256sum pico-model.tar.part-* > pico-model.sha256)
  echo "pico: finished; model parts in \$OUT: $(ls "$out" | grep -c part-)"
else
  echo "pico: not finished; call again to resume"
fi
