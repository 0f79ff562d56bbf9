"""contrastive_jax.kernels.batchnorm: flax's BatchNorm, with a sum-based VJP."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive_jax.kernels import batchnorm
from contrastive_jax.kernels.batchnorm import BatchNorm

EPS = 1e-5


def _np_forward(x, scale, bias):
  """float64 textbook BN over all axes but the last."""
  axes = tuple(range(x.ndim - 1))
  mean = x.mean(axes)
  var = x.var(axes)
  xhat = (x - mean) / np.sqrt(var + EPS)
  return xhat * scale + bias, mean, var, xhat


def _np_vjp(x, scale, g, g_mean, g_var):
  """float64 dL/dx, dL/dscale, dL/dbias of (y, mean, var) given their cotangents."""
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  _, mean, var, xhat = _np_forward(x, scale, 0.0)
  a = scale / np.sqrt(var + EPS)
  dscale, dbias = (g * xhat).sum(axes), g.sum(axes)
  dx = a / n * (n * g - dbias - xhat * dscale)       # through y
  dx += g_mean / n + g_var * 2.0 * (x - mean) / n    # through mean and var
  return dx, dscale, dbias


def _data(shape=(16, 5, 5, 6), seed=0, offset=3.0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 6)
  c = shape[-1]
  # An offset mean: the case where writing BN with raw sums could lose digits.
  x = jax.random.normal(ks[0], shape) * 2.0 + offset
  scale = 1.0 + 0.3 * jax.random.normal(ks[1], (c,))
  bias = 0.3 * jax.random.normal(ks[2], (c,))
  g = jax.random.normal(ks[3], shape)
  return x, scale, bias, g, jax.random.normal(ks[4], (c,)), jax.random.normal(ks[5], (c,))


def test_function_and_vjp_match_float64_formula():
  x, scale, bias, g, g_mean, g_var = _data()
  (y, mean, var), vjp = jax.vjp(
      lambda *a: batchnorm.batch_norm_train(*a, EPS), x, scale, bias)
  dx, dscale, dbias = vjp((g, g_mean, g_var))
  x64, s64 = np.asarray(x, np.float64), np.asarray(scale, np.float64)
  want_y, want_mean, want_var, _ = _np_forward(x64, s64, np.asarray(bias, np.float64))
  want = _np_vjp(x64, s64, np.asarray(g, np.float64), np.asarray(g_mean, np.float64),
                 np.asarray(g_var, np.float64))
  np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mean, want_mean, rtol=1e-6)
  np.testing.assert_allclose(var, want_var, rtol=1e-5)
  for got, ref in zip((dx, dscale, dbias), want):
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def _loss(module, params, stats, x):
  y, updates = module.apply({'params': params, 'batch_stats': stats}, x,
                            use_running_average=False, mutable=['batch_stats'])
  w = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
  return jnp.sum(jax.nn.relu(y.astype(jnp.float32)) * w), (y, updates['batch_stats'])


@pytest.mark.parametrize('kw', [{}, dict(use_bias=False), dict(use_scale=False),
                                dict(scale_init=nn.initializers.zeros)])
def test_module_matches_flax_batchnorm(kw):
  x, *_ = _data(seed=1)
  ref, new = nn.BatchNorm(momentum=0.9, **kw), BatchNorm(momentum=0.9, **kw)
  v_ref = ref.init(jax.random.PRNGKey(0), x, use_running_average=False)
  v_new = new.init(jax.random.PRNGKey(0), x, use_running_average=False)
  # Same variables (names, shapes, initial values), so checkpoints carry over;
  # initialisation leaves the running statistics alone, as flax does.
  jax.tree.map(np.testing.assert_array_equal, v_new, v_ref)
  params = jax.tree.map(lambda p: p + 0.2 * jnp.cos(jnp.arange(p.size) + 1.0), v_ref['params'])
  grad = jax.value_and_grad(_loss, argnums=(1, 3), has_aux=True)
  (l_ref, (y_ref, s_ref)), g_ref = grad(ref, params, v_ref['batch_stats'], x)
  (l_new, (y_new, s_new)), g_new = grad(new, params, v_ref['batch_stats'], x)
  np.testing.assert_allclose(y_new, y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(l_new, l_ref, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), s_new, s_ref)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max())), g_new, g_ref)
  # Evaluation uses the running averages: flax's own path, same result.
  np.testing.assert_array_equal(
      new.apply({'params': params, 'batch_stats': s_new}, x, use_running_average=True),
      ref.apply({'params': params, 'batch_stats': s_new}, x, use_running_average=True))


def test_bfloat16_output_dtype_and_values():
  x, *_ = _data(seed=2)
  x = x.astype(jnp.bfloat16)
  ref = nn.BatchNorm(dtype=jnp.bfloat16)
  new = BatchNorm(dtype=jnp.bfloat16)
  v = ref.init(jax.random.PRNGKey(0), x, use_running_average=False)
  (_, (y_ref, _)), g_ref = jax.value_and_grad(_loss, argnums=(1, 3), has_aux=True)(
      ref, v['params'], v['batch_stats'], x)
  (_, (y_new, _)), g_new = jax.value_and_grad(_loss, argnums=(1, 3), has_aux=True)(
      new, v['params'], v['batch_stats'], x)
  assert y_new.dtype == y_ref.dtype == jnp.bfloat16
  assert g_new[1].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y_new, np.float32), np.asarray(y_ref, np.float32),
                             atol=0.05)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      np.asarray(a, np.float32), np.asarray(b, np.float32),
      rtol=0.02, atol=0.02 * float(np.abs(np.asarray(b, np.float32)).max())), g_new, g_ref)


def test_other_settings_use_flax_code():
  x, *_ = _data(seed=3)
  mask = jnp.arange(x.shape[0])[:, None, None, None] % 3 > 0
  for module_kw, call_kw in [({}, dict(mask=mask)), (dict(use_fast_variance=False), {}),
                             (dict(axis=1), {})]:
    ref = nn.BatchNorm(use_running_average=False, **module_kw)
    new = BatchNorm(use_running_average=False, **module_kw)
    vv = ref.init(jax.random.PRNGKey(0), x)
    want = ref.apply(vv, x, mutable=['batch_stats'], **call_kw)
    got = new.apply(vv, x, mutable=['batch_stats'], **call_kw)
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_less_temporary_memory_than_flax_on_cpu():
  """The reason the module exists: conv -> BN -> ReLU, differentiated, keeps no
  full-size `x - mean` tensor, so XLA:CPU needs less scratch memory."""
  if jax.default_backend() != 'cpu':
    pytest.skip('the memory figure is for XLA:CPU')

  class Net(nn.Module):
    norm: type

    @nn.compact
    def __call__(self, x):
      for i in range(3):
        x = nn.Conv(16, (3, 3), use_bias=False, name=f'conv{i}')(x)
        x = nn.relu(self.norm(name=f'bn{i}')(x, use_running_average=False))
      return jnp.sum(x ** 2)

  x = jax.random.normal(jax.random.PRNGKey(0), (32, 16, 16, 8))
  temp = {}
  for norm in (nn.BatchNorm, BatchNorm):
    net = Net(norm)
    v = net.init(jax.random.PRNGKey(0), x)
    def loss(params, net=net, v=v):
      return net.apply({'params': params, 'batch_stats': v['batch_stats']}, x,
                       mutable=['batch_stats'])[0]
    compiled = jax.jit(jax.grad(loss)).lower(v['params']).compile()
    temp[norm] = compiled.memory_analysis().temp_size_in_bytes
  assert temp[BatchNorm] < 0.9 * temp[nn.BatchNorm], temp
