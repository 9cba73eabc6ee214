#!/usr/bin/env bash
# The wheels rn50 needs on a GPU machine that has its own Python and PyTorch but none of
# rn50's other requirements and no network (Python 3.12 on x86-64 Linux by default):
#
#   bash benchmarks/gpu_wheels.sh [DIR=.whl] [PYTHON_VERSION=3.12]
#
# Copy DIR there with the checkout, then, on that machine:
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl
#   PYTHONPATH=/tmp/site OUT=/tmp/gpu PRICE=2.5 bash benchmarks/gpu_run.sh
#
# Only what such an image usually lacks: simplejpeg (the cpu decode mode's libjpeg-turbo;
# without it that mode falls back to PIL and its figures would measure the fallback),
# torchinfo (the model summary at the start of a run), and for benchmarks/gpu_decoders.py
# NVIDIA's nvImageCodec for CUDA 13 (nvidia-nvimgcodec-cu13, one py3-none wheel with a module
# for each Python, 25.0 MB) with the nvJPEG library it loads (nvidia-nvjpeg, 13.0 as the CUDA
# 13.0 of torch's cu130 builds; 3.7 MB): nvImageCodec's JPEG decoders, the hardware one
# included, need libnvjpeg.so.13, which its wheel leaves to that optional dependency or to a
# CUDA toolkit in /usr/local/cuda/lib64; carried, it is found first, next to nvImageCodec in
# the --target folder (nvidia/cu13/lib, on nvImageCodec's library path). DALI
# (nvidia-dali-cuda130 2.4.0, 198.7 MB) is not carried: it alone is past the 64 MiB that a
# device machine takes with the checkout. PyTorch, torchvision, NumPy, Pillow, PyYAML, tqdm,
# matplotlib, scikit-image and scikit-learn are expected there; gpu_run.sh says which one is
# missing before it measures anything.
#
# At the end it prints the size of DIR and of it with the checkout's tracked files, and
# fails (exit 1) when that is over 64 MiB.
set -euo pipefail
DIR=${1:-.whl}
PYV=${2:-3.12}
LIMIT=$((64 * 1024 * 1024))
mkdir -p "$DIR"
python3 -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
  --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DIR" 'simplejpeg>=1.7' 'torchinfo>=1.8' \
  'nvidia-nvimgcodec-cu13==0.9.0.20' 'nvidia-nvjpeg==13.0.*'
ls -l "$DIR"
wheels=$(find "$DIR" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
tree=$(git ls-files -z | xargs -0 stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}')
total=$((wheels + tree))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "$DIR: $wheels bytes ($(mib "$wheels")); with the checkout's tracked files: $total bytes" \
  "($(mib "$total")) of the $(mib "$LIMIT") a device machine takes"
if ((total > LIMIT)); then
  echo "error: $DIR and the checkout are $(mib "$total"), over the 64 MiB carry limit" >&2
  exit 1
fi
