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
# without it that mode falls back to PIL and its figures would measure the fallback) and
# torchinfo (the model summary at the start of a run). PyTorch, torchvision, NumPy, Pillow,
# PyYAML, tqdm, matplotlib, scikit-image and scikit-learn are expected there; gpu_run.sh
# says which one is missing before it measures anything.
set -euo pipefail
DIR=${1:-.whl}
PYV=${2:-3.12}
mkdir -p "$DIR"
python3 -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
  --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DIR" 'simplejpeg>=1.7' 'torchinfo>=1.8'
ls "$DIR"
