"""word2vec's negative-sampling update as one fused XLA:CPU FFI call.

Why: on the CPU, sgns.py's XLA update spends most of a step gathering and
scatter-adding table rows, which XLA:CPU does element by element, at a few
GB/s; the arithmetic (a few dot products and axpys of D floats per example)
is small, and XLA:CPU runs threefry's rounds (the noise words' uniforms) as
a loop. sgns_update.cc does the whole step (the uniforms, the noise words,
gathers, logits, gradients, the row-capped scatter-adds) in four passes over
the step's live examples with contiguous row copies, on `threads` OpenMP
threads, in place on the donated tables. It computes the function that
sgns.make_update's XLA body computes, up to float rounding
(tests/test_word2vec.py compares them), and the same bits for any thread
count. benchmarks/NOTES.md has the measurements.

When it is used: sgns.make_update(kernel='auto') takes it on the CPU backend
with one device when it builds (g++ and jax.ffi; compiled on first use into
ffi_build's cache, tuned for the machine's CPU); otherwise, and on GPU/TPU,
the XLA update runs. With several devices XLA's SPMD partitioner cannot split
a custom call, so every device would redo the whole step.
"""

from __future__ import annotations

import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from contrastive_jax.kernels import ffi_build

_SOURCE = pathlib.Path(__file__).with_name('sgns_update.cc')
_TARGET = 'SgnsUpdateF32'
_FLAGS = ('-O3', '-march=native', '-fopenmp')


def build(out_dir: pathlib.Path | None = None) -> pathlib.Path:
  """Compiles sgns_update.cc (cached; see ffi_build.compile_library)."""
  return ffi_build.compile_library(_SOURCE, _FLAGS, out_dir)


@functools.lru_cache(maxsize=None)
def _load() -> str:
  """'' once the handler is registered, else why it could not be."""
  return ffi_build.load_and_register('fused SGNS kernels', build, (_TARGET,))


def available() -> bool:
  return not _load()


def unavailable_reason() -> str:
  return _load()


def default_threads() -> int:
  """The cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def noise_index(cum: np.ndarray, buckets_per_word: int = 2) -> np.ndarray:
  """index[j] = #{i: cum[i] <= j / M} for j = 0..M, M the power of 2 at or
  above buckets_per_word x V: a draw u lies in bucket b = floor(u M) (exact:
  M is a power of 2) and its noise word in [index[b], index[b + 1]], so the
  kernel (sgns_update.cc, Draw) searches only that bucket's entries, none in
  most draws, for the result of a search over all of cum."""
  cum = np.asarray(cum, np.float32)
  m = 1 << max(int(np.ceil(np.log2(max(buckets_per_word * len(cum), 1024)))), 10)
  edges = np.arange(m + 1, dtype=np.float64) / m
  return np.searchsorted(cum.astype(np.float64), edges, side='right').astype(np.int32)


def draws_in_kernel() -> bool:
  """Whether the kernel can draw jax.random.uniform's own numbers from a key:
  the default PRNG is threefry2x32 with partitionable counters (sgns_update.cc
  repeats that draw); otherwise sgns_update draws them with XLA first."""
  return (jax.config.jax_default_prng_impl == 'threefry2x32'
          and bool(jax.config.jax_threefry_partitionable))


def sgns_update(w_in: jax.Array, w_out: jax.Array, ctx: jax.Array, ctx_mask: jax.Array,
                out: jax.Array, mask: jax.Array, draws: jax.Array, cum: jax.Array,
                cum_index: jax.Array, lr: jax.Array, *, cap: float, threads: int = 0,
                negative: int = 0, substeps: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(new w_in, new w_out, summed loss) of one SGNS step (see the module doc
  and sgns_update.cc). w_in, w_out: float32 [V, D], updated in place when the
  caller donates them; ctx, ctx_mask: [P, C] context ids and 0/1 weights
  (skip-gram: C = 1); out, mask: [P] output ids and 0/1 example weights;
  draws: the [P, K] uniforms in [0, 1) that pick the K noise words by
  inverse CDF on cum (the noise distribution's cumulative sum, float32 [V];
  cum_index: noise_index(cum)), or a PRNG key (raw uint32 [2] or typed) whose
  jax.random.uniform(key, (P, negative)) the kernel draws itself; lr: the
  step's learning rate; cap: sgns.row_scale's cap (<= 0: plain sums);
  threads: OpenMP threads (0: default_threads()); substeps: the examples as
  that many consecutive blocks, updated in turn (sgns.make_update)."""
  if not available():
    raise RuntimeError(f'the fused SGNS kernel is not available: {unavailable_reason()}')
  draws = jnp.asarray(draws)
  if jnp.issubdtype(draws.dtype, jax.dtypes.prng_key):
    draws = jax.random.key_data(draws)
  if draws.dtype == jnp.uint32:
    if draws.shape != (2,) or negative <= 0:
      raise ValueError(f'sgns_update: a key is a raw threefry key, uint32 [2] (got {draws.shape}), '
                       f'with negative > 0 (got {negative}).')
    if draws_in_kernel():
      key, uniform = draws, jnp.zeros((0, negative), jnp.float32)
    else:
      key, uniform = jnp.zeros(2, jnp.uint32), jax.random.uniform(
          draws, (out.shape[0], negative), jnp.float32)
  else:
    key, uniform = jnp.zeros(2, jnp.uint32), draws
  table = jax.ShapeDtypeStruct(w_in.shape, jnp.float32)
  call = jax.ffi.ffi_call(_TARGET, (table, table, jax.ShapeDtypeStruct((), jnp.float32)),
                          input_output_aliases={0: 0, 1: 1})
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  i32 = lambda x: jnp.asarray(x, jnp.int32)
  return call(w_in, w_out, i32(ctx), f32(ctx_mask), i32(out), f32(mask), f32(uniform), key,
              f32(cum), i32(cum_index), f32(lr), cap=np.float32(cap),
              threads=np.int64(threads or default_threads()), substeps=np.int64(substeps))
