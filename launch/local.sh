#!/usr/bin/env bash
# Local CPU/GPU run: pretrain, then evaluate, in one workdir.
#
#   launch/local.sh [CONFIG [WORKDIR [--config.k=v ...]]]
#
# Defaults to the smoke config on the embedded data. On a CPU, set
# XLA_FLAGS=--xla_force_host_platform_device_count=8 to exercise sharding.
set -euo pipefail
config=${1:-configs/smoke.py}
workdir=${2:-/tmp/cj_local}
shift $(( $# > 2 ? 2 : $# ))
cd "$(dirname "$0")/.."
python -m contrastive_jax.pretrain --config="$config" --workdir="$workdir" "$@"
