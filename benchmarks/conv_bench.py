"""Times XLA's convolution vs contrastive_jax.kernels.cpu_conv, pass by pass.

  /work/venv/bin/python benchmarks/conv_bench.py            # notes' workload
  /work/venv/bin/python benchmarks/conv_bench.py --quick    # tiny, seconds
  /work/venv/bin/python benchmarks/conv_bench.py --variants # wgrad variants
  ... --shape 256,16,16,128,128,3,2                         # B,H,W,Cin,Cout,K,stride

Workload default: 3x3, stride 1, SAME, batch 256, 32x32, 64->64, float32
(19.3 GFLOP per pass). GFLOP/s always uses that nominal count
2*B*OH*OW*Cin*Cout*K*K, whatever extra work an implementation does.
All candidates are timed in the same process, interleaved round by round,
because the machine is shared (2 cores, other jobs): we report the median and
the best of >= 5 rounds after one warm-up call each.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from contrastive_jax.kernels import cpu_conv

DN = ('NHWC', 'HWIO', 'NHWC')


def xla_conv(x, w, s):
  return lax.conv_general_dilated(x, w, (s, s), 'SAME', dimension_numbers=DN)


def our_conv(x, w, s, chunk_bytes=cpu_conv.DEFAULT_CHUNK_BYTES, wgrad='fast'):
  """Our weight gradient (wgrad='fast', what 'auto' now picks too) and, for
  strided convs, the polyphase input gradient."""
  return cpu_conv.conv_general_dilated(x, w, (s, s), 'SAME', dimension_numbers=DN,
                                       chunk_bytes=chunk_bytes, wgrad=wgrad)


def passes(conv):
  """The four timed passes for a conv(x, w) -> y."""
  fwd = jax.jit(conv)
  dgrad = jax.jit(lambda x, w, dy: jax.vjp(lambda x_: conv(x_, w), x)[1](dy)[0])
  wgrad = jax.jit(lambda x, w, dy: jax.vjp(lambda w_: conv(x, w_), w)[1](dy)[0])
  both = jax.jit(lambda x, w, dy: jax.vjp(conv, x, w)[1](dy))
  both_and_fwd = jax.jit(lambda x, w, dy: (lambda yv: (yv[0], yv[1](dy)))(jax.vjp(conv, x, w)))
  return dict(fwd=lambda x, w, dy: fwd(x, w), dgrad=dgrad, wgrad=wgrad,
              fwd_both=both_and_fwd, _both=both)


# ---------------------------------------------------------------------------
# Weight-gradient variants tried (see benchmarks/NOTES.md). All stride 1 SAME.
# ---------------------------------------------------------------------------

def _scan_chunks(fn, cb):
  """Contiguous batch chunks of cb images through lax.scan."""
  def f(x, dy):
    b = x.shape[0]
    xs = x.reshape((b // cb, cb) + x.shape[1:])
    ds = dy.reshape((b // cb, cb) + dy.shape[1:])
    g0 = fn(xs[0], ds[0])
    return lax.scan(lambda acc, a: (acc + fn(*a), None), g0, (xs[1:], ds[1:]))[0]
  return f


def _flat(x, dy, k):
  """Both padded to the (H+k-1)x(W+k-1) grid and flattened to rows; dy zero
  at the padding so shifts by whole rows never mix images."""
  p = k // 2
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))).reshape(-1, x.shape[-1])
  dp = jnp.pad(dy, ((0, 0), (0, 2 * p), (0, 2 * p), (0, 0))).reshape(-1, dy.shape[-1])
  wp = x.shape[2] + 2 * p
  return xp, dp, xp.shape[0] - (k - 1) * (wp + 1), wp


def v_im2col_tn(x, dy, k=3):
  """im2col [N*H*W, 9C] via 4-D shifted slices; dot contracting dim 0 (TN)."""
  p = k // 2
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  col = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(k) for j in range(k)], -1)
  g = lax.dot_general(col, dy, (((0, 1, 2), (0, 1, 2)), ((), ())))
  return g.reshape(k, k, c, dy.shape[-1])


def v_patches(x, dy, k=3):
  """lax.conv_general_dilated_patches (an identity-kernel conv) then one dot."""
  c = x.shape[-1]
  col = lax.conv_general_dilated_patches(x, (k, k), (1, 1), 'SAME', dimension_numbers=DN)
  g = lax.dot_general(col, dy, (((0, 1, 2), (0, 1, 2)), ((), ())))
  return g.reshape(c, k, k, dy.shape[-1]).transpose(1, 2, 0, 3)


def v_taps_tn(x, dy, k=3):
  """k*k dot_generals over shifted slices of the padded input (TN)."""
  p = k // 2
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  d = dy.reshape(-1, dy.shape[-1])
  gs = [lax.dot_general(xp[:, i:i + h, j:j + w].reshape(-1, c), d, (((0,), (0,)), ((), ())))
        for i in range(k) for j in range(k)]
  return jnp.stack(gs).reshape(k, k, c, dy.shape[-1])


def v_flat_im2col_nn(x, dy, k=3):
  """Flat-shift im2col in channel-major layout [9C, R] (contiguous shifts of
  rows of the padded grid) then one NN matmul [9C,R]@[R,O]."""
  c = x.shape[-1]
  xp, dp, l, wp = _flat(x, dy, k)
  xt = xp.T
  col = jnp.concatenate([lax.slice_in_dim(xt, i * wp + j, i * wp + j + l, axis=1)
                         for i in range(k) for j in range(k)], 0)
  return (col @ dp[:l]).reshape(k, k, c, dy.shape[-1])


def v_flat_taps_nn(x, dy, k=3):
  """Flat-shift, one NN matmul [C,R]@[R,O] per tap (k*k of them)."""
  c = x.shape[-1]
  xp, dp, l, wp = _flat(x, dy, k)
  xt, d = xp.T, dp[:l]
  return jnp.stack([lax.slice_in_dim(xt, i * wp + j, i * wp + j + l, axis=1) @ d
                    for i in range(k) for j in range(k)]).reshape(k, k, c, dy.shape[-1])


def v_flat_rows_nn(x, dy, k=3):
  """Flat-shift: shift the input by kw only ([3C, R']), then k NN matmuls on
  row-offset slices of it (one per kh)."""
  c = x.shape[-1]
  xp, dp, l, wp = _flat(x, dy, k)
  xt, d = xp.T, dp[:l]
  r = jnp.concatenate([lax.slice_in_dim(xt, j, j + l + (k - 1) * wp, axis=1)
                       for j in range(k)], 0)
  return jnp.stack([lax.slice_in_dim(r, i * wp, i * wp + l, axis=1) @ d
                    for i in range(k)]).reshape(k, k, c, dy.shape[-1])


def v_ours(scheme, chunk_bytes):
  def f(x, dy):
    k = 3
    return cpu_conv.conv_weight_grad(x, dy, (k, k), (1, 1), ((1, 1), (1, 1)),
                                     chunk_bytes=chunk_bytes, scheme=scheme)
  return f


def v_mixed_batched(cb):
  """Mixed scheme, no loop: chunks become a batch dim of one dot_general
  (materialises all shifted copies)."""
  def f(x, dy):
    n = x.shape[0]
    k = 3
    c, o = x.shape[-1], dy.shape[-1]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    oh, ow = dy.shape[1:3]
    xs = jnp.concatenate([xp[:, :, j:j + ow] for j in range(k)], -1).reshape(n // cb, -1, k * c)
    d = jnp.pad(dy, ((0, 0), (0, k - 1), (0, 0), (0, 0))).reshape(n // cb, -1, o)
    r = d.shape[1]
    ds = jnp.concatenate([jnp.pad(d[:, :r - i * ow], ((0, 0), (i * ow, 0), (0, 0)))
                          for i in range(k)], -1)
    g = lax.dot_general(xs.transpose(0, 2, 1), ds, (((2,), (1,)), ((0,), (0,))))
    return g.sum(0).reshape(k, c, k, o).transpose(2, 0, 1, 3)
  return f


def variants(b):
  xla_w = lambda x, dy: jax.vjp(lambda w_: xla_conv(x, w_, 1),
                                jnp.zeros((3, 3, x.shape[-1], dy.shape[-1])))[1](dy)[0]
  v = {'xla': xla_w, 'xla(eigen)': (xla_w, EIGEN_CONV)}
  if b >= 64:  # the unchunked ones need > 1 GB on the full workload
    v.update({'im2col_tn(whole)': v_im2col_tn, 'patches_op(whole)': v_patches,
              'taps_tn(whole)': v_taps_tn})
  v.update({
      'im2col_tn c16': _scan_chunks(v_im2col_tn, 16),
      'taps_tn c16': _scan_chunks(v_taps_tn, 16),
      'flat_im2col_nn c8': _scan_chunks(v_flat_im2col_nn, 8),
      'flat_taps_nn c8': _scan_chunks(v_flat_taps_nn, 8),
      'flat_rows_nn c8': _scan_chunks(v_flat_rows_nn, 8),
      'mixed batched cb8': v_mixed_batched(8),
  })
  for mb in (1, 4, 16):
    v[f'full {mb}MB'] = v_ours('full', mb << 20)
  for mb in (1, 2, 4, 8, 16, 64):
    v[f'mixed {mb}MB'] = v_ours('mixed', mb << 20)
  return v


# XLA:CPU routes big convolutions to YNNPACK by default; this per-compile
# option leaves them on the older Eigen path (same effect as XLA_FLAGS=
# --xla_cpu_experimental_ynn_fusion_type=-individual_convolution, but usable
# side by side in one process). It also turns YNNPACK off for dots, so only use
# it for programs without matmuls (the plain XLA conv passes).
EIGEN_CONV = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


def bench(fns: dict, args, rounds: int, flop: float, label: str):
  """fns: name -> f or (f, compiler_options)."""
  fns = {k: (jax.jit(f[0]).lower(*args).compile(compiler_options=f[1])
             if isinstance(f, tuple) else jax.jit(f)) for k, f in fns.items()}
  for f in fns.values():
    jax.block_until_ready(f(*args))  # compile + warm-up
  times = {k: [] for k in fns}
  for _ in range(rounds):
    for k, f in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(f(*args))
      times[k].append(time.perf_counter() - t)
  print(f'\n== {label}: median / best of {rounds} (interleaved), GFLOP/s on {flop / 1e9:.2f} '
        'GFLOP per pass')
  for k, ts in times.items():
    med, best = float(np.median(ts)), min(ts)
    print(f'  {k:24s} {med * 1e3:8.1f} ms  {flop / med / 1e9:6.1f} GFLOP/s   '
          f'(best {best * 1e3:7.1f} ms {flop / best / 1e9:6.1f})', flush=True)
  return times


# ResNet-18, CIFAR stem, 32 px: every distinct conv (H=W, Cin, Cout, K, stride).
RESNET18_CIFAR = [(32, 3, 64, 3, 1), (32, 64, 64, 3, 1), (32, 64, 128, 3, 2),
                  (16, 128, 128, 3, 1), (32, 64, 128, 1, 2), (16, 128, 256, 3, 2),
                  (8, 256, 256, 3, 1), (16, 128, 256, 1, 2), (8, 256, 512, 3, 2),
                  (4, 512, 512, 3, 1), (8, 256, 512, 1, 2)]
# ResNet-50 ImageNet stem at 224 px, and a 1x1 bottleneck conv.
EXTRA_LAYERS = [(224, 3, 64, 7, 2), (56, 64, 256, 1, 1)]


def bench_layers(b: int, rounds: int, dt, layers):
  """wgrad and fwd+both grads for each layer shape: XLA vs ours."""
  for (hw, c, o, k, s) in layers:
    kx, kw_, kd = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (b, hw, hw, c), dt)
    wt = (jax.random.normal(kw_, (k, k, c, o)) * 0.05).astype(dt)
    oh = -(-hw // s)
    dy = jax.random.normal(kd, (b, oh, oh, o), dt)
    flop = 2.0 * b * oh * oh * c * o * k * k
    xp = passes(functools.partial(xla_conv, s=s))
    op = passes(functools.partial(our_conv, s=s))
    fns = {'xla wgrad': xp['wgrad'], 'xla(eigen) wgrad': (xp['wgrad'], EIGEN_CONV),
           'ours wgrad': op['wgrad']}
    bench(fns, (x, wt, dy), rounds, flop, f'B={b} {hw}x{hw} {c}->{o} k{k} s{s} wgrad')
    fns = {'xla fwd_both': xp['fwd_both'], 'xla(eigen) fwd_both': (xp['fwd_both'], EIGEN_CONV),
           'ours fwd_both': op['fwd_both']}
    bench(fns, (x, wt, dy), rounds, 3 * flop, f'B={b} {hw}x{hw} {c}->{o} k{k} s{s} fwd+both')


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--quick', action='store_true', help='tiny shapes, seconds')
  ap.add_argument('--variants', action='store_true', help='compare wgrad variants')
  ap.add_argument('--layers', action='store_true',
                  help='every ResNet-18 CIFAR conv shape (+ R50 stem, 1x1) at --batch')
  ap.add_argument('--batch', type=int, default=128, help='batch for --layers')
  ap.add_argument('--shape', default='', help='B,H,W,Cin,Cout,K,stride')
  ap.add_argument('--rounds', type=int, default=0)
  ap.add_argument('--dtype', default='float32')
  ap.add_argument('--chunk_bytes', type=int, default=cpu_conv.DEFAULT_CHUNK_BYTES)
  a = ap.parse_args()
  shape = a.shape or ('8,16,16,16,16,3,1' if a.quick else '256,32,32,64,64,3,1')
  b, h, w, c, o, k, s = (int(v) for v in shape.split(','))
  rounds = a.rounds or (5 if a.quick else 7)
  dt = jnp.dtype(a.dtype)
  print(f'jax {jax.__version__} backend={jax.default_backend()} devices={len(jax.devices())} '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r} loadavg={os.getloadavg()}')
  if a.layers:
    layers = RESNET18_CIFAR + EXTRA_LAYERS
    if a.quick:
      layers = [(8, c_, o_, k_, s_) for (_, c_, o_, k_, s_) in RESNET18_CIFAR[:5]]
    bench_layers(a.batch if not a.quick else 4, rounds, dt, layers)
    return
  kx, kw_, kd = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (b, h, w, c), dt)
  wt = (jax.random.normal(kw_, (k, k, c, o)) * (2 / (k * k * c)) ** 0.5).astype(dt)
  oh, ow = -(-h // s), -(-w // s)
  dy = jax.random.normal(kd, (b, oh, ow, o), dt)
  flop = 2.0 * b * oh * ow * c * o * k * k
  print(f'shape B={b} H={h} W={w} Cin={c} Cout={o} K={k} stride={s} SAME {a.dtype}')

  if a.variants:
    assert s == 1 and k == 3, '--variants is written for 3x3 stride 1'
    vs = variants(b)
    ref = jax.jit(vs['xla'])(x, dy)
    for name, f in vs.items():
      f = f[0] if isinstance(f, tuple) else f
      err = float(jnp.max(jnp.abs(jax.jit(f)(x, dy) - ref)) / jnp.max(jnp.abs(ref)))
      assert err < 1e-3, (name, err)
    bench(vs, (x, dy), rounds, flop, 'weight-gradient variants')
    return

  xp = passes(functools.partial(xla_conv, s=s))
  op = passes(functools.partial(our_conv, s=s, chunk_bytes=a.chunk_bytes))
  for name in ('fwd', 'dgrad', 'wgrad', 'fwd_both'):
    n_pass = 3 if name == 'fwd_both' else 1
    fns = {f'xla {name}': xp[name], f'xla(eigen) {name}': (xp[name], EIGEN_CONV),
           f'ours {name}': op[name]}
    bench(fns, (x, wt, dy), rounds, flop * n_pass, f'{name} ({n_pass} pass)')
  # Correctness of the timed functions.
  r0, r1 = xp['_both'](x, wt, dy), op['_both'](x, wt, dy)
  for nm, a0, a1 in zip(('dx', 'dw'), r0, r1):
    a0, a1 = np.asarray(a0, np.float32), np.asarray(a1, np.float32)
    print(f'  check {nm}: max rel err {np.abs(a0 - a1).max() / np.abs(a0).max():.2e}')


if __name__ == '__main__':
  main()
