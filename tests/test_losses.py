"""Losses against independent float64 NumPy formulas, and 1 vs 8 devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from contrastive_jax import losses, parallel


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def nt_xent_reference(z1, z2, t):
  """Paper's NT-Xent: 2N anchors, each vs the 2N-1 other views, float64."""
  z = _normalize(np.concatenate([z1, z2]).astype(np.float64))
  n = z1.shape[0]
  sim = z @ z.T / t
  total = 0.0
  for i in range(2 * n):
    j = (i + n) % (2 * n)
    others = [sim[i, k] for k in range(2 * n) if k != i]
    m = max(others)
    total += -(sim[i, j] - (m + np.log(np.sum(np.exp(np.array(others) - m)))))
  return total / (2 * n)


def supcon_reference(z, labels, t, base_t):
  """Khosla et al. L_out over n*V anchors, float64, anchors without positives skipped."""
  n, v, _ = z.shape
  feats = _normalize(z.reshape(n * v, -1).astype(np.float64))
  lab, img = np.repeat(labels, v), np.repeat(np.arange(n), v)
  sim = feats @ feats.T / t
  losses_, count = 0.0, 0
  for i in range(n * v):
    others = [k for k in range(n * v) if k != i]
    pos = [k for k in others if (lab[k] == lab[i] and lab[i] >= 0) or img[k] == img[i]]
    if not pos:
      continue
    lse = np.log(np.sum(np.exp(sim[i, others])))
    losses_ += -(t / base_t) * np.mean([sim[i, k] - lse for k in pos])
    count += 1
  return losses_ / count


@pytest.mark.parametrize('n,d,t', [(4, 3, 0.1), (16, 8, 0.5), (33, 16, 1.0), (8, 128, 0.07)])
def test_nt_xent_matches_float64_reference(n, d, t):
  rng = np.random.default_rng(n * d)
  z1, z2 = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  loss, metrics = losses.nt_xent(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32),
                                 temperature=t)
  np.testing.assert_allclose(float(loss), nt_xent_reference(z1, z2, t), rtol=1e-5)
  assert 0.0 <= float(metrics['contrast_acc']) <= 1.0
  assert 0.0 <= float(metrics['contrast_entropy']) <= np.log(n) + 1e-5


def test_nt_xent_perfect_views_rank_first():
  z = np.eye(8, dtype=np.float32)
  loss, metrics = losses.nt_xent(jnp.asarray(z), jnp.asarray(z), temperature=0.1)
  assert float(metrics['contrast_acc']) == 1.0
  # lse - positive cancels at ~10 -> 6e-4: float32 leaves ~1e-8 absolute error.
  np.testing.assert_allclose(float(loss), nt_xent_reference(z, z, 0.1), rtol=1e-5, atol=5e-8)


@pytest.mark.parametrize('block', [3, 8, 16, 100])
def test_nt_xent_blockwise_equals_dense(block):
  rng = np.random.default_rng(block)
  z1 = jnp.asarray(rng.normal(size=(12, 8)), jnp.float32)
  z2 = jnp.asarray(rng.normal(size=(12, 8)), jnp.float32)
  fn = lambda b: jax.value_and_grad(
      lambda a, c: losses.nt_xent(a, c, temperature=0.2, block_size=b)[0], (0, 1))(z1, z2)
  (dense, gd), (blocked, gb) = fn(0), fn(block)
  np.testing.assert_allclose(float(blocked), float(dense), rtol=1e-5)
  for a, b in zip(gd, gb):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
  _, md = losses.nt_xent(z1, z2, temperature=0.2)
  _, mb = losses.nt_xent(z1, z2, temperature=0.2, block_size=block)
  for key in md:
    np.testing.assert_allclose(float(mb[key]), float(md[key]), rtol=1e-5)


@pytest.mark.parametrize('n,v,d,t,base', [(6, 2, 4, 0.1, 0.1), (10, 3, 8, 0.07, 0.07),
                                          (12, 2, 16, 0.5, 0.07)])
def test_supcon_matches_float64_reference(n, v, d, t, base):
  rng = np.random.default_rng(n + v)
  z = rng.normal(size=(n, v, d))
  labels = rng.integers(0, 3, size=n)
  loss, metrics = losses.supcon(jnp.asarray(z, jnp.float32), jnp.asarray(labels),
                                temperature=t, base_temperature=base)
  np.testing.assert_allclose(float(loss), supcon_reference(z, labels, t, base), rtol=1e-5)
  assert 0.0 <= float(metrics['contrast_acc']) <= 1.0


def test_supcon_unlabelled_images_only_match_their_own_views():
  rng = np.random.default_rng(3)
  z = rng.normal(size=(10, 2, 6))
  labels = np.array([0, 0, 1, -1, -1, 2, -1, 1, 0, -1])
  loss, _ = losses.supcon(jnp.asarray(z, jnp.float32), jnp.asarray(labels), temperature=0.2)
  np.testing.assert_allclose(float(loss), supcon_reference(z, labels, 0.2, 0.2), rtol=1e-5)
  # All unlabelled: SimCLR's positives, so NT-Xent (not one class of everything).
  z = jnp.asarray(z, jnp.float32)
  sc, _ = losses.supcon(z, -jnp.ones(10, jnp.int32), temperature=0.2)
  nt, _ = losses.nt_xent(z[:, 0], z[:, 1], temperature=0.2)
  np.testing.assert_allclose(float(sc), float(nt), rtol=1e-6)


def test_supcon_with_distinct_labels_equals_nt_xent():
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(9, 2, 5)), jnp.float32)
  sc, _ = losses.supcon(z, jnp.arange(9), temperature=0.3)
  nt, _ = losses.nt_xent(z[:, 0], z[:, 1], temperature=0.3)
  np.testing.assert_allclose(float(sc), float(nt), rtol=1e-6)


def test_supcon_anchor_without_positive_is_finite():
  rng = np.random.default_rng(1)
  z = jnp.asarray(rng.normal(size=(5, 1, 4)), jnp.float32)  # one view: label 4 is alone
  labels = jnp.array([0, 0, 1, 1, 4])
  loss, grads = jax.value_and_grad(
      lambda x: losses.supcon(x, labels, temperature=0.1)[0])(z)
  assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grads)))
  np.testing.assert_allclose(float(loss),
                             supcon_reference(np.asarray(z), np.asarray(labels), 0.1, 0.1),
                             rtol=1e-5)
  # No anchor has a positive at all: the loss is 0, not NaN.
  alone, _ = losses.supcon(z, jnp.arange(5), temperature=0.1)
  assert float(alone) == 0.0


def test_bfloat16_inputs_give_float32_loss():
  rng = np.random.default_rng(2)
  z1 = jnp.asarray(rng.normal(size=(8, 16)), jnp.bfloat16)
  z2 = jnp.asarray(rng.normal(size=(8, 16)), jnp.bfloat16)
  loss, _ = losses.nt_xent(z1, z2, temperature=0.1)
  assert loss.dtype == jnp.float32
  ref = nt_xent_reference(np.asarray(z1, np.float64), np.asarray(z2, np.float64), 0.1)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def test_distillation_loss_against_numpy():
  rng = np.random.default_rng(3)
  s, t = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  tau = 0.5
  pt = np.exp(t / tau) / np.exp(t / tau).sum(-1, keepdims=True)
  log_ps = s / tau - np.log(np.exp(s / tau).sum(-1, keepdims=True))
  ref = tau ** 2 * np.mean(-(pt * log_ps).sum(-1))
  got = losses.distillation_loss(jnp.asarray(s), jnp.asarray(t), temperature=tau)
  np.testing.assert_allclose(float(got), ref, rtol=1e-5)
  # Zero gradient when the student already matches the teacher.
  g = jax.grad(lambda x: losses.distillation_loss(x, jnp.asarray(t), temperature=tau))(
      jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(np.asarray(g), 0.0, atol=1e-6)


# ---- 1 device vs 8 devices inside shard_map -------------------------------------

def _sharded(fn, mesh, num_inputs, out_specs=P()):
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P('data'),) * num_inputs,
                               out_specs=out_specs))


@pytest.mark.parametrize('block', [0, 8])
def test_nt_xent_8_devices_equals_1_device(block):
  assert jax.device_count() == 8, 'tests/conftest.py should give 8 CPU devices'
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(4)
  z1 = jnp.asarray(rng.normal(size=(32, 16)), jnp.float32)
  z2 = jnp.asarray(rng.normal(size=(32, 16)), jnp.float32)

  def single(a, b):
    return losses.nt_xent(a, b, temperature=0.2)[0]

  def per_device(a, b):
    return losses.nt_xent(a, b, temperature=0.2, axis_name='data', block_size=block)

  loss1, (g1a, g1b) = jax.value_and_grad(single, (0, 1))(z1, z2)
  sharded = _sharded(per_device, mesh, 2)
  loss8, metrics8 = sharded(z1, z2)
  g8a, g8b = jax.grad(lambda a, b: sharded(a, b)[0], (0, 1))(z1, z2)
  np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g8a), np.asarray(g1a), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(g8b), np.asarray(g1b), rtol=1e-5, atol=1e-7)
  _, metrics1 = losses.nt_xent(z1, z2, temperature=0.2)
  for key in metrics1:
    np.testing.assert_allclose(float(metrics8[key]), float(metrics1[key]), rtol=1e-5)


def test_supcon_8_devices_equals_1_device():
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(5)
  z = jnp.asarray(rng.normal(size=(16, 2, 8)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 4, size=16))
  single = lambda x: losses.supcon(x, labels, temperature=0.1, base_temperature=0.07)[0]
  sharded = _sharded(functools.partial(
      lambda x, y: losses.supcon(x, y, temperature=0.1, base_temperature=0.07,
                                 axis_name='data')[0]), mesh, 2)
  loss1, g1 = jax.value_and_grad(single)(z)
  loss8 = sharded(z, labels)
  g8 = jax.grad(lambda x: sharded(x, labels))(z)
  np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=1e-5, atol=1e-7)
