#!/usr/bin/env bash
# Every GPU measurement BENCHMARKS.md wants, in one call (not yet run on a GPU: each step
# writes its file when it finishes, so a call cut short keeps what it measured):
#
#   OUT=/tmp/gpu PRICE=2.5 bash benchmarks/gpu_run.sh
#
# writes into $OUT: device.txt (card, driver, torch), bench-224.json (model step for each
# precision x channels_last at 224 px, data modes incl. decode gpu, end to end; the reference
# recipe's projection), bench-16ep.json (the 16-epoch recipe: 192 px, its 160 px stage, its
# projected time and cost at $PRICE per GPU-hour), switches.json (benchmarks/model_switches.py
# at 224 px, batch 256) and demo-gpu-decode.txt (the demo trained 2 epochs with
# data.decode=gpu). DEVICE=cpu QUICK=1 runs the same steps in miniature, to check the script.
set -euo pipefail
OUT=${OUT:?set OUT to a folder for the results}
PRICE=${PRICE:-0}
DEVICE=${DEVICE:-cuda}
RN50=${RN50:-.venv/bin/rn50}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"

small=()
switches=(--resolution 224 --batch 256 --steps 10 --repeats 3)
if [[ -n "${QUICK:-}" ]]; then
  small=(--set model.arch=resnet18 --set data.resolution=64 --set data.min_resolution=32
         --set data.ramp_start_epoch=1 --set data.ramp_end_epoch=2 --set train.epochs=3
         --batch-sizes 4 --steps 1 --repeats 1 --images 16 --workers 1)
  switches=(--resolution 32 --batch 4 --steps 1 --repeats 1)
fi

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
  "$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision",
torchvision.__version__, "cuda", torch.version.cuda, torch.cuda.is_available() and
torch.cuda.get_device_name(0))'
  nproc
} > "$OUT/device.txt" 2>&1

"$RN50" bench --config configs/imagenet-reference.yaml --device "$DEVICE" --json \
  --price-per-gpu-hour "$PRICE" "${small[@]}" > "$OUT/bench-224.json"
"$RN50" bench --config configs/rn50-16-epochs.yaml --device "$DEVICE" --json \
  --price-per-gpu-hour "$PRICE" "${small[@]}" > "$OUT/bench-16ep.json"
"$PY" benchmarks/model_switches.py --device "$DEVICE" --json "${switches[@]}" \
  > "$OUT/switches.json"

"$RN50" data demo data/demo > /dev/null
"$RN50" train --config configs/demo.yaml --set data.decode=gpu --set train.epochs=2 \
  --set train.device="$DEVICE" --set train.checkpoint_dir="$OUT/demo-gpu-decode" \
  --set train.progress=lines > "$OUT/demo-gpu-decode.txt" 2>&1
rm -f "$OUT"/demo-gpu-decode/*.pth
echo "results in $OUT"
