#!/usr/bin/env bash
# Every GPU measurement BENCHMARKS.md wants, and the CUDA tests, in one call of a few minutes:
#
#   OUT=/tmp/gpu PRICE=2.5 bash benchmarks/gpu_run.sh
#
# With this checkout's .venv (make) it uses that; otherwise python3 with the machine's own
# PyTorch and rn50 from src/ (for an image without rn50's other requirements, see
# benchmarks/gpu_wheels.sh). Each step has a time limit, and all of them together BUDGET
# seconds (default 480): a step that fails or runs out of time is noted in run.txt, the
# others go on, and each file is written when its step ends. Into $OUT (8 files):
#
#   run.txt          the card, driver, torch; each step's exit status and seconds, and the
#                    end of its errors when it failed; the end of the demo's training log
#                    (`make demo`'s training on the GPU with data.decode=gpu); the 32- and
#                    40-epoch recipes' projections, from bench-16ep.json
#   bench-224.json   rn50 bench of configs/imagenet-reference.yaml: model step for fp32/bf16 x
#                    channels_last at 224 px, the data modes (decode gpu included) with 1 and
#                    all cores' workers, end to end, the reference run's projection at $PRICE
#   bench-16ep.json  the same for configs/rn50-16-epochs.yaml: 192 px and its 160 px stage,
#                    its projected time and cost
#   cuda-tests.txt   pytest tests/test_cuda.py (nvJPEG, the GPU data path, fp16/bf16/fp32
#                    training, a GPU checkpoint on the CPU, torchrun with NCCL)
#   e2e-gpu.json     end to end at 224 px with data.decode=gpu (bf16, channels_last),
#                    decoded 2 batches ahead in a thread (data.decode_ahead's default): set
#                    beside bench-224.json's model, data and decode-cpu end-to-end figures,
#                    it shows whether decoding on the GPU keeps up with the training step
#   e2e-gpu-between.json  the same with data.decode_ahead=0 (decoding between steps): what
#                    the decode thread gains
#   switches.json    benchmarks/model_switches.py at 224 px, batch 256
#   compile.json     the model step with torch.compile off and on (bf16, channels_last), and
#                    end to end with the faster of the two, with a worker per core
#
# DEVICE=cpu QUICK=1 runs the same steps in miniature, to check the script without a GPU.
set -uo pipefail
OUT=${OUT:?set OUT to a folder for the results}
PRICE=${PRICE:-0}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-480}
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
LOG="$OUT/run.txt"
START=$SECONDS

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
  echo "cores: $(nproc)  python: $("$PY" -V 2>&1)"
} > "$LOG"

# The imports every step needs: a missing one stops here, before anything is measured.
if ! "$PY" - >> "$LOG" 2>&1 <<'PYEOF'
import importlib, sys
missing = []
for name in ("torch", "torchvision", "numpy", "PIL", "yaml", "tqdm", "matplotlib", "skimage",
             "sklearn", "simplejpeg", "torchinfo", "pytest", "rn50"):
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
import torch, torchvision
print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda",
      torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))
if missing:
    sys.exit(f"missing: {', '.join(missing)} (benchmarks/gpu_wheels.sh)")
PYEOF
then
  cat "$LOG"
  exit 2
fi

# step NAME LIMIT_S OUTFILE CMD...: run CMD with stdout to OUTFILE, within LIMIT_S and what
# is left of BUDGET; note its status.
step() {
  local name=$1 limit=$2 out=$3
  shift 3
  local left=$((BUDGET - (SECONDS - START)))
  if ((left < 20)); then
    echo "$name: skipped, the budget is spent" >> "$LOG"
    return
  fi
  ((limit > left)) && limit=$left
  local t0=$SECONDS err
  err=$(mktemp)
  timeout "$limit" "$@" > "$out" 2> "$err"
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s (limit $limit s)" >> "$LOG"
  if ((rc != 0)); then tail -n 25 "$err" | sed 's/^/    /' >> "$LOG"; fi
  rm -f "$err"
}

RN50=("$PY" -m rn50)
sets=()
small=()
switches=(--resolution 224 --batch 256 --steps 10 --repeats 3)
demo=(--set data.decode=gpu)
if [[ -n "${QUICK:-}" ]]; then
  sets=(--set model.arch=resnet18 --set data.resolution=64 --set data.min_resolution=32
        --set data.ramp_start_epoch=1 --set data.ramp_end_epoch=2 --set train.epochs=3)
  small=("${sets[@]}" --batch-sizes 4 --steps 1 --repeats 1 --images 16 --workers 1)
  switches=(--resolution 32 --batch 4 --steps 1 --repeats 1)
  demo+=(--set train.epochs=1 --set model.arch=resnet18)
fi

step bench-224 150 "$OUT/bench-224.json" "${RN50[@]}" bench \
  --config configs/imagenet-reference.yaml --device "$DEVICE" --json \
  --price-per-gpu-hour "$PRICE" "${small[@]}"
step bench-16ep 150 "$OUT/bench-16ep.json" "${RN50[@]}" bench \
  --config configs/rn50-16-epochs.yaml --device "$DEVICE" --json \
  --price-per-gpu-hour "$PRICE" "${small[@]}"
RN50_TEST_DEVICE=$DEVICE step cuda-tests 150 "$OUT/cuda-tests.txt" \
  "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py
step e2e-gpu 90 "$OUT/e2e-gpu.json" "${RN50[@]}" bench --only e2e --device "$DEVICE" \
  --config configs/imagenet-reference.yaml --set data.decode=gpu --precisions bf16 \
  --channels-last on --json "${small[@]}"
step e2e-gpu-between 90 "$OUT/e2e-gpu-between.json" "${RN50[@]}" bench --only e2e \
  --device "$DEVICE" --config configs/imagenet-reference.yaml --set data.decode=gpu \
  --set data.decode_ahead=0 --precisions bf16 --channels-last on --json "${small[@]}"
step switches 100 "$OUT/switches.json" "$PY" benchmarks/model_switches.py \
  --device "$DEVICE" --json "${switches[@]}"
rm -rf /tmp/rn50-demo-run  # a run left by an earlier call would only be "already complete"
"${RN50[@]}" data demo /tmp/rn50-demo > /dev/null 2>&1
step demo-gpu 120 /tmp/rn50-demo-gpu.txt "${RN50[@]}" train --config configs/demo.yaml \
  --set data.data_dir=/tmp/rn50-demo --set train.device="$DEVICE" \
  --set train.checkpoint_dir=/tmp/rn50-demo-run --set train.progress=lines "${demo[@]}"
grep -E "^(Training on|Using|Summary|Best val)" /tmp/rn50-demo-gpu.txt | sed 's/^/    /' >> "$LOG"
step compile 200 "$OUT/compile.json" "${RN50[@]}" bench --only model,e2e --device "$DEVICE" \
  --config configs/imagenet-reference.yaml --precisions bf16 --channels-last on --compile \
  --set data.workers="$(nproc)" --json "${small[@]}"

# The 32- and 40-epoch recipes train at the 16-epoch one's resolutions (160 and 192 px):
# their projections come from its measurements, measuring nothing again.
for epochs in 32 40; do
  echo "rn50-$epochs-epochs:" >> "$LOG"
  "${RN50[@]}" bench --from "$OUT/bench-16ep.json" --config "configs/rn50-$epochs-epochs.yaml" \
    --price-per-gpu-hour "$PRICE" "${sets[@]}" 2>&1 | grep -A2 "ImageNet-1k projection\|error" \
    | sed 's/^/    /' >> "$LOG"
done
echo "total: $((SECONDS - START)) s" >> "$LOG"
cat "$LOG"
