"""A 2-D convolution whose weight gradient avoids XLA:CPU's convolution lowering.

Why: on the CPU backend XLA lowers the weight gradient (wgrad) of a convolution
to a "convolution with a huge window" (input channels as batch, batch as
features), which runs well below the rate of the same work written as a
matrix multiply, worst on 1x1 convs and RGB stems (benchmarks/conv_bench.py
times both; benchmarks/NOTES.md has the measurements). Here the forward pass
and the input gradient stay XLA's; only the weight gradient is rewritten as
dense matrix multiplies over shifted copies of the activations:

  dW[i, j, c, o] = sum_{n, h, w} x_pad[n, h*sh + i, w*sw + j, c] * dy[n, h, w, o]

"full" scheme: im2col. The input is copied once per tap (strided slices for
stride > 1) into a channel-major [kh*kw*C, rows] matrix, then one matmul with
dy [rows, O]. A 1x1 conv is just that matmul.
"mixed" scheme (stride 1, C, O >= 16, feature maps >= 16 px): the input is
shifted along W only (kw copies, channels (j, c)) and dy is shifted down along
H only (kh copies, channels (i, o), zero rows filling the gap inside each
image); one matmul [kw*C, rows] @ [rows, kh*O] then yields all kh*kw taps as
its blocks. It writes (kw*C + kh*O) instead of kh*kw*C values per pixel and
its matmul is squarer; the cost is (OH+kh-1)/OH times the matmul work.
The batch is processed in chunks of a few MB (a fori_loop) so the copies stay
in cache between the copy fusion and the matmul.

`Conv` is a drop-in for `flax.linen.Conv` (it IS an nn.Conv subclass that only
swaps `conv_general_dilated`), so the parameter tree ('kernel' [kh,kw,cin,cout],
optional 'bias') and the auto-generated module names ('Conv_0', ...) are
identical and checkpoints are interchangeable. Cases the custom VJP does not
cover (dilation, feature groups, non-NHWC layouts, non-2-D) fall back to lax.
The input gradient of a strided conv is rewritten too (strided_input_grad:
one stride-1 conv that yields every input phase, instead of XLA's conv over
zero-dilated dy). Maps with fewer pixels than the kernel has taps (a 3x3
conv on a 2x2 map), where XLA:CPU's convolution runs far below its usual
rate, are one matmul with the kernel unrolled over the map (small_map_conv).
This module only provides the convolution; kernels/backend.py decides where
it is used (on CPU; accelerators keep XLA's native convolution).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Pads = tuple[tuple[int, int], tuple[int, int]]

# Bytes of shifted copies built per wgrad chunk (one loop iteration), chosen
# with benchmarks/conv_bench.py: a few MB keeps them in L2/L3 between the copy
# and the matmul, where materialising the whole batch at once goes out to
# memory and is slower.
DEFAULT_CHUNK_BYTES = 4 << 20

_NHWC_DN = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                    out_spec=(0, 3, 1, 2))


# ----------------------------------------------------------------------------
# Weight gradient.
# ----------------------------------------------------------------------------

def _dot_nn(a: jax.Array, b: jax.Array) -> jax.Array:
  """a[P, R] @ b[R, Q] -> [P, Q], at least float32 (row-major 'NN' matmul).

  XLA:CPU runs NN dots through YNNPACK; a dot contracting dim 0 of both
  operands ('TN', what NHWC data gives naturally) falls back to a slower path.
  So the shifted copies of the input are built channel-major.
  """
  kw = {}
  sharding = getattr(jax.typeof(a), 'sharding', None)
  spec = getattr(sharding, 'spec', ())
  if len(spec) > 1 and spec[1] is not None:
    # Explicitly batch-sharded operands (the contraction runs over the batch):
    # each device contracts its own rows, then the [P, Q] result is summed
    # over devices (replicated output).
    kw['out_sharding'] = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  return lax.dot_general(a, b, (((1,), (0,)), ((), ())),
                         preferred_element_type=jnp.promote_types(a.dtype, jnp.float32),
                         **kw)


def choose_scheme(kernel_hw: tuple[int, int], strides: tuple[int, int], c: int, o: int,
                  out_hw: tuple[int, int]) -> str:
  """'full' (im2col) or 'mixed' (see module doc) for one conv geometry.

  'mixed' writes (kw*C + kh*O) instead of kh*kw*C values per pixel but its
  matmul also runs over the kh-1 zero rows per image, i.e. (OH+kh-1)/OH times
  the work. Timed with benchmarks/conv_bench.py, mixed wins at 32x32 (6% extra
  work for 3x3), ties at 16x16 (12.5%), and loses on smaller maps and for tiny
  C (the stem); hence the 12.5% bound below. It only exists for stride 1.
  """
  kh, kw = kernel_hw
  oh = out_hw[0]
  if strides != (1, 1) or kh * kw == 1 or min(c, o) < 16:
    return 'full'
  return 'mixed' if (oh + kh - 1) <= 1.125 * oh else 'full'


def _bytes_per_image(scheme: str, kernel_hw, c: int, o: int, out_hw, itemsize: int) -> int:
  kh, kw = kernel_hw
  oh, ow = out_hw
  if scheme == 'mixed':
    return (oh + kh - 1) * ow * (kw * c + kh * o) * itemsize
  return oh * ow * (kh * kw * c + o) * itemsize


def _wgrad_chunk(x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int],
                 strides: tuple[int, int], pads: Pads, scheme: str) -> jax.Array:
  """Weight gradient of one batch chunk: float32 [KH, KW, C, O]."""
  kh, kw = kernel_hw
  sh, sw = strides
  n, oh, ow, o = dy.shape
  c = x.shape[-1]
  xp = lax.pad(x, jnp.zeros((), x.dtype),
               ((0, 0, 0), (pads[0][0], pads[0][1], 0), (pads[1][0], pads[1][1], 0),
                (0, 0, 0)))
  # Channel-major input [C, n, H, W]: XLA fuses this transpose into the
  # shift/concat fusion below, and the dot becomes NN (see _dot_nn).
  xt = jnp.transpose(xp, (3, 0, 1, 2))
  if scheme == 'full':
    # im2col: tap (i, j) reads rows i, i+sh, ..., i+sh*(oh-1) (likewise cols).
    cols = [lax.slice(xt, (0, 0, i, j), (c, n, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1),
                      (1, 1, sh, sw)) for i in range(kh) for j in range(kw)]
    xcol = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=0)
    xcol = xcol.reshape(kh * kw * c, -1)
    if len(cols) == 1:
      # A transpose feeding a dot directly is folded into the dot (-> slow TN);
      # the barrier keeps the channel-major copy.
      xcol = lax.optimization_barrier(xcol)
    return _dot_nn(xcol, dy.reshape(-1, o)).reshape(kh, kw, c, o)
  assert scheme == 'mixed' and strides == (1, 1), (scheme, strides)
  hq = oh + kh - 1
  # Input shifted along W only: [(j, c), n*hq*ow].
  xs = jnp.concatenate([xt[:, :, :hq, j:j + ow] for j in range(kw)], axis=0)
  xs = xs.reshape(kw * c, -1)
  # dy shifted down by i rows inside each image (zero rows fill the gap):
  # [n*hq*ow, (i, o)]; row (h', w) then pairs x row h' with dy row h'-i.
  ds = jnp.concatenate([jnp.pad(dy, ((0, 0), (i, kh - 1 - i), (0, 0), (0, 0)))
                        for i in range(kh)], axis=-1).reshape(-1, kh * o)
  g = _dot_nn(xs, ds)                                  # [(j, c), (i, o)]
  return g.reshape(kw, c, kh, o).transpose(2, 0, 1, 3)


def _chunking(n: int, bytes_per_image: int, chunk_bytes: int) -> tuple[int, int, int]:
  """-> (images per chunk cb, number of chunks nb, zero images to append).

  cb is the divisor of n closest (in ratio) to chunk_bytes / bytes_per_image,
  so the [n] -> [cb, nb] split is a free reshape; only when no divisor lies
  within 2x of the target is the batch padded with zero images (a copy).
  """
  target = max(1.0, min(n, chunk_bytes / max(bytes_per_image, 1)))
  divisors = [d for d in range(1, n + 1) if n % d == 0]
  cb = min(divisors, key=lambda d: abs(np.log(d / target)))
  if 0.5 <= cb / target <= 2.0:
    return cb, n // cb, 0
  cb = int(round(target))
  nb = -(-n // cb)
  return cb, nb, cb * nb - n


def _batch_shards(x: jax.Array) -> int:
  """How many ways the batch axis of x is sharded in its (explicit) type."""
  try:
    sharding = jax.typeof(x).sharding
    axes = sharding.spec[0] if len(sharding.spec) else None
  except (AttributeError, TypeError):
    return 1
  if axes is None:
    return 1
  axes = axes if isinstance(axes, tuple) else (axes,)
  return int(np.prod([sharding.mesh.shape[a] for a in axes]))


def conv_weight_grad(x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int],
                     strides: tuple[int, int], pads: Pads, *,
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                     scheme: str | None = None) -> jax.Array:
  """dL/dW of y = conv(x, W) (NHWC / HWIO) given dy = dL/dy; float32 result.

  Chunks the batch so the shifted copies stay in cache. Chunk b holds images
  b, b+nb, b+2nb, ... (a free reshape [N] -> [cb, nb]): the loop then runs over
  an axis that is not the (possibly sharded) batch axis, so under a batch-
  sharded jit each device keeps working on its own images.
  """
  kernel_hw, strides = tuple(kernel_hw), tuple(strides)
  n, c = x.shape[0], x.shape[-1]
  out_hw, o = dy.shape[1:3], dy.shape[-1]
  scheme = scheme or choose_scheme(kernel_hw, strides, c, o, out_hw)
  if scheme == 'mixed' and strides != (1, 1):
    scheme = 'full'
  per_image = _bytes_per_image(scheme, kernel_hw, c, o, out_hw, x.dtype.itemsize)
  # With an explicitly sharded batch (each device holds n/shards images), the
  # chunk must be a multiple of `shards` so [n] -> [cb, nb] keeps the sharding
  # on cb; chunk size is then judged per device.
  shards = _batch_shards(x)
  if n % shards:
    shards = 1
  cb, nb, extra = _chunking(n // shards, per_image, chunk_bytes)
  if shards > 1 and extra:  # no zero-padding of a sharded batch: nearest divisor
    nl = n // shards
    cb = min((d for d in range(1, nl + 1) if nl % d == 0),
             key=lambda d: abs(np.log(d * per_image / chunk_bytes)))
    nb, extra = nl // cb, 0
  cb *= shards
  chunk = functools.partial(_wgrad_chunk, kernel_hw=kernel_hw, strides=strides,
                            pads=pads, scheme=scheme)
  if nb == 1:
    return chunk(x, dy)
  if extra:  # zero images contribute zero gradient
    x = jnp.pad(x, ((0, extra),) + ((0, 0),) * 3)
    dy = jnp.pad(dy, ((0, extra),) + ((0, 0),) * 3)
  # The [n] -> [cb, nb] reshape is written inside the body on purpose. Done
  # outside, XLA fuses the (free) reshape with x's producer, so it recomputes
  # the whole BatchNorm/ReLU chain into a second full-size copy of x for the
  # loop; inside, the loop reads x where it already is.
  def body(b, acc):
    xb = lax.dynamic_index_in_dim(x.reshape((cb, nb) + x.shape[1:]), b, axis=1,
                                  keepdims=False)
    db = lax.dynamic_index_in_dim(dy.reshape((cb, nb) + dy.shape[1:]), b, axis=1,
                                  keepdims=False)
    return acc + chunk(xb, db)

  init = jnp.zeros(kernel_hw + (c, o), jnp.float32)
  return lax.fori_loop(0, nb, body, init)


# ----------------------------------------------------------------------------
# Input gradient and XLA's own weight gradient.
# ----------------------------------------------------------------------------

def _lax_conv(x, w, strides, pads, precision=None):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC_DN,
                                  precision=precision)


def _phase_taps(k: int, stride: int, pad_lo: int, phase: int) -> tuple[int, int, int]:
  """For input rows r = stride*i + phase: (first tap k0, tap count m, dy offset).

  Forward: y[h] = sum_k x_pad[stride*h + k] w[k], so row r of dx collects
  dy[h] w[k] over stride*h + k - pad_lo = r: the taps k = k0, k0 + stride, ...
  with k0 = (phase + pad_lo) mod stride, and h = i + q - j for tap k0 +
  stride*j, q = (phase + pad_lo - k0) / stride. Reversed, that is a stride-1
  correlation of dy, starting at offset q - (m - 1), with m taps.
  """
  k0 = (phase + pad_lo) % stride
  m = max(0, -(-(k - k0) // stride))
  q = (phase + pad_lo - k0) // stride
  return k0, m, q - (m - 1)


def _phase_kernel_index(k: int, stride: int, pad_lo: int) -> tuple[np.ndarray, int]:
  """Per window position t and phase a, the tap of w it multiplies (-1: none),
  and the offset of the window's first dy row.

  Every phase's taps are read through one common window of dy rows
  i + lo .. i + lo + T - 1, so that all phases come out of one convolution.
  """
  taps = [_phase_taps(k, stride, pad_lo, a) for a in range(stride)]
  lo = min(off for _, m, off in taps if m)
  hi = max(off + m - 1 for _, m, off in taps if m)
  index = np.full((hi - lo + 1, stride), -1)
  for a, (k0, m, off) in enumerate(taps):
    for j in range(m):
      index[off - lo + j, a] = k0 + stride * (m - 1 - j)
  return index, lo


def strided_input_grad(dy: jax.Array, w: jax.Array, x_shape: Sequence[int],
                       strides: tuple[int, int], pads: Pads) -> jax.Array:
  """dL/dx of a strided conv as one stride-1 convolution over all input phases.

  XLA writes this gradient as a convolution over dy dilated with zeros
  (lhs_dilation = stride), which Eigen runs on the zero-inserted map, so most
  of its multiplies are by zero and it runs far below the rate of an ordinary
  convolution of the same useful work. The rows and columns of dx split into
  stride x stride phases (rows r = stride*i + a, columns stride*j + b), and
  each phase is a stride-1 correlation of dy with the taps of w that land on
  it (2x2, 2x1, 1x2, 1x1 of a 3x3/2 kernel). Reading every phase through one
  common window of dy (2x2 for 3x3/2) turns them into a single stride-1
  convolution with stride*stride*C output channels, zero where a tap does
  not reach a phase (16 taps computed for 9 useful), then one interleave.
  One convolution rather than one per phase: with several simulated CPU
  devices, the four-convolution form can time out XLA:CPU's all-reduce
  rendezvous (seen in the finetune pipeline test).
  """
  n, h, wd, c = x_shape
  sh, sw = strides
  oh, ow = dy.shape[1:3]
  ni, nj = -(-h // sh), -(-wd // sw)   # rows / columns per phase, padded up
  ih, loh = _phase_kernel_index(w.shape[0], sh, pads[0][0])
  iw, low = _phase_kernel_index(w.shape[1], sw, pads[1][0])
  # kernel[t, u, o, a, b, c] = w[ih[t, a], iw[u, b], c, o], or 0 where either is -1.
  mask = (ih >= 0)[:, None, None, :, None, None] & (iw >= 0)[None, :, None, None, :, None]
  wt = w.transpose(0, 1, 3, 2)[np.maximum(ih, 0)][:, :, np.maximum(iw, 0)]  # [T, a, U, b, O, C]
  wt = jnp.where(mask, wt.transpose(0, 2, 4, 1, 3, 5), 0)                    # [T, U, O, a, b, C]
  kernel = wt.reshape(ih.shape[0], iw.shape[0], w.shape[3], sh * sw * c)
  # lax.pad with negative widths crops: dy rows loh .. loh + ni + T - 2.
  dyp = lax.pad(dy, jnp.zeros((), dy.dtype),
                ((0, 0, 0), (-loh, ni + loh + ih.shape[0] - 1 - oh, 0),
                 (-low, nj + low + iw.shape[0] - 1 - ow, 0), (0, 0, 0)))
  out = _lax_conv(dyp, kernel, (1, 1), ((0, 0), (0, 0)))      # [n, ni, nj, (a, b, c)]
  # Under a mesh with Explicit axes the merging reshape needs its output
  # sharding spelled out: dx is batch-sharded like dy.
  sharding = getattr(jax.typeof(dy), 'sharding', None)
  spec = getattr(sharding, 'spec', ())
  out_sharding = sharding if any(p is not None for p in spec) else None
  dx = out.reshape(n, ni, nj, sh, sw, c).transpose(0, 1, 3, 2, 4, 5)
  dx = lax.reshape(dx, (n, ni * sh, nj * sw, c), out_sharding=out_sharding)
  return dx[:, :h, :wd]


def conv_input_grad(dy: jax.Array, w: jax.Array, x_shape: Sequence[int],
                    strides: tuple[int, int], pads: Pads,
                    method: str = 'auto') -> jax.Array:
  """dL/dx.

  method: 'xla' = XLA's transpose of the convolution; 'flipped' (stride 1
  only) = a forward conv with the spatially flipped, in/out-swapped kernel,
  which is what XLA emits anyway (so it runs at the same speed);
  'polyphase' (strided_input_grad); 'auto' = polyphase for strided convs,
  XLA's otherwise.
  """
  if method not in ('auto', 'xla', 'flipped', 'polyphase'):
    raise ValueError(f"input-gradient method must be 'auto', 'xla', 'flipped' or "
                     f"'polyphase', got {method!r}")
  strided = tuple(strides) != (1, 1)
  if method == 'polyphase' or (method == 'auto' and strided):
    return strided_input_grad(dy, w, x_shape, strides, pads)
  kh, kw = w.shape[:2]
  if method == 'flipped' and not strided:
    dpads = ((kh - 1 - pads[0][0], kh - 1 - pads[0][1]),
             (kw - 1 - pads[1][0], kw - 1 - pads[1][1]))
    if min(min(p) for p in dpads) >= 0:
      wf = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
      return _lax_conv(dy, wf, (1, 1), dpads)
  (dx,) = jax.linear_transpose(lambda x: _lax_conv(x, w, strides, pads),
                               jax.ShapeDtypeStruct(tuple(x_shape), dy.dtype))(dy)
  return dx


def xla_weight_grad(x: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int],
                    strides: tuple[int, int], pads: Pads, c_out: int) -> jax.Array:
  """XLA's own weight gradient (the transpose rule of lax's convolution)."""
  w_shape = jax.ShapeDtypeStruct(tuple(kernel_hw) + (x.shape[-1], c_out), x.dtype)
  (dw,) = jax.linear_transpose(lambda w: _lax_conv(x, w, strides, pads), w_shape)(dy)
  return dw


# ----------------------------------------------------------------------------
# The custom-VJP convolution.
# ----------------------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads,
          precision: Any, chunk_bytes: int, wgrad: str) -> jax.Array:
  return _lax_conv(x, w, strides, pads, precision)


def _conv_fwd(x, w, strides, pads, precision, chunk_bytes, wgrad):
  return _conv(x, w, strides, pads, precision, chunk_bytes, wgrad), (x, w)


def _conv_bwd(strides, pads, precision, chunk_bytes, wgrad, res, dy):
  del precision  # CPU float32 convs/dots are full precision regardless
  x, w = res
  dy = dy.astype(x.dtype)
  dx = conv_input_grad(dy, w, x.shape, strides, pads).astype(x.dtype)
  kernel_hw = w.shape[:2]
  if wgrad == 'xla':
    dw = xla_weight_grad(x, dy, kernel_hw, strides, pads, w.shape[-1])
  else:
    dw = conv_weight_grad(x, dy, kernel_hw, strides, pads, chunk_bytes=chunk_bytes)
  return dx, dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


# ----------------------------------------------------------------------------
# Maps smaller than the kernel.
# ----------------------------------------------------------------------------

def _conv_out_hw(in_hw: Sequence[int], k_hw: Sequence[int], strides: Sequence[int],
                 pads: Pads) -> tuple[int, int]:
  """Output height and width of a convolution (0 where the window never fits)."""
  return tuple(max((n + lo + hi - k) // s + 1, 0)  # type: ignore[return-value]
               for n, k, s, (lo, hi) in zip(in_hw, k_hw, strides, pads))


@functools.lru_cache(maxsize=None)
def _small_map_taps(in_hw: tuple[int, int], k_hw: tuple[int, int],
                    strides: tuple[int, int], pads: Pads) -> np.ndarray:
  """taps[q, p, t] = 1 where input pixel q meets output pixel p through tap t."""
  (h, w), (kh, kw), (sh, sw) = in_hw, k_hw, strides
  oh, ow = _conv_out_hw(in_hw, k_hw, strides, pads)
  taps = np.zeros((h, w, oh, ow, kh, kw), np.float32)
  for oy in range(oh):
    for ox in range(ow):
      for i in range(kh):
        for j in range(kw):
          iy, ix = oy * sh + i - pads[0][0], ox * sw + j - pads[1][0]
          if 0 <= iy < h and 0 <= ix < w:
            taps[iy, ix, oy, ox, i, j] = 1
  return taps.reshape(h * w, oh * ow, kh * kw)


def _unrolled_kernel(w: jax.Array, taps: np.ndarray, precision: Any) -> jax.Array:
  kh, kw, c, o = w.shape
  q, p, _ = taps.shape
  return jnp.einsum('qpt,tco->qcpo', taps.astype(w.dtype), w.reshape(kh * kw, c, o),
                    precision=precision).reshape(q * c, p * o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _small_map_conv(x, w, strides, pads, precision):
  n, h, wd, _ = x.shape
  taps = _small_map_taps((h, wd), w.shape[:2], strides, pads)
  y = jnp.dot(x.reshape(n, -1), _unrolled_kernel(w, taps, precision), precision=precision)
  return y.reshape(n, *_conv_out_hw((h, wd), w.shape[:2], strides, pads), w.shape[3])


def _small_map_conv_fwd(x, w, strides, pads, precision):
  return _small_map_conv(x, w, strides, pads, precision), (x, w)


def _small_map_conv_bwd(strides, pads, precision, res, dy):
  x, w = res
  n, h, wd, c = x.shape
  kh, kw, _, o = w.shape
  taps = _small_map_taps((h, wd), (kh, kw), strides, pads)
  q, p, _ = taps.shape
  dy = dy.reshape(n, p * o).astype(x.dtype)
  dx = jnp.dot(dy, _unrolled_kernel(w, taps, precision).T, precision=precision)
  # _dot_nn sums the batch contraction over devices when x is batch-sharded;
  # autodiff's transpose of the forward dot cannot say how to shard it.
  dense_grad = _dot_nn(x.reshape(n, q * c).T, dy).reshape(q, c, p, o)
  dw = jnp.einsum('qpt,qcpo->tco', taps, dense_grad, precision=precision)
  return dx.reshape(x.shape), dw.reshape(w.shape).astype(w.dtype)


_small_map_conv.defvjp(_small_map_conv_fwd, _small_map_conv_bwd)


def small_map_conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads,
                   precision: Any = None) -> jax.Array:
  """The convolution as one matmul with the kernel unrolled over the whole map.

  For maps with fewer pixels than the kernel has taps (H*W < kh*kw: a 3x3 conv
  on 2x2 or 2x4 maps, 5x5 on 4x4) XLA:CPU's convolution drops to a small
  fraction of the rate it reaches on larger maps. Such a map is so
  small that the dense [H*W*C, OH*OW*O] matrix of every (input pixel, output
  pixel) pair, zero where no tap joins them, is a few MB, and nearly every pair
  is joined (a 3x3 SAME conv on 2x2 joins all 16). Both gradients are matmuls
  with the same matrix.
  """
  return _small_map_conv(x, w, strides, pads, precision)


def _explicit_pads(padding: Any, in_hw: Sequence[int], k_hw: Sequence[int],
                   strides: Sequence[int]) -> Pads:
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(tuple(in_hw), tuple(k_hw), tuple(strides), padding)
  else:
    pads = padding
  return tuple((int(lo), int(hi)) for lo, hi in pads)  # type: ignore[return-value]


def _is_nhwc(dimension_numbers: Any) -> bool:
  if dimension_numbers is None:
    return False  # lax's default is NCHW/OIHW
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return tuple(dimension_numbers) == tuple(_NHWC_DN)
  return tuple(dimension_numbers) == ('NHWC', 'HWIO', 'NHWC')


def _all_ones(v: Any) -> bool:
  return v is None or all(int(d) == 1 for d in np.atleast_1d(v))


def is_plain_nhwc_conv(lhs: jax.Array, rhs: jax.Array, lhs_dilation: Any,
                       rhs_dilation: Any, dimension_numbers: Any,
                       feature_group_count: int, batch_group_count: int,
                       preferred_element_type: Any) -> bool:
  """True for a 2-D NHWC/HWIO convolution without dilation or groups, with
  one dtype and no output dtype of its own: the convolutions that this
  module and onednn_conv replace (lax.conv_general_dilated's arguments)."""
  return (lhs.ndim == 4 and _is_nhwc(dimension_numbers) and _all_ones(lhs_dilation)
          and _all_ones(rhs_dilation) and feature_group_count == 1
          and batch_group_count == 1 and preferred_element_type is None
          and lhs.dtype == rhs.dtype)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array,
                         window_strides: Sequence[int],
                         padding: Any,
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None,
                         feature_group_count: int = 1,
                         batch_group_count: int = 1,
                         precision: Any = None,
                         preferred_element_type: Any = None,
                         *, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                         wgrad: str = 'auto', xla_wgrad_below: int = 0) -> jax.Array:
  """Same signature as lax.conv_general_dilated. 2-D NHWC/HWIO convolutions
  without dilation/groups get the custom VJP; anything else goes to lax
  unchanged.

  wgrad: 'fast' (conv_weight_grad), 'xla' (XLA's own weight gradient) or
  'auto': 'xla' for a kernel larger than 1x1 on an input map under
  `xla_wgrad_below` px on both sides, else 'fast'. With the default 0 that is
  'fast' everywhere: inside the ResNet-18 step ours is at least as fast as
  XLA's on its 8x8 and 4x4 maps too. On a net whose maps are all small
  (configs/fashion_mnist.py: 10, 5, 3 px) XLA's wgrad makes the step faster,
  but only as Eigen's convolution, i.e. with the binaries' XLA:CPU setting
  (kernels/xla_cpu.py); with stock XLA:CPU (YNNPACK convolutions) it is
  slower than ours.
  """
  if wgrad not in ('auto', 'fast', 'xla'):
    raise ValueError(f"wgrad must be 'auto', 'fast' or 'xla', got {wgrad!r}")
  if xla_wgrad_below < 0:
    raise ValueError(f'xla_wgrad_below must be >= 0 (px; 0 = never), got {xla_wgrad_below}')
  if not is_plain_nhwc_conv(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                            feature_group_count, batch_group_count,
                            preferred_element_type):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
  strides = tuple(int(s) for s in window_strides)
  pads = _explicit_pads(padding, lhs.shape[1:3], rhs.shape[:2], strides)
  if isinstance(precision, list):
    precision = tuple(precision)  # nondiff args must be hashable
  if (lhs.shape[1] * lhs.shape[2] < rhs.shape[0] * rhs.shape[1]
      and min(_conv_out_hw(lhs.shape[1:3], rhs.shape[:2], strides, pads)) > 0):
    return small_map_conv(lhs, rhs, strides, pads, precision)
  if wgrad == 'auto':
    small = max(lhs.shape[1:3]) < xla_wgrad_below and rhs.shape[0] * rhs.shape[1] > 1
    wgrad = 'xla' if small else 'fast'
  return _conv(lhs, rhs, strides, pads, precision, int(chunk_bytes), wgrad)


class Conv(nn.Conv):
  """flax.linen.Conv with the fast-CPU-wgrad convolution (see module doc).

  Only the default of nn.Conv's `conv_general_dilated` hook changes; every
  other field and the whole __call__ are nn.Conv's. Deliberately named `Conv`:
  flax auto-names submodules after the class name, so a model built with this
  class has the same 'Conv_0', 'Conv_1', ... param paths as one built with
  nn.Conv. To choose the wgrad or its chunk size, pass
  conv_general_dilated=functools.partial(cpu_conv.conv_general_dilated,
  wgrad='fast'|'xla'|'auto', chunk_bytes=...).
  """
  conv_general_dilated: Callable[..., jax.Array] | None = conv_general_dilated


CpuConv = Conv  # alias; its __name__ is still 'Conv' (see class docstring)

