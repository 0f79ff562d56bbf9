#!/usr/bin/env bash
# Launch a contrastive_jax binary on every host of a TPU VM (single host or pod slice).
#
#   launch/tpu_vm.sh TPU_NAME ZONE pretrain configs/imagenet_simclr_v1.py gs://BUCKET/run1 [--config.k=v ...]
#
# Ships this checkout (working tree, without .git and virtualenvs) to every
# worker as a fresh ~/contrastive_jax, creates ~/cj_venv with jax[tpu] the
# first time only (a relaunch never upgrades JAX under a running experiment),
# and starts the same command on all workers, detached (nohup): closing the
# laptop or losing the ssh connection does not stop training; a relaunch
# refuses to start while a job it started still runs. Output is appended to
# ~/cj_logs/<workdir name>.log on each worker; follow worker 0 with
#
#   gcloud compute tpus tpu-vm ssh TPU_NAME --zone=ZONE --worker=0 --command='tail -f ~/cj_logs/run1.log'
#
# jax.distributed initialises itself from the TPU environment
# (config.multihost='auto'). Re-running the same command resumes from the
# latest checkpoint in the workdir; preemption (SIGTERM) writes a checkpoint
# first, at a step all hosts agree on.
set -euo pipefail
if [ $# -lt 5 ]; then
  echo "usage: $0 TPU_NAME ZONE BINARY CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
tpu=$1 zone=$2 binary=$3 config=$4 workdir=$5
shift 5
repo=$(cd "$(dirname "$0")/.." && pwd)
run_name=$(basename "$workdir")
# Every value pasted into the remote command line is shell-quoted.
args=$(printf ' %q' "--config=$config" "--workdir=$workdir" "$@")
log=$(printf '%q' "cj_logs/$run_name.log")
pidfile=$(printf '%q' "cj_logs/$run_name.pid")

tarball=$(mktemp -t contrastive_jax.XXXXXX.tar.gz)
trap 'rm -f "$tarball"' EXIT
tar -C "$repo" --exclude=.git --exclude=.venv --exclude='*.egg-info' --exclude=__pycache__ \
  -czf "$tarball" .
gcloud compute tpus tpu-vm scp --zone="$zone" --worker=all "$tarball" "$tpu":cj_src.tar.gz
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command "
  set -e
  mkdir -p ~/cj_logs
  for pidfile in ~/cj_logs/*.pid; do
    if [ -f \"\$pidfile\" ] && kill -0 \"\$(cat \"\$pidfile\")\" 2> /dev/null; then
      echo \"\$(hostname): the job of \$pidfile is still running; stop it first\" >&2
      exit 1
    fi
  done
  rm -rf ~/contrastive_jax && mkdir -p ~/contrastive_jax
  tar -C ~/contrastive_jax -xzf ~/cj_src.tar.gz && rm ~/cj_src.tar.gz
  # The marker, not the venv, says jax[tpu] is in: a failed first install is retried.
  if [ ! -f ~/cj_venv/.jax_tpu_installed ]; then
    python3 -m venv ~/cj_venv && . ~/cj_venv/bin/activate && pip install -q 'jax[tpu]'
    touch ~/cj_venv/.jax_tpu_installed
  fi
  . ~/cj_venv/bin/activate && cd ~/contrastive_jax && pip install -q -e .
  nohup python -m contrastive_jax.$binary$args >> ~/$log 2>&1 < /dev/null &
  echo \$! > ~/$pidfile
  echo \"\$(hostname): started, log in ~/$log\""
echo "Follow worker 0: gcloud compute tpus tpu-vm ssh $tpu --zone=$zone --worker=0" \
  "--command='tail -f ~/cj_logs/$run_name.log'"
