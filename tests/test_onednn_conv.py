"""oneDNN convolutions through XLA's FFI: the same numbers as lax's convolution
(forward and both gradients) and as nn.Conv in a whole network, by value and
gradient; under an 8-device sharded jit too; and the fallbacks."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax

from contrastive_jax.kernels import backend, cpu_conv, onednn_conv

pytestmark = pytest.mark.skipif(
    not onednn_conv.available(), reason=f'oneDNN: {onednn_conv.unavailable_reason()}')

DN = ('NHWC', 'HWIO', 'NHWC')


def _reference(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN,
                                  precision=lax.Precision.HIGHEST)


# (batch, H, W, Cin, Cout, kernel, stride, padding): the ResNet stems and
# blocks, odd sizes, maps smaller than the kernel, asymmetric padding.
CASES = [
    (2, 9, 9, 5, 7, 3, 1, 'SAME'),
    (2, 9, 7, 5, 7, 3, 2, 'SAME'),
    (3, 8, 8, 4, 6, 1, 2, 'SAME'),
    (2, 12, 12, 3, 8, 7, 2, 'SAME'),       # ImageNet stem
    (2, 3, 3, 8, 8, 3, 1, 'SAME'),         # map < kernel area
    (2, 2, 2, 8, 16, 3, 2, 'SAME'),
    (2, 10, 10, 4, 4, 3, 1, 'VALID'),
    (2, 10, 11, 4, 4, 3, 2, ((1, 0), (0, 2))),
]


@pytest.mark.parametrize('case', CASES)
def test_forward_and_gradients_match_lax(case):
  b, h, w_, c, o, k, s, padding = case
  kx, kw, kd = jax.random.split(jax.random.PRNGKey(sum(case[:7])), 3)
  x = jax.random.normal(kx, (b, h, w_, c))
  w = jax.random.normal(kw, (k, k, c, o))
  conv = functools.partial(onednn_conv.conv_general_dilated, window_strides=(s, s),
                           padding=padding, dimension_numbers=DN)
  y, vjp = jax.vjp(lambda x, w: conv(x, w), x, w)
  y_ref, vjp_ref = jax.vjp(lambda x, w: _reference(x, w, (s, s), padding), x, w)
  assert y.shape == y_ref.shape
  dy = jax.random.normal(kd, y.shape)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)
  for g, g_ref in zip(vjp(dy), vjp_ref(dy)):
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-4)
  # The oneDNN custom calls are in the program, for all three passes.
  text = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(conv(x, w) * dy), (0, 1))).lower(
      x, w).as_text()
  for target in ('OnednnConvFwd', 'OnednnConvBwdData', 'OnednnConvBwdWeights'):
    assert target in text, target


def test_unsupported_convolutions_fall_back_to_cpu_conv():
  x = jnp.ones((2, 8, 8, 4), jnp.bfloat16)
  w = jnp.ones((3, 3, 4, 4), jnp.bfloat16)
  y = onednn_conv.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=DN)
  assert y.dtype == jnp.bfloat16
  text = jax.jit(lambda x, w: onednn_conv.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=DN)).lower(x, w).as_text()
  assert 'Onednn' not in text
  # Dilation goes to lax (through cpu_conv).
  x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
  y = onednn_conv.conv_general_dilated(x32, w32, (1, 1), 'SAME', rhs_dilation=(2, 2),
                                       dimension_numbers=DN)
  np.testing.assert_allclose(y, lax.conv_general_dilated(
      x32, w32, (1, 1), 'SAME', rhs_dilation=(2, 2), dimension_numbers=DN), rtol=1e-6)


class _Net(nn.Module):
  conv: type

  @nn.compact
  def __call__(self, x):
    x = nn.relu(self.conv(8, (3, 3), use_bias=False)(x))
    x = nn.relu(self.conv(16, (3, 3), (2, 2))(x))
    x = self.conv(16, (1, 1), (2, 2), padding='VALID')(x)
    return jnp.mean(x ** 2)


def test_network_value_and_gradient_match_nn_conv():
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 12, 12, 3))
  params = _Net(nn.Conv).init(jax.random.PRNGKey(0), x)
  # Same parameter tree (names and shapes): checkpoints move between them.
  assert (jax.tree.map(jnp.shape, _Net(onednn_conv.Conv).init(jax.random.PRNGKey(0), x))
          == jax.tree.map(jnp.shape, params))
  with jax.default_matmul_precision('highest'):
    loss, grads = jax.value_and_grad(lambda p: _Net(nn.Conv).apply(p, x))(params)
  loss_o, grads_o = jax.value_and_grad(lambda p: _Net(onednn_conv.Conv).apply(p, x))(params)
  np.testing.assert_allclose(loss_o, loss, rtol=1e-5)
  for g_o, g in zip(jax.tree.leaves(grads_o), jax.tree.leaves(grads)):
    np.testing.assert_allclose(g_o, g, rtol=1e-4, atol=1e-6)


def test_batch_sharded_over_8_devices_equals_one_device():
  """Under a batch-sharded jit XLA cannot split the custom call, so it runs
  it on the gathered batch; the numbers must still be the one-device ones."""
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices (tests/conftest.py sets them)')
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  x = jax.random.normal(jax.random.PRNGKey(2), (16, 8, 8, 4))
  w = jax.random.normal(jax.random.PRNGKey(3), (3, 3, 4, 8))

  def loss(x, w):
    y = onednn_conv.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=DN)
    return jnp.sum(jnp.tanh(y) * jnp.arange(y.shape[0])[:, None, None, None])
  grad = jax.jit(jax.value_and_grad(loss, (0, 1)))
  one = grad(x, w)
  xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data')))
  eight = grad(xs, w)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_policy_selection():
  assert backend.conv_cls_for_backend('onednn') is onednn_conv.Conv
  assert backend.conv_cls_for_backend('auto', backend='gpu') is nn.Conv
  # 'auto' on CPU: oneDNN with one device; cpu_conv.Conv with several (the
  # tests run with 8), since a custom call is not split across devices.
  expected = onednn_conv.Conv if jax.device_count() == 1 else cpu_conv.Conv
  assert backend.conv_cls_for_backend('auto', backend='cpu') is expected
  with pytest.raises(ValueError, match="'onednn'"):
    backend.conv_cls_for_backend('cudnn')
  # The models' entry point reads the same choice from config.kernels.
  assert backend.conv_cls(ml_collections.ConfigDict({'conv': 'onednn'})) is onednn_conv.Conv


def test_missing_onednn_is_reported_and_auto_falls_back(monkeypatch, caplog):
  monkeypatch.setattr(onednn_conv, '_load', lambda: 'the onednn-cpu-gomp wheel is not installed')
  monkeypatch.setattr(jax, 'device_count', lambda: 1)
  assert not onednn_conv.available()
  assert backend.conv_cls_for_backend('auto', backend='cpu') is cpu_conv.Conv
  assert 'oneDNN convolutions unavailable, using cpu_conv.Conv' in caplog.text
  assert 'onednn-cpu-gomp wheel is not installed' in caplog.text
  with pytest.raises(RuntimeError,
                     match=r"config\.kernels\.conv='onednn' but .* not installed.*'auto'"):
    backend.conv_cls_for_backend('onednn')
  assert backend.conv_cls(ml_collections.ConfigDict({'conv': 'auto'})) is (
      cpu_conv.Conv if jax.default_backend() == 'cpu' else nn.Conv)
  # The convolution itself falls back too.
  x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
  text = jax.jit(lambda x, w: onednn_conv.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=DN)).lower(x, w).as_text()
  assert 'Onednn' not in text


def test_build_reports_a_missing_wheel(monkeypatch, tmp_path):
  monkeypatch.setattr(onednn_conv, '_WHEELS', ('no-such-wheel-xyz', 'onednn-devel-cpu-gomp'))
  with pytest.raises(RuntimeError, match='no-such-wheel-xyz wheel is not installed'):
    onednn_conv.build(tmp_path)


def test_build_caches_the_library(tmp_path):
  first = onednn_conv.build(tmp_path)
  mtime = first.stat().st_mtime_ns
  assert onednn_conv.build(tmp_path) == first and first.stat().st_mtime_ns == mtime
  assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left
