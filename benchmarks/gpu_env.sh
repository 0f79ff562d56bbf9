# Sourced by benchmarks/gpu*.sh: makes the carried wheels importable on the
# lent GPU machine (jax with CUDA, flax, optax, orbax there; no network).
#   dm-pix, ml-collections: augmentation and configs
#   tensorboardX:            the binaries' TensorBoard writer (pure Python)
# benchmarks/fetch_gpu_wheels.sh downloads them into .whl/ (git-ignored).
PY="${PYTHON:-python3}"
SITE="${SITE:-/tmp/site}"
if ! ls .whl/*.whl >/dev/null 2>&1; then
  echo "$0: no wheels in .whl/; run benchmarks/fetch_gpu_wheels.sh where pip can" \
       "download, and carry .whl" >&2
  exit 1
fi
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" .whl/*.whl
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# The binaries' XLA:CPU flag (contrastive_jax/kernels/xla_cpu.py) is for CPU training;
# a jaxlib that does not know it would abort, so it stays off here.
export CONTRASTIVE_JAX_XLA_DEFAULTS=0
