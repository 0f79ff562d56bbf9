"""Tests for contrastive_jax.augment: small images (16-32 px), few compiles."""

import functools

import dm_pix as pix
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from contrastive_jax import augment, config_defaults, modalities

OUT = 16


def _cfg(**overrides):
  cfg = config_defaults.augment_defaults()
  cfg.update(overrides)
  return cfg


def _images(n, size=20, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def _keys(n, seed=0):
  return jax.random.split(jax.random.PRNGKey(seed), n)


# Every pipeline path on: blur and solarize are off in the defaults.
FULL = dict(blur_prob=0.5, solarize_prob=0.3)


# ----------------------------------------------------------------------------
# Crop box sampler and crop.

def test_crop_box_areas_aspects_and_bounds():
  side, n = 256, 2000
  sample = jax.jit(jax.vmap(lambda k: augment.sample_crop_box(
      k, side, side, (0.08, 1.0), (3 / 4, 4 / 3), 100)))
  y, x, h, w = (np.asarray(a) for a in sample(_keys(n)))
  area = h * w / side**2
  # Rounding h and w to pixels moves the area by at most ~(h + w) / 2 pixels.
  tol = (side + 0.25) / side**2
  assert area.min() >= 0.08 - tol and area.max() <= 1.0 + tol
  assert area.min() < 0.1 and area.max() > 0.9  # the whole range is used
  aspect = w / h
  assert aspect.min() >= 0.75 * 0.97 and aspect.max() <= 4 / 3 * 1.03
  assert (y >= 0).all() and (x >= 0).all()
  assert (y + h <= side).all() and (x + w <= side).all()
  # Each image gets its own draw.
  assert len(set(zip(y, x, h, w))) > 0.9 * n


def test_crop_box_falls_back_to_whole_image():
  # Area >= 0.9 with aspect >= 2 cannot fit a square image: whole image.
  sample = jax.vmap(lambda k: augment.sample_crop_box(k, 12, 12, (0.9, 1.0), (2.0, 3.0), 10))
  y, x, h, w = (np.asarray(a) for a in sample(_keys(32)))
  assert (y == 0).all() and (x == 0).all() and (h == 12).all() and (w == 12).all()


def test_random_resized_crop_resamples_the_sampled_box():
  images = augment.to_float(_images(8, size=32))
  keys = _keys(8)
  # A fixed 16 x 16 box resized to 16: bicubic at scale 1 is exactly the slice.
  ranges = dict(area_range=(0.25, 0.25), aspect_range=(1.0, 1.0), max_attempts=5)

  @jax.jit
  def run(keys, images):
    fixed = jax.vmap(lambda k, x: augment.random_resized_crop(
        k, x, out_size=OUT, **ranges))(keys, images)
    boxes = jax.vmap(lambda k: augment.sample_crop_box(k, 32, 32, **ranges))(keys)
    same = jnp.broadcast_to(images[0], images.shape)
    default = jax.vmap(lambda k, x: augment.random_resized_crop(k, x, out_size=OUT))(
        keys, same)  # the spec's default ranges
    return fixed, boxes, default

  fixed, boxes, views = jax.tree.map(np.asarray, run(keys, images))
  for i, (y, x, h, w) in enumerate(zip(*boxes)):
    assert (h, w) == (16, 16)
    np.testing.assert_allclose(fixed[i], images[i, y:y + 16, x:x + 16], atol=1e-5)
  # The same image with different keys gets different crops.
  assert views.shape == (8, OUT, OUT, 3)
  assert views.min() >= 0.0 and views.max() <= 1.0
  assert all(not np.allclose(views[0], views[i]) for i in range(1, 8))


def test_matmul_precision_default_resamples_and_blurs_the_same():
  # 'default' only changes how the resampling and blur contractions are
  # computed (TF32 / bfloat16 passes on accelerators, unchanged on CPU): same
  # box, same blur, same pixels to well under one uint8 level.
  images = augment.to_float(_images(6, size=32))
  keys = _keys(6)
  views = {p: np.asarray(jax.jit(jax.vmap(lambda k, x, p=p: augment.simclr_view(
      k, x, _cfg(matmul_precision=p, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=1.0),
      OUT)))(keys, images)) for p in ('highest', 'default')}
  assert views['default'].shape == (6, OUT, OUT, 3)
  np.testing.assert_allclose(views['default'], views['highest'], atol=2e-3)
  with pytest.raises(ValueError, match='matmul_precision'):
    config_defaults.validate(ml_collections.ConfigDict(
        {'augment': _cfg(matmul_precision='tf32')}), config_defaults.CHOICES)


# ----------------------------------------------------------------------------
# Probability gates: p = 0 is the identity, p = 1 always applies, for static
# (Python float) and traced probabilities.

GATED = {
    'flip': (lambda k, x, p: augment.random_flip(k, x, p), lambda x: x[:, ::-1]),
    'grayscale': (lambda k, x, p: augment.random_grayscale(k, x, p), augment.to_grayscale),
    'solarize': (lambda k, x, p: augment.random_solarize(k, x, prob=p, threshold=0.5),
                 lambda x: pix.solarize(x, 0.5)),
    'jitter': (lambda k, x, p: augment.color_jitter(
        k, x, strength=1.0, prob=p, brightness_mode='multiplicative'), None),
    # sigma >= 1 so that every blurred image visibly changes.
    'blur': (lambda k, x, p: augment.random_gaussian_blur(
        k, x, prob=p, sigma_range=(1.0, 2.0), kernel_size=5), None),
}


@pytest.mark.parametrize('name', sorted(GATED))
def test_probability_gates(name):
  op, expected_fn = GATED[name]
  images = augment.to_float(_images(16, size=OUT))
  keys = _keys(16)

  @jax.jit
  def run(traced_prob):
    batch = lambda p: jax.vmap(lambda k, x: op(k, x, p))(keys, images)
    return batch(0.0), batch(1.0), batch(traced_prob), batch(1.0 - traced_prob)

  static0, static1, traced0, traced1 = (np.asarray(a) for a in run(jnp.float32(0.0)))
  np.testing.assert_array_equal(static0, images)
  np.testing.assert_array_equal(traced0, images)
  np.testing.assert_allclose(traced1, static1, atol=1e-6)
  if expected_fn is not None:
    np.testing.assert_allclose(static1, jax.vmap(expected_fn)(images), atol=1e-6)
  changed = np.abs(static1 - np.asarray(images)).max(axis=(1, 2, 3)) > 1e-3
  assert changed.all(), f'{name} with p=1 left {np.sum(~changed)} images unchanged'
  assert static1.min() >= 0.0 and static1.max() <= 1.0


def test_gate_draws_per_image():
  images = augment.to_float(_images(64, size=8))
  flip = jax.jit(jax.vmap(lambda k, x: augment.random_flip(k, x, jnp.float32(0.5))))
  flipped = flip(_keys(64), images)
  was_flipped = np.asarray(jnp.all(flipped == images[:, :, ::-1], axis=(1, 2, 3)))
  assert 16 <= was_flipped.sum() <= 48


def test_grayscale_channels_equal_and_one_channel_identity():
  rgb = augment.to_float(_images(4, size=8))
  gray = np.asarray(jax.vmap(augment.to_grayscale)(rgb))
  assert gray.shape == rgb.shape
  np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
  np.testing.assert_allclose(gray[..., 0], rgb @ np.array([0.2989, 0.5870, 0.1140]),
                             atol=1e-6)
  mono = augment.to_float(_images(4, size=8, channels=1))
  np.testing.assert_array_equal(jax.vmap(augment.to_grayscale)(mono), mono)


@pytest.mark.parametrize('mode', ['multiplicative', 'additive'])
def test_brightness_modes_on_constant_images(mode):
  # Contrast, saturation and hue leave a constant gray image unchanged, so the
  # jitter of a constant image is its brightness op: with the same keys,
  # multiplicative keeps ratios, additive keeps differences.
  strength, n = 0.25, 64
  lo, hi = (jnp.full((n, 4, 4, 3), v) for v in (0.45, 0.55))
  jitter = jax.jit(jax.vmap(lambda k, x: augment.color_jitter(
      k, x, strength=strength, prob=1.0, brightness_mode=mode)))
  keys = _keys(n)
  a, b = np.asarray(jitter(keys, lo)), np.asarray(jitter(keys, hi))
  for out in (a, b):  # still constant images
    np.testing.assert_allclose(out, np.broadcast_to(out[:, :1, :1, :1], out.shape),
                               atol=1e-6)
  a, b = a[:, 0, 0, 0], b[:, 0, 0, 0]
  d = 0.8 * strength
  if mode == 'multiplicative':
    np.testing.assert_allclose(b / a, 0.55 / 0.45, rtol=1e-5)
    factor = a / 0.45
    assert factor.min() >= 1 - d - 1e-6 and factor.max() <= 1 + d + 1e-6
    assert factor.min() < 1 - 0.7 * d and factor.max() > 1 + 0.7 * d
  else:
    np.testing.assert_allclose(b - a, 0.1, atol=1e-5)
    delta = a - 0.45
    assert delta.min() >= -d - 1e-6 and delta.max() <= d + 1e-6
    assert delta.min() < -0.7 * d and delta.max() > 0.7 * d


def test_unknown_brightness_mode_names_the_key():
  with pytest.raises(ValueError, match='brightness_mode'):
    augment.color_jitter(_keys(1)[0], jnp.zeros((4, 4, 3)), strength=1.0, prob=1.0,
                         brightness_mode='gamma')


@pytest.mark.parametrize('channels', [3, 1])
def test_adjust_contrast_matches_dm_pix(channels):
  """Per-channel means from masked whole-image sums = dm-pix's (H, W) mean."""
  image = np.random.default_rng(channels).uniform(size=(12, 20, channels)).astype(np.float32)
  image[..., 0] *= 0.3  # channels with different means
  for factor in (0.0, 0.2, 1.0, 1.8):
    ours = np.asarray(jax.jit(augment.adjust_contrast)(image, factor))
    np.testing.assert_allclose(ours, np.asarray(pix.adjust_contrast(image, factor)),
                               atol=1e-6, err_msg=f'factor {factor}')
  # factor 0: every pixel is its channel's mean.
  np.testing.assert_allclose(augment.adjust_contrast(image, 0.0),
                             np.broadcast_to(image.mean((0, 1)), image.shape), atol=1e-6)


def test_adjust_saturation_matches_dm_pix():
  """The closed form equals dm-pix's HSV round trip, clipped saturation,
  gray and black pixels included."""
  rng = np.random.default_rng(7)
  image = rng.uniform(size=(16, 16, 3)).astype(np.float32)
  image[0, :4] = [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.4, 0.4, 0.4], [0.0, 0.5, 1.0]]
  image[1, :2] = [[0.9, 0.9, 0.1], [0.3, 0.0, 0.0]]
  for factor in (0.0, 0.2, 1.0, 1.8, 10.0):
    ours = np.asarray(jax.jit(augment.adjust_saturation)(image, factor))
    theirs = np.asarray(pix.adjust_saturation(image, factor))
    np.testing.assert_allclose(ours, theirs, atol=2e-6, err_msg=f'factor {factor}')
  # factor 0 is the pixel's value in every channel; a large one saturates
  # every pixel that has a colour (min channel 0; rows 2+ are random colours).
  np.testing.assert_allclose(augment.adjust_saturation(image, 0.0),
                             np.broadcast_to(image.max(-1, keepdims=True), image.shape),
                             atol=1e-7)
  saturated = np.asarray(augment.adjust_saturation(image, 1e6))[2:]
  np.testing.assert_allclose(saturated.min(-1), 0.0, atol=1e-6)
  np.testing.assert_allclose(saturated.max(-1), image[2:].max(-1), atol=1e-6)


@pytest.mark.parametrize('channels', [3, 1])
def test_jitter_applies_the_drawn_order_once_each(channels):
  """The vmapped jitter (hue once, cheap ops masked around it) equals a plain
  per-image loop over the drawn permutation with dm-pix ops, clipping after each."""
  strength, n = 1.0, 24  # 24 draws: every position of hue occurs (checked)
  images = augment.to_float(_images(n, size=12, channels=channels, seed=3))
  u = np.asarray(jax.vmap(lambda k: augment._draws(k, 8))(_keys(n, seed=5)))
  ours = np.asarray(jax.jit(jax.vmap(
      lambda uu, x: augment._jitter(uu, x, strength, 'multiplicative')))(u, images))
  d = 0.8 * strength
  lerp = lambda v, lo, hi: lo + (hi - lo) * v
  num_ops = 4 if channels == 3 else 2
  hue_positions = set()
  for i in range(n):
    b, c, s = (lerp(u[i, j], max(0.0, 1 - d), 1 + d) for j in range(3))
    h = lerp(u[i, 3], -0.2 * strength, 0.2 * strength)
    ops = [lambda x: x * b, lambda x: pix.adjust_contrast(x, c),
           lambda x: pix.adjust_saturation(x, s), lambda x: pix.adjust_hue(x, h)]
    order = np.argsort(u[i, 4:4 + num_ops])
    hue_positions.add(int(np.argmax(order == 3)))
    x = images[i]
    for op in order:
      x = jnp.clip(ops[op](x), 0.0, 1.0)
    np.testing.assert_allclose(ours[i], np.asarray(x), atol=2e-6, err_msg=f'image {i}')
  if channels == 3:
    assert hue_positions == {0, 1, 2, 3}


def test_blur_kernel_size_and_dm_pix_equivalence():
  assert augment.blur_kernel_size(224, 0.1) == 23
  assert augment.blur_kernel_size(32, 0.1) == 3
  image = augment.to_float(_images(1, size=24))[0]
  ours, theirs = jax.jit(lambda x: (
      [augment.gaussian_blur(x, s, k) for s, k in [(0.3, 3), (2.0, 23)]],
      [pix.gaussian_blur(x, s, k) for s, k in [(0.3, 3), (2.0, 23)]]))(image)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, atol=1e-6)
  # Non-square images: each axis gets its own band matrix.
  wide = augment.to_float(_images(1, size=24))[0][:15]
  np.testing.assert_allclose(augment.gaussian_blur(wide, 1.5, 9),
                             pix.gaussian_blur(wide, 1.5, 9), atol=1e-6)


# ----------------------------------------------------------------------------
# Views, keys and batches.

def test_example_keys_depend_only_on_example():
  keys = augment.example_keys(3, 7, jnp.arange(8), 1)
  some = augment.example_keys(3, 7, jnp.array([5, 2]), 1)
  np.testing.assert_array_equal(some, keys[jnp.array([5, 2])])
  expected = jax.random.fold_in(jax.random.fold_in(
      jax.random.fold_in(jax.random.PRNGKey(3), 7), 5), 1)
  np.testing.assert_array_equal(keys[5], expected)
  traced = jax.jit(lambda s, i: augment.example_keys(3, s, i, 1))(7, jnp.arange(8))
  np.testing.assert_array_equal(traced, keys)
  from_key = augment.example_keys(jax.random.PRNGKey(3), 7, jnp.arange(8), 1)
  np.testing.assert_array_equal(from_key, keys)


def _views_on_mesh(views_fn, num_devices, axis_type, step, indices, images):
  mesh = jax.make_mesh((num_devices,), ('data',), axis_types=(axis_type,),
                       devices=jax.devices()[:num_devices])
  sharding = NamedSharding(mesh, P('data'))
  return np.asarray(views_fn(jnp.int32(step), jax.device_put(indices, sharding),
                             jax.device_put(images, sharding)))


@pytest.fixture(scope='module')
def mesh_views():
  """Views of one batch on 1 and 8 devices; module-scoped to compile once each."""
  cfg = _cfg(**FULL)
  views_fn = jax.jit(lambda s, i, x: augment.pretrain_views(11, s, i, x, cfg, OUT))
  images = _images(16)
  images[8:] = images[0]  # one image at 8 indices: views must still differ
  run = functools.partial(_views_on_mesh, views_fn, indices=np.arange(100, 116),
                          images=images)
  return dict(
      one=run(1, AxisType.Auto, 5), eight=run(8, AxisType.Auto, 5),
      eight_explicit=run(8, AxisType.Explicit, 5),
      again=run(1, AxisType.Auto, 5), next_step=run(1, AxisType.Auto, 6))


def test_pretrain_views_shape_dtype_range(mesh_views):
  views = mesh_views['one']
  assert views.shape == (2, 16, OUT, OUT, 3) and views.dtype == np.float32
  assert views.min() >= 0.0 and views.max() <= 1.0


def test_pretrain_views_same_on_1_and_8_devices(mesh_views):
  np.testing.assert_allclose(mesh_views['eight'], mesh_views['one'], atol=1e-6)
  np.testing.assert_allclose(mesh_views['eight_explicit'], mesh_views['one'], atol=1e-6)


def test_pretrain_views_reproducible_and_distinct(mesh_views):
  views = mesh_views['one']
  np.testing.assert_array_equal(mesh_views['again'], views)
  assert not np.allclose(mesh_views['next_step'], views)
  assert not np.allclose(views[0], views[1])  # two views differ
  same_image = views[:, [0] + list(range(8, 16))]  # one image, 9 indices
  for v in range(2):
    for i in range(1, 9):
      assert not np.allclose(same_image[v, 0], same_image[v, i])


def test_one_channel_images_through_the_pipeline():
  images = _images(8, size=28, channels=1)
  cfg = _cfg(**FULL, jitter_prob=1.0, grayscale_prob=1.0)
  views = np.asarray(jax.jit(lambda i, x: augment.pretrain_views(0, 0, i, x, cfg, OUT))(
      jnp.arange(8), images))
  assert views.shape == (2, 8, OUT, OUT, 1) and views.dtype == np.float32
  assert np.isfinite(views).all() and views.min() >= 0.0 and views.max() <= 1.0
  assert not np.allclose(views[0], views[1])


def test_finetune_view_is_simclr_crop_and_flip():
  images = _images(8)
  cfg = _cfg(**FULL)
  no_colour = _cfg(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)

  @jax.jit
  def run(indices, images):
    finetune = augment.finetune_batch(4, 2, indices, images, cfg, OUT)
    keys = augment.example_keys(4, 2, indices, 0)
    plain = jax.vmap(lambda k, x: augment.simclr_view(k, x, no_colour, OUT))(
        keys, augment.to_float(images))
    return finetune, plain

  finetune, plain = run(jnp.arange(8), images)
  assert finetune.shape == (8, OUT, OUT, 3) and finetune.dtype == jnp.float32
  np.testing.assert_array_equal(finetune, plain)


def test_letterboxed_crops_stay_inside_the_extent():
  """A 12 x 24 picture letterboxed into 24 x 24 (last row repeated, as
  tfds_source does) with extent (12, 24) gives the views of the picture alone:
  the same boxes, with differences only where bicubic taps pass the border."""
  n = 32
  pictures = _images(n, size=24)[:, :12]
  padded = np.concatenate([pictures, np.repeat(pictures[:, -1:], 12, axis=1)], axis=1)
  extents = np.tile(np.int32([12, 24]), (n, 1))
  cfg = _cfg(**FULL)
  config = ml_collections.ConfigDict(dict(seed=3, augment=cfg,
                                          data=dict(source='embedded', image_size=OUT)))

  @jax.jit
  def run(padded, extents, pictures):
    idx = jnp.arange(n)
    batch = dict(index=idx, image=padded, extent=extents)
    # What the pretrain and fine-tune steps feed their networks.
    modality = modalities.build(config, (24, 24, 3))
    return (modality.train_views(1, batch, 2),
            augment.pretrain_views(3, 1, idx, pictures, cfg, OUT),
            augment.pretrain_views(3, 1, idx, padded, cfg, OUT),
            modality.train_inputs(1, batch),
            augment.finetune_batch(3, 1, idx, pictures, cfg, OUT))

  inside, alone, whole_array, ft_inside, ft_alone = (
      np.asarray(a) for a in run(padded, extents, pictures))
  assert inside.shape == (2, n, OUT, OUT, 3)
  assert np.abs(inside - alone).mean() < 2e-3
  assert np.abs(ft_inside - ft_alone).mean() < 2e-3
  assert np.abs(ft_inside - ft_alone).max() < 0.1
  # Without the extent the boxes cover the padding: other crops altogether.
  assert np.abs(whole_array - alone).mean() > 0.05


def test_eval_preprocess():
  small = _images(4, size=OUT)
  np.testing.assert_array_equal(augment.eval_preprocess(small, OUT), augment.to_float(small))
  # 0.875 x 40 = 35: the centre crop alone, no resampling; TF's offset rounding.
  big = _images(2, size=40)
  np.testing.assert_array_equal(augment.eval_preprocess(big, 35),
                                augment.to_float(big)[:, 3:38, 3:38])
  wide = np.random.default_rng(1).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
  out = augment.eval_preprocess(wide, 40)
  assert out.shape == (2, 40, 40, 3) and out.dtype == jnp.float32
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  # At <= 32 px there is no centre crop: a 20 px image is only resized.
  out = augment.eval_preprocess(_images(2, size=20), OUT)
  assert out.shape == (2, OUT, OUT, 3)
