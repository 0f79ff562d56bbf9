#!/usr/bin/env bash
# Downloads, into .whl/ at the repo root, the pure-Python wheels that the GPU
# machine lacks for benchmarks/gpu.sh: dm-pix (augmentation), ml-collections
# (configs) and tensorboardX (the binaries' writer, for gpu_fmnist.sh). Their
# own needs (chex, absl-py, PyYAML, protobuf) and jax/flax/optax are already
# there; TensorFlow is not needed on the training path.
#
#   bash benchmarks/fetch_gpu_wheels.sh          # then carry .whl to the GPU machine
#
# Versions match this repo's venv (override: DM_PIX=... ML_COLLECTIONS=...).
# .whl/ is git-ignored (.gitignore) and travels with the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DM_PIX="${DM_PIX:-0.4.5}"
ML_COLLECTIONS="${ML_COLLECTIONS:-1.1.0}"
TENSORBOARDX="${TENSORBOARDX:-2.6.5}"
mkdir -p .whl
# Platform flags as the device notes give them; these two are py3-none-any
# wheels, so any of them matches. The GPU machine runs Python 3.12.
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  "dm-pix==${DM_PIX}" "ml-collections==${ML_COLLECTIONS}" "tensorboardX==${TENSORBOARDX}"
ls -l .whl
