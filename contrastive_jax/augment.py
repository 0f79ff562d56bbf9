"""SimCLR augmentations as pure JAX functions of (key, image).

Every per-image op takes a PRNG key and one float32 image [H, W, C] in [0, 1]
and returns an image; batches use `jax.vmap`, so every image gets its own draw.
All ops are jittable: shapes and config values are static, random draws are
traced. dm-pix provides hue, grayscale and solarize; contrast, saturation and
the blur reproduce dm-pix's (see adjust_contrast, adjust_saturation,
gaussian_blur), written for speed on a GPU.

Keys come from the example, not the device: the key of (step, example index,
view) is fold_in(fold_in(fold_in(PRNGKey(seed), step), index), view), so the
same seed gives the same views on 1 device, 8 devices or 2 hosts.

One-channel images (Fashion-MNIST) go through the same recipe: saturation and
hue are skipped (a grayscale image has neither; dm-pix's ops need RGB) and
grayscale is the identity, so C = 1 stays C = 1. Other channel counts raise.

Recipe: SimCLR (Chen et al. 2020), appendix A, "Data augmentation details";
config keys: config_defaults.augment_defaults().
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import dm_pix as pix
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

Array = jax.Array
Op = Callable[[Array], Array]


def to_float(images_uint8: Array) -> Array:
  """uint8 pixels -> float32 in [0, 1] (no mean/std normalisation, as SimCLR)."""
  return jnp.asarray(images_uint8, jnp.float32) / 255.0


def _channels(image: Array) -> int:
  c = image.shape[-1]
  if c not in (1, 3):
    raise ValueError(f'augment expects images [H, W, C] with C = 1 or 3; got '
                     f'shape {image.shape}.')
  return c


def _apply_with_prob(u: Array, prob: float | Array, fn: Op, image: Array) -> Array:
  """fn(image) if the uniform draw u < prob, else image.

  A Python prob of 0 or 1 is decided at trace time, so e.g. blur_prob=0 compiles
  no blur; u < 0 and u < 1 decide the same, so results do not change.
  jnp.where, not lax.cond: these ops always run under vmap, where a batched
  lax.cond becomes a select that runs both branches anyway, and cond's batching
  rule fails on meshes with Explicit axes (jax.make_mesh's default).
  """
  if isinstance(prob, (int, float)):
    if prob <= 0:
      return image
    if prob >= 1:
      return fn(image)
  return jnp.where(u < prob, fn(image), image)


def _draws(key: Array, n: int) -> Array:
  """n uniforms in [0, 1): every random parameter of an op comes from these.

  Each op(key, ...) below is _op(_draws(key, n), ...), and simclr_view draws
  all its ops' uniforms at once: every separate random call is a threefry
  kernel with its own XLA compile time on CPU, for a handful of scalars.
  """
  return jax.random.uniform(key, (n,))


def _lerp(u: Array, lo: float, hi: float) -> Array:
  return lo + (hi - lo) * u


# ----------------------------------------------------------------------------
# Random resized crop.

def _crop_box(u: Array, height: int, width: int, area_range: Sequence[float],
              aspect_range: Sequence[float]) -> tuple[Array, Array, Array, Array]:
  """sample_crop_box from 2 x max_attempts + 2 uniforms."""
  n = (u.shape[0] - 2) // 2
  area = height * width * _lerp(u[:n], area_range[0], area_range[1])
  ratio = jnp.exp(_lerp(u[n:2 * n], math.log(aspect_range[0]),
                        math.log(aspect_range[1])))
  ws = jnp.round(jnp.sqrt(area * ratio)).astype(jnp.int32)
  hs = jnp.round(jnp.sqrt(area / ratio)).astype(jnp.int32)
  fits = (ws >= 1) & (ws <= width) & (hs >= 1) & (hs <= height)
  first = jnp.argmax(fits)  # index of the first True (0 if none)
  found = fits[first]
  h = jnp.where(found, hs[first], height)
  w = jnp.where(found, ws[first], width)
  # floor(u * positions), clamped since u * k may round up to k in float32.
  y = jnp.minimum((u[2 * n] * (height - h + 1)).astype(jnp.int32), height - h)
  x = jnp.minimum((u[2 * n + 1] * (width - w + 1)).astype(jnp.int32), width - w)
  return y, x, h, w


def sample_crop_box(key: Array, height: int, width: int,
                    area_range: Sequence[float], aspect_range: Sequence[float],
                    max_attempts: int) -> tuple[Array, Array, Array, Array]:
  """Samples an integer crop box (y, x, h, w) inside a height x width image.

  Area fraction ~ U(area_range), aspect w/h ~ log-U(aspect_range). All attempts
  are drawn at once (no data-dependent loop) and the first whose rounded box
  fits is taken; when none fits, the whole image. The offset is uniform over
  the positions where the box fits.
  """
  u = _draws(key, 2 * max_attempts + 2)
  return _crop_box(u, height, width, area_range, aspect_range)


_PRECISIONS = {'highest': jax.lax.Precision.HIGHEST, 'default': jax.lax.Precision.DEFAULT}


def _resize_box(image: Array, box: tuple[Array, Array, Array, Array],
                out_size: int, precision: str = 'highest') -> Array:
  """Resamples the box (y, x, h, w) to out_size x out_size, bicubic, in [0, 1].

  scale_and_translate maps the box onto the output directly, so traced box
  sizes need no dynamic slicing; the cubic kernel may read a pixel or two just
  outside the box (real image content) where a crop-then-resize would clamp.
  Antialiasing (the default) filters when the box is larger than the output.
  Bicubic overshoots, hence the clip. precision: see config.augment.matmul_precision.
  """
  y, x, h, w = box
  scale = jnp.stack([out_size / h, out_size / w]).astype(jnp.float32)
  translation = -jnp.stack([y, x]).astype(jnp.float32) * scale
  out = jax.image.scale_and_translate(
      image, (out_size, out_size, image.shape[-1]), (0, 1), scale, translation,
      method='bicubic', precision=_PRECISIONS[precision])
  return jnp.clip(out, 0.0, 1.0)


def random_resized_crop(key: Array, image: Array, *, out_size: int,
                        area_range: Sequence[float] = (0.08, 1.0),
                        aspect_range: Sequence[float] = (3 / 4, 4 / 3),
                        max_attempts: int = 100) -> Array:
  """Inception-style crop -> [out_size, out_size, C]; box from sample_crop_box(key)."""
  height, width = image.shape[0], image.shape[1]
  box = sample_crop_box(key, height, width, area_range, aspect_range, max_attempts)
  return _resize_box(image, box, out_size)


# ----------------------------------------------------------------------------
# Flip, colour, blur, solarize.

def _hflip(image: Array) -> Array:
  return image[:, ::-1]


def random_flip(key: Array, image: Array, prob: float | Array) -> Array:
  """Horizontal flip with probability prob."""
  return _apply_with_prob(_draws(key, 1)[0], prob, _hflip, image)


def _jitter(u: Array, image: Array, strength: float, brightness_mode: str) -> Array:
  """Brightness, contrast (, saturation, hue) in a random order, clip after each.

  u: 8 uniforms (4 op parameters, 4 sort keys for the order).
  """
  d = 0.8 * strength
  lo = max(0.0, 1 - d)  # factors floored at 0 as SimCLR v2 (negative inverts)
  if brightness_mode == 'multiplicative':  # v2: x * U[max(0, 1-d), 1+d]
    b = _lerp(u[0], lo, 1 + d)
    brightness: Op = lambda x: x * b
  elif brightness_mode == 'additive':  # v1: x + U[-d, d]
    delta = _lerp(u[0], -d, d)
    brightness = lambda x: pix.adjust_brightness(x, delta)
  else:
    raise ValueError(f"config.augment.brightness_mode={brightness_mode!r}; choose "
                     "'multiplicative' (v2) or 'additive' (v1).")
  c = _lerp(u[1], lo, 1 + d)
  ops: list[Op] = [brightness, lambda x: adjust_contrast(x, c)]
  clip = lambda x: jnp.clip(x, 0.0, 1.0)
  if _channels(image) == 1:  # a 1-channel image has no saturation or hue
    order = jnp.argsort(u[4:6])  # uniform random permutation
    for i in range(2):  # switch on a traced index: under vmap both ops run
      image = clip(jax.lax.switch(order[i], ops, image))
    return image
  s = _lerp(u[2], lo, 1 + d)
  h = _lerp(u[3], -0.2 * strength, 0.2 * strength)
  ops.append(lambda x: adjust_saturation(x, s))
  hue = 3
  order = jnp.argsort(u[4:8])  # uniform random permutation of the 4 ops
  # Under vmap a switch on a traced index runs every branch, so a loop over 4
  # positions would convert RGB <-> HSV 4 times per image. Hue runs once
  # instead, at its position; the cheap ops before and after it are masked.
  # Same ops, same order, same clipping as the plain loop; about half the work.
  at = jnp.argmax(order == hue)
  cheap = [jnp.where(k >= at, order[k + 1], order[k]) for k in range(3)]
  for k in range(3):
    image = jnp.where(k < at, clip(jax.lax.switch(cheap[k], ops, image)), image)
  image = clip(pix.adjust_hue(image, h))
  for k in range(3):
    image = jnp.where(k >= at, clip(jax.lax.switch(cheap[k], ops, image)), image)
  return image


def adjust_contrast(image: Array, factor: float | Array) -> Array:
  """pix.adjust_contrast's result: factor * (x - mean) + mean, mean per channel
  over the pixels (as tf.image.adjust_contrast).

  Each channel's mean is a sum over the whole image of a masked copy, not a
  reduce over (H, W) that keeps the channel axis: on a GPU, XLA emits the
  latter as a reduction over strided columns of 3, far below memory speed,
  while whole-image sums are XLA's fast row reductions (benchmarks/NOTES.md,
  the GPU augmentation profile).
  """
  channel = jax.lax.broadcasted_iota(jnp.int32, image.shape, image.ndim - 1)
  mean = jnp.stack([jnp.sum(jnp.where(channel == i, image, 0.0))
                    for i in range(_channels(image))]) / (image.shape[0] * image.shape[1])
  return jnp.asarray(factor, image.dtype) * (image - mean) + mean


def adjust_saturation(image: Array, factor: float | Array) -> Array:
  """pix.adjust_saturation's result (HSV saturation x factor, clipped to 1)
  without the HSV round trip.

  With hue and value fixed, HSV -> RGB is linear in saturation: each channel
  is v - v * s * g(hue), so scaling s to s' = min(s * factor, 1) moves every
  channel towards the pixel's max v by k = s' / s = min(factor, v / (v - min)).
  A few multiply-adds per pixel instead of two HSV conversions; the jitter
  evaluates this op at six positions per image (see _jitter), which made the
  conversions most of its work. Inputs in [0, 1], factor >= 0. The channel
  max and min are elementwise over the 3 channel slices, not reductions: on a
  GPU a reduce over the size-3 axis breaks the jitter's fusions and slows the
  whole augmentation down (benchmarks/NOTES.md, the GPU augmentation profile).
  """
  r, g, b = image[..., 0:1], image[..., 1:2], image[..., 2:3]
  value = jnp.maximum(jnp.maximum(r, g), b)
  spread = value - jnp.minimum(jnp.minimum(r, g), b)
  # spread = 0 (a gray pixel): value - image is 0 whatever k is.
  k = jnp.minimum(factor, value / jnp.where(spread > 0, spread, 1.0))
  return value - (value - image) * k


def color_jitter(key: Array, image: Array, *, strength: float,
                 prob: float | Array, brightness_mode: str) -> Array:
  """SimCLR colour jitter of strength s, applied with probability prob.

  Brightness, contrast and saturation factors ~ U[max(0, 1-0.8s), 1+0.8s]
  (brightness_mode='additive': delta ~ U[-0.8s, 0.8s], v1), hue delta ~
  U[-0.2s, 0.2s]; the ops run in a per-image random order, clipping to [0, 1]
  after each. For C = 1 only brightness and contrast run.
  """
  return _color_jitter(_draws(key, 9), image, strength, prob, brightness_mode)


def _color_jitter(u: Array, image: Array, strength: float, prob: float | Array,
                  brightness_mode: str) -> Array:
  jitter = lambda x: _jitter(u[1:], x, strength, brightness_mode)
  return _apply_with_prob(u[0], prob, jitter, image)


def to_grayscale(image: Array) -> Array:
  """Rec.601 luma, channels kept (C = 3 -> 3 equal channels; C = 1 unchanged)."""
  if _channels(image) == 1:
    return image
  return pix.rgb_to_grayscale(image, keep_dims=True)


def random_grayscale(key: Array, image: Array, prob: float | Array) -> Array:
  """to_grayscale with probability prob (identity for 1-channel images)."""
  return _apply_with_prob(_draws(key, 1)[0], prob, to_grayscale, image)


def blur_kernel_size(side: int, fraction: float) -> int:
  """Odd kernel side: odd(round(fraction x side)) as SimCLR (224 px -> 23)."""
  k = int(math.floor(fraction * side + 0.5))
  return 2 * (k // 2) + 1


def gaussian_blur(image: Array, sigma: float | Array, kernel_size: int,
                  precision: str = 'highest') -> Array:
  """pix.gaussian_blur's result (same taps, zero 'SAME' padding, as SimCLR's TF
  blur) as two matmuls with [side, side] band matrices of the taps.

  Why not call dm-pix: vmapped over a per-image sigma its depthwise conv gets a
  batched kernel, and that batching rule fails on meshes with Explicit axes
  (jax.make_mesh's default). A band matrix built from per-image taps batches
  as a plain batched matmul. It does 2 x side multiply-adds per pixel, not
  2 x kernel_size, but on tensor cores: on a GPU, at precision 'default'
  (TF32) it is faster than shifted sums, which are bound by index arithmetic;
  at 'highest' (float32 on CUDA cores) it is slower than them. The bfloat16
  configs use 'default', which loses nothing their model sees
  (benchmarks/NOTES.md, the GPU augmentation profile).
  precision: 'highest' (full float32) or 'default' (the backend's fast matmul);
  see config.augment.matmul_precision.
  """
  radius = int(kernel_size / 2)  # as dm-pix: 2 * radius + 1 taps, always odd
  gauss = lambda d: jnp.exp(-d ** 2 / (2.0 * sigma ** 2))
  norm = jnp.sum(gauss(jnp.arange(-radius, radius + 1)))

  def band(n: int) -> Array:
    # Entry (i, j) is tap j - i, zero off the band (the zero padding). Built
    # from the offsets, not by indexing a taps vector: a gather batched over
    # a mesh's Explicit axis fails, as the depthwise conv does.
    offset = np.arange(n)[None, :] - np.arange(n)[:, None]
    taps = jnp.where(np.abs(offset) <= radius, gauss(offset), 0.0) / norm
    return taps.astype(image.dtype)

  p = _PRECISIONS[precision]
  x = jnp.einsum('ij,jwc->iwc', band(image.shape[0]), image, precision=p)
  return jnp.einsum('ij,hjc->hic', band(image.shape[1]), x, precision=p)


def random_gaussian_blur(key: Array, image: Array, *, prob: float | Array,
                         sigma_range: Sequence[float], kernel_size: int) -> Array:
  """Separable Gaussian blur, sigma ~ U(sigma_range) per image, applied with
  probability prob. kernel_size: see blur_kernel_size."""
  return _random_blur(_draws(key, 2), image, prob, sigma_range, kernel_size)


def _random_blur(u: Array, image: Array, prob: float | Array,
                 sigma_range: Sequence[float], kernel_size: int,
                 precision: str = 'highest') -> Array:
  sigma = _lerp(u[1], sigma_range[0], sigma_range[1])
  return _apply_with_prob(
      u[0], prob, lambda x: gaussian_blur(x, sigma, kernel_size, precision), image)


def random_solarize(key: Array, image: Array, *, prob: float | Array,
                    threshold: float) -> Array:
  """Invert pixels >= threshold with probability prob (BYOL-style; off in SimCLR)."""
  return _apply_with_prob(_draws(key, 1)[0], prob,
                          functools.partial(pix.solarize, threshold=threshold), image)


# ----------------------------------------------------------------------------
# Views from config.augment.

def _view_uniforms(key: Array, cfg: ml_collections.ConfigDict) -> list[Array]:
  """One draw for a whole view, cut into the uniforms of each op (see _draws)."""
  # crop, flip, jitter, grayscale, blur, solarize
  sizes = (2 * cfg.crop_max_attempts + 2, 1, 9, 1, 2, 1)
  return jnp.split(_draws(key, sum(sizes)), np.cumsum(sizes)[:-1])


def _crop_and_flip(u_crop: Array, u_flip: Array, image: Array,
                   cfg: ml_collections.ConfigDict, out_size: int,
                   extent: Array | None = None) -> Array:
  height, width = (image.shape[0], image.shape[1]) if extent is None else (extent[0], extent[1])
  box = _crop_box(u_crop, height, width,
                  (cfg.crop_area_min, cfg.crop_area_max),
                  (cfg.crop_aspect_min, cfg.crop_aspect_max))
  resized = _resize_box(image, box, out_size, cfg.get('matmul_precision', 'highest'))
  return _apply_with_prob(u_flip[0], cfg.flip_prob, _hflip, resized)


def simclr_view(key: Array, image: Array, cfg: ml_collections.ConfigDict,
                out_size: int, extent: Array | None = None) -> Array:
  """One SimCLR view (cfg = config.augment): random resized crop, flip, colour
  jitter, grayscale, blur, solarize; the same ops as the public functions.

  extent: int [2], the (height, width) of the real picture in the top-left
  corner of a letterboxed `image` (see tfds_source, random_crop_from='image');
  the crop box is drawn inside it. None: the whole array is the picture.
  """
  u_crop, u_flip, u_jit, u_gray, u_blur, u_sol = _view_uniforms(key, cfg)
  x = _crop_and_flip(u_crop, u_flip, image, cfg, out_size, extent)
  x = _color_jitter(u_jit, x, cfg.jitter_strength, cfg.jitter_prob,
                    cfg.brightness_mode)
  x = _apply_with_prob(u_gray[0], cfg.grayscale_prob, to_grayscale, x)
  x = _random_blur(u_blur, x, cfg.blur_prob,
                   (cfg.blur_sigma_min, cfg.blur_sigma_max),
                   blur_kernel_size(out_size, cfg.blur_kernel_fraction),
                   cfg.get('matmul_precision', 'highest'))
  solarize = functools.partial(pix.solarize, threshold=cfg.solarize_threshold)
  return _apply_with_prob(u_sol[0], cfg.solarize_prob, solarize, x)


def finetune_view(key: Array, image: Array, cfg: ml_collections.ConfigDict,
                  out_size: int, extent: Array | None = None) -> Array:
  """Fine-tune / linear-eval training view: crop and flip only, the same ones
  simclr_view makes from this key (extent: as there)."""
  u_crop, u_flip, *_ = _view_uniforms(key, cfg)
  return _crop_and_flip(u_crop, u_flip, image, cfg, out_size, extent)


# ----------------------------------------------------------------------------
# Batches.

def _base_key(seed: int | Array) -> Array:
  if hasattr(seed, 'dtype') and jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
    return seed  # typed key
  if jnp.ndim(seed) == 0:
    return jax.random.PRNGKey(seed)
  return seed  # raw uint32[2] key


def example_keys(seed: int | Array, step: int | Array, indices: Array,
                 view: int | Array) -> Array:
  """Keys [N] = fold_in(fold_in(fold_in(PRNGKey(seed), step), index), view).

  Depends only on the global example index, never on the device or process
  that holds it. seed may be an int or a key; step/indices may be traced.
  """
  base = jax.random.fold_in(_base_key(seed), step)
  per_example = lambda i: jax.random.fold_in(jax.random.fold_in(base, i), view)
  return jax.vmap(per_example)(jnp.asarray(indices))


def pretrain_views(seed: int | Array, step: int | Array, indices: Array,
                   images_uint8: Array, cfg: ml_collections.ConfigDict,
                   out_size: int, num_views: int = 2,
                   extents: Array | None = None) -> Array:
  """uint8 [N, H, W, C] -> float32 [num_views, N, out_size, out_size, C].

  extents: int [N, 2] for letterboxed images (see simclr_view); None = whole images.
  """
  keys = jax.vmap(lambda v: example_keys(seed, step, indices, v))(
      jnp.arange(num_views))  # [V, N]
  images = to_float(images_uint8)
  if extents is None:
    per_image = lambda k, x: simclr_view(k, x, cfg, out_size)
    # One vmap over views (not a Python loop) so the pipeline compiles once.
    return jax.vmap(jax.vmap(per_image), in_axes=(0, None))(keys, images)
  per_image = lambda k, x, e: simclr_view(k, x, cfg, out_size, e)
  return jax.vmap(jax.vmap(per_image), in_axes=(0, None, None))(keys, images, extents)


def finetune_batch(seed: int | Array, step: int | Array, indices: Array,
                   images_uint8: Array, cfg: ml_collections.ConfigDict,
                   out_size: int, extents: Array | None = None) -> Array:
  """uint8 [N, H, W, C] -> crop + flip float32 [N, out_size, out_size, C] (view 0 keys).

  extents: as in pretrain_views."""
  keys = example_keys(seed, step, indices, 0)
  images = to_float(images_uint8)
  if extents is None:
    return jax.vmap(lambda k, x: finetune_view(k, x, cfg, out_size))(keys, images)
  return jax.vmap(lambda k, x, e: finetune_view(k, x, cfg, out_size, e))(keys, images, extents)


def eval_preprocess(images_uint8: Array, out_size: int,
                    crop_fraction: float = 0.875) -> Array:
  """Deterministic eval input: centre square crop of crop_fraction x the shorter
  side (off when out_size <= 32, as SimCLR's CIFAR eval), then bicubic resize
  to out_size. uint8 [N, H, W, C] -> float32 [N, out_size, out_size, C]."""
  x = to_float(images_uint8)
  n, h, w, c = x.shape
  if out_size > 32 and crop_fraction < 1.0:
    side = int(math.floor(crop_fraction * min(h, w) + 0.5))
    top, left = (h - side + 1) // 2, (w - side + 1) // 2  # TF's rounding
    x = x[:, top:top + side, left:left + side]
    h = w = side
  if (h, w) != (out_size, out_size):
    x = jnp.clip(jax.image.resize(x, (n, out_size, out_size, c), 'bicubic'), 0.0, 1.0)
  return x
