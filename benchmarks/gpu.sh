#!/usr/bin/env bash
# Whole-step SimCLR throughput on a lent GPU (H100): ResNet-50, 224 px,
# bfloat16, batch 256 per device, project step vs naive baseline.
#
# Here (a machine with pip and network):  bash benchmarks/fetch_gpu_wheels.sh
# There (repo root, `.whl` carried):      bash benchmarks/gpu.sh [extra throughput.py flags]
#
# The GPU image has jax (CUDA), flax, optax, orbax, chex, absl-py and PyYAML,
# but not dm-pix or ml-collections: benchmarks/gpu_env.sh installs them from
# .whl/ with --no-index into /tmp/site. TensorFlow is neither there nor needed.
# Results: the table on stdout (with the augmentation's device time per kernel),
# one JSON line, the augmentation's trace and HLO in $OUT (device tool) or /tmp.
# On the device tool's copy the git metadata can be stale (the JSON's commit said
# ce00cc1+dirty for later code on 2026-12-04): name the code with --note "...".
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS="${OUT:-/tmp}/throughput_gpu.jsonl"
TRACE="$(mktemp -d)/augment_trace"
source benchmarks/gpu_env.sh

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
"$PY" - <<'PYEOF'
import sys
import jax, flax, optax, dm_pix, ml_collections
print('python', sys.version.split()[0], '| jax', jax.__version__, '| flax', flax.__version__,
      '| optax', optax.__version__, '| dm_pix', dm_pix.__version__, '| devices', jax.devices())
assert 'tensorflow' not in sys.modules
PYEOF

"$PY" benchmarks/throughput.py --model resnet50 --image-size 224 --dtype bfloat16 \
  --batch 256 --steps 20 --warmup 3 --conv auto --augment-ablation --out "$RESULTS" \
  --profile-augment "$TRACE" \
  --note "gpu.sh: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)" "$@"
echo "gpu.sh: JSON line appended to $RESULTS"
# The device tool brings back files at most 2 folders down: the trace and the
# augmentation's optimised HLO (fusion names -> ops) go to the top of $OUT.
cp "$(ls -t $(find "$TRACE" -name perfetto_trace.json.gz) | head -1)" "${OUT:-/tmp}/augment_trace.json.gz"
gzip -c "$TRACE/augment_hlo.txt" > "${OUT:-/tmp}/augment_hlo.txt.gz"
echo "gpu.sh: augmentation trace and HLO in ${OUT:-/tmp}/augment_trace.json.gz, augment_hlo.txt.gz"
