#!/usr/bin/env bash
# The `gpu` recipe's regenerate + train steps in ONE call on a lent H100 (device tool), outputs under $OUT;
# then, on the CPU machine: `cat <files_at>/pycode-gpu.tgz.part-* | tar xzf - -C runs`,
# `python examples/train_pycode/shared_weights.py restore runs/pycode-gpu/{dspark,dflash,eagle3} --target T`, and
# calibration + evaluation there: `DEVICE=cpu STEPS="calibrate eval" examples/train_pycode/run.sh gpu`.
# Needs, carried: .whl/ (pydantic and its deps for cp312: the GPU image lacks them) and .gpu/pycode-23m/.
# Example (device tool): run(command="bash examples/train_pycode/gpu_session.sh", carry=[".whl", ".gpu/pycode-23m"])
set -euo pipefail
: "${OUT:?OUT must be set (the device tool sets it)}"
cd "$(dirname "$0")/../.."
[ -n "${SKIP_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
RUN_OUT=$OUT/pycode-gpu
mkdir -p "$RUN_OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} | tee "$RUN_OUT/machine.txt"
# The recipe is bounded so that packing below always runs inside the call's limit, whatever happens to it.
TARGET=${TARGET:-.gpu/pycode-23m} OUT=$RUN_OUT STEPS=${STEPS:-regen train} TIME_BUDGET_MIN=${TIME_BUDGET_MIN:-2.0} \
  timeout "${RECIPE_TIMEOUT_S:-500}" bash examples/train_pycode/run.sh gpu || echo "recipe exited with $?"
# What comes back is limited (8 files of <= 16 MiB): drop optimizer states and the target's shared weights
# (`shared_weights.py restore` puts them back), then one archive in parts.
rm -rf "$RUN_OUT"/*/checkpoints
for d in "$RUN_OUT"/{dspark,dflash,eagle3}; do
  [ -s "$d/model.safetensors" ] && python3 examples/train_pycode/shared_weights.py strip "$d"
done
tar czf - -C "$OUT" --exclude train_regen.jsonl.gz pycode-gpu | split -b 15M - "$OUT/pycode-gpu.tgz.part-"
cp "$RUN_OUT/recipe.log" "$OUT/recipe.log"; rm -rf "$RUN_OUT"
ls -l "$OUT"
