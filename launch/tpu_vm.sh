#!/usr/bin/env bash
# Launch a contrastive_jax binary on every host of a TPU VM (single host or pod slice).
#
#   launch/tpu_vm.sh TPU_NAME ZONE pretrain configs/imagenet_simclr_v1.py gs://BUCKET/run1 [--config.k=v ...]
#
# Copies this checkout to every worker, installs it (jax[tpu]), and runs the same
# command on all of them; jax.distributed initialises itself from the TPU
# environment (config.multihost='auto'). Re-running resumes from the latest
# checkpoint in the workdir; preemption (SIGTERM) writes a checkpoint first.
set -euo pipefail
if [ $# -lt 5 ]; then
  echo "usage: $0 TPU_NAME ZONE BINARY CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
tpu=$1 zone=$2 binary=$3 config=$4 workdir=$5
shift 5
repo=$(cd "$(dirname "$0")/.." && pwd)
gcloud compute tpus tpu-vm scp --recurse --zone="$zone" --worker=all "$repo" "$tpu":~/contrastive_jax
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command "
  set -e; cd ~/contrastive_jax
  python3 -m venv ~/cj_venv && . ~/cj_venv/bin/activate
  pip install -q -U 'jax[tpu]' && pip install -q -e .
  python -m contrastive_jax.$binary --config=$config --workdir=$workdir $*"
