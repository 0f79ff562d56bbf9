#!/usr/bin/env bash
# Fashion-MNIST runs on a lent GPU, all at once (tiny nets leave a GPU mostly
# idle, so they share it):
#   1. the semi-supervised table (benchmarks/semi_supervised.py): pretraining
#      configs/fashion_mnist.py for $SSL_STEPS steps, then 1% / 10% fine-tuning,
#      SimCLR-pretrained vs from scratch, LR chosen on val per arm;
#   2. a recipe sweep for the CPU quality target (benchmarks/quality.py --steps):
#      each variant pretrains for the step count that its step rate buys in 20
#      (or 5) minutes on the 2-core CPU, measured there, and is compared on
#      val linear-probe accuracy.
# Here:  bash benchmarks/fetch_gpu_wheels.sh; mkdir .fmnist; cp /usr/share/datasets/fashion-mnist/*.gz .fmnist/
# There (repo root, `.whl` and `.fmnist` carried):  bash benchmarks/gpu_fmnist.sh
#   or the sweep alone, own variants:  SEMI=0 SWEEP='base 2300;jit1 2300 augment.jitter_strength=1.0' bash ...
# Results: $OUT/semi.log, $OUT/sweep.md, $OUT/fmnist_logs.tgz (every log and
# JSON), $OUT/ssl_pretrain.tgz (the pretraining run, to fine-tune elsewhere).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_fmnist_out}"
WORK="${WORK:-/tmp/gpu_fmnist}"
IDX="${IDX_DIR:-$PWD/.fmnist}"
SSL_STEPS="${SSL_STEPS:-4000}"
SSL_BATCH="${SSL_BATCH:-512}"
SSL_TIMEOUT_S="${SSL_TIMEOUT_S:-170}"   # pretraining: SIGTERM -> checkpoint -> fine-tune
SSL_SETS="${SSL_SETS:-}"                 # more pretraining overrides, space-separated k=v
SSL_LRS="${SSL_LRS:-0.05,0.2,0.8,1.6}"  # fine-tuning base LRs, each arm (chosen on val)
SSL_JOBS="${SSL_JOBS:-8}"
SEMI="${SEMI:-1}"                        # 0: the recipe sweep alone (all of the GPU for it)
STAGE_TIMEOUT_S="${STAGE_TIMEOUT_S:-300}"  # each background job, so the summary always runs
mkdir -p "$OUT" "$WORK"
source benchmarks/gpu_env.sh
# Many processes on one GPU: none may take most of its memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

ssl_sets=(--pretrain-set "data.idx_dir=$IDX" --pretrain-set "batch_size=$SSL_BATCH")
for kv in $SSL_SETS; do ssl_sets+=(--pretrain-set "$kv"); done
[ "$SEMI" = 1 ] && timeout "$STAGE_TIMEOUT_S" "$PY" benchmarks/semi_supervised.py --out "$WORK/ssl" \
  --pretrain-steps "$SSL_STEPS" --chunk-steps 0 "${ssl_sets[@]}" \
  --pretrain-timeout-s "$SSL_TIMEOUT_S" --jobs "$SSL_JOBS" --fractions 0.01,0.1 \
  --lrs "$SSL_LRS" --blocks -1 > "$OUT/semi.log" 2>&1 &

# name  steps  overrides (steps: 2.7 steps/s for width 32, 0.9 for width 64,
# 0.29 for width 128, measured on the idle 2-core CPU with the pretrain binary,
# 2026-11-28). SWEEP='name steps k=v ...;name steps ...' replaces the list.
VARIANTS=(
  "base_5min 800"
  "base 3200"
  "t05 3200 temperature=0.5"
  "crop008 3200 augment.crop_area_min=0.08"
  "adamw 3200 optim.name=adamw optim.learning_rate=0.001 optim.lr_scaling=none optim.weight_decay=0.0001"
  "w64 1100 model.resnet.base_width=64"
)
if [ -n "${SWEEP:-}" ]; then IFS=';' read -ra VARIANTS <<<"$SWEEP"; fi
for v in "${VARIANTS[@]}"; do
  read -r name steps sets <<<"$v"
  args=(--steps "$steps" --skip-baselines --out "$WORK/q_$name" --set "data.idx_dir=$IDX")
  for kv in $sets; do args+=(--set "$kv"); done
  timeout "$((STAGE_TIMEOUT_S - 40))" "$PY" benchmarks/quality.py "${args[@]}" \
    > "$WORK/q_$name.log" 2>&1 &
done
wait

{
  echo "| variant | steps | overrides | linear test | linear val | kNN-20 | kNN-200 |"
  echo "|---|---|---|---|---|---|---|"
  for v in "${VARIANTS[@]}"; do
    read -r name steps sets <<<"$v"
    "$PY" - "$WORK/q_$name/quality.json" "$name" "$steps" "$sets" <<'PYEOF'
import json, sys
path, name, steps, sets = sys.argv[1:5]
try:
  r = json.load(open(path))['rows'][0]
  f = lambda k: f"{100 * r[k]:.2f}%" if k in r else '-'
  print(f"| {name} | {steps} | {sets or '-'} | {f('linear_top1')} | {f('linear_val_top1')} | "
        f"{f('knn_k20_top1')} | {f('knn_k200_top1')} |")
except (OSError, KeyError, IndexError, ValueError) as e:
  print(f"| {name} | {steps} | {sets or '-'} | failed: {type(e).__name__} | | | |")
PYEOF
  done
} > "$OUT/sweep.md"
cat "$OUT/sweep.md"
[ "$SEMI" = 1 ] && tail -20 "$OUT/semi.log"
tar czf "$OUT/fmnist_logs.tgz" -C "$WORK" --exclude=checkpoints --exclude=tensorboard \
  --exclude='*.png' . 2>/dev/null
[ "$SEMI" = 1 ] && tar czf "$OUT/ssl_pretrain.tgz" -C "$WORK/ssl" --exclude=tensorboard pretrain 2>/dev/null
ls -la "$OUT"
