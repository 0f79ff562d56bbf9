"""contrastive_jax.kernels.cpu_conv: the custom-VJP conv equals XLA's conv; and
kernels/backend.py, which picks the convolution class."""

import ast
import functools
import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax

from contrastive_jax import kernels
from contrastive_jax.kernels import backend, cpu_conv, onednn_conv

DN = ('NHWC', 'HWIO', 'NHWC')


def _ref_conv(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN)


def _fast_conv(x, w, strides, padding, chunk_bytes=cpu_conv.DEFAULT_CHUNK_BYTES,
               wgrad='fast'):
  return cpu_conv.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN,
                                       chunk_bytes=chunk_bytes, wgrad=wgrad)


def _close(actual, desired, rtol=1e-4):
  actual, desired = np.asarray(actual, np.float32), np.asarray(desired, np.float32)
  # Elements of a sum can cancel to ~0, so the absolute slack is rtol * scale.
  np.testing.assert_allclose(actual, desired, rtol=rtol,
                             atol=rtol * float(np.abs(desired).max()))


def _value_and_grads(conv, x, w, dy):
  y, vjp = jax.vjp(conv, x, w)
  return (y,) + vjp(dy)


def _inputs(n, h, w, cin, cout, k, stride, padding='SAME', seed=0):
  kx, kw, kd = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(kx, (n, h, w, cin))
  wt = jax.random.normal(kw, (k, k, cin, cout))
  y_shape = jax.eval_shape(functools.partial(_ref_conv, strides=(stride, stride),
                                             padding=padding), x, wt).shape
  return x, wt, jax.random.normal(kd, y_shape)


@pytest.mark.parametrize('k', [1, 3, 7])
@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('hw', [(7, 9), (8, 10)], ids=['odd', 'even'])
def test_matches_lax_conv_and_its_grads(k, stride, hw):
  x, w, dy = _inputs(3, hw[0], hw[1], 5, 6, k, stride)
  strides = (stride, stride)
  want = _value_and_grads(functools.partial(_ref_conv, strides=strides, padding='SAME'),
                          x, w, dy)
  # chunk_bytes small enough that the batch is split into several chunks.
  fast = functools.partial(_fast_conv, strides=strides, padding='SAME', chunk_bytes=4096)
  got = jax.jit(_value_and_grads, static_argnums=0)(fast, x, w, dy)
  for g, r in zip(got, want):
    assert g.shape == r.shape and g.dtype == r.dtype
    _close(g, r)


@pytest.mark.parametrize('scheme', ['full', 'mixed'])
@pytest.mark.parametrize('k,stride,padding', [
    (3, 1, 'SAME'), (3, 2, 'SAME'), (7, 2, 'SAME'), (3, 1, 'VALID'),
    (3, 1, ((2, 0), (1, 3))), (5, 2, ((0, 1), (3, 2))), (2, 1, 'SAME')])
def test_weight_grad_schemes(scheme, k, stride, padding):
  """Both wgrad schemes (im2col 'full' and the mixed shift) on every geometry."""
  x, w, dy = _inputs(4, 9, 8, 3, 4, k, stride, padding, seed=1)
  strides = (stride, stride)
  pads = cpu_conv._explicit_pads(padding, x.shape[1:3], (k, k), strides)
  want = jax.vjp(lambda w_: _ref_conv(x, w_, strides, padding), w)[1](dy)[0]
  got = jax.jit(functools.partial(cpu_conv.conv_weight_grad, kernel_hw=(k, k),
                                  strides=strides, pads=pads, chunk_bytes=2000,
                                  scheme=scheme))(x, dy)
  _close(got, want)


@pytest.mark.parametrize('n,per_image,chunk_bytes', [(256, 1088, 8192), (7, 100, 250),
                                                     (13, 10, 40), (5, 100, 10)])
def test_chunking_covers_batch(n, per_image, chunk_bytes):
  cb, nb, extra = cpu_conv._chunking(n, per_image, chunk_bytes)
  assert cb * nb == n + extra and 0 <= extra < cb and cb >= 1


def test_uneven_chunks_use_zero_images():
  """A prime batch forces zero-image padding of the last chunk."""
  x, w, dy = _inputs(7, 6, 6, 4, 4, 3, 1, seed=2)
  per_image = cpu_conv._bytes_per_image('mixed', (3, 3), 4, 4, (6, 6), 4)
  assert cpu_conv._chunking(7, per_image, 3 * per_image) == (3, 3, 2)
  want = jax.vjp(lambda w_: _ref_conv(x, w_, (1, 1), 'SAME'), w)[1](dy)[0]
  got = cpu_conv.conv_weight_grad(x, dy, (3, 3), (1, 1), ((1, 1), (1, 1)),
                                  chunk_bytes=3 * per_image, scheme='mixed')
  _close(got, want)


def _conv_pair(**kw):
  return nn.Conv(**kw), cpu_conv.Conv(**kw)


@pytest.mark.parametrize('use_bias', [True, False])
@pytest.mark.parametrize('kw', [
    dict(features=6, kernel_size=(3, 3)),
    dict(features=4, kernel_size=(7, 7), strides=(2, 2), padding=((3, 3), (3, 3))),
    dict(features=8, kernel_size=(1, 1), strides=2),
])
def test_module_same_params_and_grads_as_nn_conv(use_bias, kw):
  ref, fast = _conv_pair(use_bias=use_bias, bias_init=nn.initializers.normal(1.0), **kw)
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 9, 8, 5))
  p_ref = ref.init(jax.random.PRNGKey(4), x)
  p_fast = fast.init(jax.random.PRNGKey(4), x)
  assert jax.tree.structure(p_ref) == jax.tree.structure(p_fast)
  assert set(p_fast['params']) == ({'kernel', 'bias'} if use_bias else {'kernel'})
  jax.tree.map(np.testing.assert_array_equal, p_ref, p_fast)  # same init too

  def loss(mod, params, x):
    y = mod.apply(params, x)
    return jnp.sum(y * jnp.cos(y)), y

  g_ref, y_ref = jax.grad(loss, argnums=(1, 2), has_aux=True)(ref, p_ref, x)
  g_fast, y_fast = jax.jit(jax.grad(loss, argnums=(1, 2), has_aux=True),
                           static_argnums=0)(fast, p_fast, x)
  _close(y_fast, y_ref)
  jax.tree.map(_close, g_fast, g_ref)


def test_auto_names_match_nn_conv():
  """A parent that does not name its convs gets identical param paths."""
  class Net(nn.Module):
    conv_cls: type = nn.Conv

    @nn.compact
    def __call__(self, x):
      x = self.conv_cls(4, (3, 3), use_bias=False)(x)
      return self.conv_cls(2, (1, 1))(nn.relu(x))

  x = jnp.ones((1, 6, 6, 3))
  p_ref = Net(nn.Conv).init(jax.random.PRNGKey(0), x)
  p_fast = Net(cpu_conv.Conv).init(jax.random.PRNGKey(0), x)
  assert jax.tree.structure(p_ref) == jax.tree.structure(p_fast)
  assert set(p_fast['params']) == {'Conv_0', 'Conv_1'}
  _close(Net(cpu_conv.Conv).apply(p_ref, x), Net(nn.Conv).apply(p_ref, x))


def test_bfloat16_compute_dtype():
  ref, fast = _conv_pair(features=8, kernel_size=(3, 3), dtype=jnp.bfloat16)
  x = jax.random.uniform(jax.random.PRNGKey(5), (4, 8, 8, 6))
  params = ref.init(jax.random.PRNGKey(6), x)

  def loss(mod, params, x):
    return jnp.mean(mod.apply(params, x).astype(jnp.float32) ** 2)

  y = jax.jit(fast.apply)(params, x)
  assert y.dtype == jnp.bfloat16
  g_ref = jax.grad(loss, argnums=(1, 2))(ref, params, x)
  g_fast = jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)(fast, params, x)
  assert g_fast[0]['params']['kernel'].dtype == jnp.float32  # params stay f32
  jax.tree.map(lambda a, b: _close(a, b, rtol=3e-2), g_fast, g_ref)


@pytest.mark.parametrize('kw', [dict(kernel_dilation=2), dict(feature_group_count=2)])
def test_unsupported_module_cases_fall_back_to_xla(kw):
  ref, fast = _conv_pair(features=4, kernel_size=(3, 3), **kw)
  x = jax.random.normal(jax.random.PRNGKey(7), (2, 7, 7, 4))
  params = ref.init(jax.random.PRNGKey(8), x)
  _close(fast.apply(params, x), ref.apply(params, x))
  g = lambda m: jax.grad(lambda p: jnp.sum(m.apply(p, x) ** 2))(params)
  jax.tree.map(_close, g(fast), g(ref))


def test_unsupported_function_cases_fall_back_to_xla():
  x, w, _ = _inputs(2, 5, 5, 4, 4, 3, 1)
  for kw in (dict(lhs_dilation=(2, 2), dimension_numbers=DN),
             dict(dimension_numbers=None)):  # lax default layout NCHW/OIHW
    ww = w if kw['dimension_numbers'] else w.transpose(3, 2, 0, 1)
    xx = x if kw['dimension_numbers'] else x.transpose(0, 3, 1, 2)
    _close(cpu_conv.conv_general_dilated(xx, ww, (1, 1), ((1, 1), (1, 1)), **kw),
           lax.conv_general_dilated(xx, ww, (1, 1), ((1, 1), (1, 1)), **kw))


@pytest.mark.parametrize('k,stride,hw', [(3, 1, 6), (3, 2, 6), (1, 2, 6), (3, 1, 2)])
def test_sharded_batch_under_jit(k, stride, hw):
  """Batch sharded over the 8 simulated CPU devices (Explicit mesh axes), as in
  training; strided convs take the polyphase input gradient, 1x1/2 with its
  all-zero phases, a 2x2 map the small-map matmul."""
  devices = jax.devices()
  mesh = jax.make_mesh((len(devices),), ('data',), devices=devices)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  x, w, dy = _inputs(2 * len(devices), hw, hw, 4, 5, k, stride, seed=9)
  strides = (stride, stride)
  want = _value_and_grads(functools.partial(_ref_conv, strides=strides, padding='SAME'),
                          x, w, dy)
  fast = functools.partial(_fast_conv, strides=strides, padding='SAME', chunk_bytes=2000)
  got = jax.jit(_value_and_grads, static_argnums=0)(
      fast, jax.device_put(x, sharding), w, jax.device_put(dy, sharding))
  for g, r in zip(got, want):
    _close(g, r)


@pytest.mark.parametrize('wgrad', ['xla', 'auto'])
def test_other_wgrad_choices_match(wgrad):
  x, w, dy = _inputs(2, 8, 8, 4, 6, 3, 2, seed=4)
  want = _value_and_grads(functools.partial(_ref_conv, strides=(2, 2), padding='SAME'),
                          x, w, dy)
  fast = functools.partial(_fast_conv, strides=(2, 2), padding='SAME', wgrad=wgrad)
  got = jax.jit(_value_and_grads, static_argnums=0)(fast, x, w, dy)
  for g, r in zip(got, want):
    _close(g, r)
  with pytest.raises(ValueError):
    _fast_conv(x, w, (1, 1), 'SAME', wgrad='eigen')


@pytest.mark.parametrize('strides', [(2, 2), (3, 3), (2, 1), (1, 3)])
@pytest.mark.parametrize('k', [1, 2, 3, 4, 7])
def test_polyphase_input_grad_float64(strides, k):
  """strided_input_grad = XLA's transpose in float64, for every padding kind
  (SAME, VALID, asymmetric explicit, zero) and odd/even sizes."""
  rng = np.random.default_rng(k * 10 + strides[0])
  with jax.enable_x64(True):
    for h, wd in [(7, 8), (9, 6)]:
      for padding in ['SAME', 'VALID', ((2, 1), (0, 3)), ((0, 0), (1, 0))]:
        pads = cpu_conv._explicit_pads(padding, (h, wd), (k, k), strides)
        x = rng.standard_normal((2, h, wd, 3))
        w = rng.standard_normal((k, k, 3, 4))
        y, vjp = jax.vjp(lambda x_: _ref_conv(x_, w, strides, pads), x)
        dy = rng.standard_normal(y.shape)
        got = cpu_conv.conv_input_grad(jnp.asarray(dy), jnp.asarray(w), x.shape,
                                       strides, pads, method='polyphase')
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), np.asarray(vjp(dy)[0]),
                                   rtol=1e-12, atol=1e-12)
  with pytest.raises(ValueError, match='input-gradient method'):
    cpu_conv.conv_input_grad(dy, w, x.shape, strides, pads, method='dilated')


@pytest.mark.parametrize('k,strides,hw,padding', [
    (3, (1, 1), (2, 2), 'SAME'), (3, (2, 2), (2, 2), 'SAME'), (3, (1, 1), (1, 1), 'SAME'),
    (3, (1, 1), (2, 4), 'SAME'), (3, (2, 1), (1, 8), 'SAME'), (5, (1, 1), (4, 4), 'SAME'),
    (7, (2, 2), (4, 4), 'SAME'), (3, (1, 1), (2, 2), ((2, 0), (1, 2))),
    (3, (1, 1), (1, 3), ((1, 1), (0, 0)))])
def test_small_map_conv_float64(k, strides, hw, padding):
  """Maps with fewer pixels than kernel taps (where XLA:CPU's conv is ~50x
  slower) take small_map_conv: value and both gradients equal XLA's in float64."""
  rng = np.random.default_rng(k + hw[1])
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((3, hw[0], hw[1], 4)))
    w = jnp.asarray(rng.standard_normal((k, k, 4, 5)))
    ref = functools.partial(_ref_conv, strides=strides, padding=padding)
    fast = functools.partial(_fast_conv, strides=strides, padding=padding)
    dy = jnp.asarray(rng.standard_normal(jax.eval_shape(ref, x, w).shape))
    for g, r in zip(jax.jit(_value_and_grads, static_argnums=0)(fast, x, w, dy),
                    _value_and_grads(ref, x, w, dy)):
      assert g.dtype == jnp.float64
      np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('hw,small', [((2, 2), True), ((2, 4), True), ((1, 8), True),
                                      ((3, 3), False), ((1, 9), False), ((2, 8), False)])
def test_small_map_rule(hw, small):
  """The matmul form replaces exactly the convs with H*W < kh*kw (3x3: < 9
  pixels), where XLA:CPU's conv was measured slow; larger maps keep XLA's."""
  x = jnp.ones((2, hw[0], hw[1], 4))
  w = jnp.ones((3, 3, 4, 5))
  jaxpr = str(jax.make_jaxpr(
      jax.grad(lambda x, w: _fast_conv(x, w, (1, 1), 'SAME').sum(), (0, 1)))(x, w))
  assert ('conv_general_dilated' not in jaxpr) == small


@pytest.mark.parametrize('hw,k,below,expect', [
    ((8, 8), 3, 16, 'xla'), ((15, 4), 3, 16, 'xla'), ((16, 16), 3, 16, 'fast'),
    ((8, 20), 3, 16, 'fast'), ((8, 8), 1, 16, 'fast'), ((8, 8), 3, 0, 'fast')])
def test_xla_wgrad_below_rule(hw, k, below, expect):
  """wgrad='auto' takes XLA's weight gradient exactly for kernels > 1x1 on maps
  under `xla_wgrad_below` px on both sides: its backward is that wgrad's."""
  x, w, dy = _inputs(2, hw[0], hw[1], 4, 5, k, 1)

  def jaxpr(**kw):
    conv = functools.partial(cpu_conv.conv_general_dilated, window_strides=(1, 1),
                             padding='SAME', dimension_numbers=DN, chunk_bytes=4096, **kw)
    return str(jax.make_jaxpr(functools.partial(_value_and_grads, conv))(x, w, dy))

  got = jaxpr(wgrad='auto', xla_wgrad_below=below)
  assert got == jaxpr(wgrad=expect)
  assert got != jaxpr(wgrad={'xla': 'fast', 'fast': 'xla'}[expect])
  with pytest.raises(ValueError, match='xla_wgrad_below'):
    jaxpr(xla_wgrad_below=-1)


def test_scheme_choice():
  assert cpu_conv.choose_scheme((3, 3), (1, 1), 64, 64, (32, 32)) == 'mixed'
  assert cpu_conv.choose_scheme((3, 3), (1, 1), 256, 256, (8, 8)) == 'full'
  assert cpu_conv.choose_scheme((3, 3), (1, 1), 3, 64, (32, 32)) == 'full'
  assert cpu_conv.choose_scheme((3, 3), (2, 2), 64, 128, (16, 16)) == 'full'
  assert cpu_conv.choose_scheme((1, 1), (1, 1), 64, 256, (56, 56)) == 'full'


def test_conv_cls_for_backend():
  # 'auto' on CPU: cpu_conv.Conv with several devices (the tests run with 8;
  # test_onednn_conv.py covers the one-device choice).
  expected = (cpu_conv.Conv if jax.device_count() > 1 or not onednn_conv.available()
              else onednn_conv.Conv)
  assert backend.conv_cls_for_backend(backend='cpu') is expected
  assert backend.conv_cls_for_backend(backend='gpu') is nn.Conv
  assert backend.conv_cls_for_backend(backend='tpu') is nn.Conv
  assert backend.conv_cls_for_backend('xla', backend='cpu') is nn.Conv
  assert backend.conv_cls_for_backend('fast', backend='gpu') is cpu_conv.Conv
  assert cpu_conv.Conv.__name__ == 'Conv' and cpu_conv.CpuConv is cpu_conv.Conv
  with pytest.raises(ValueError, match='config.kernels.conv'):
    backend.conv_cls_for_backend('oneDNN')
  # A threshold only changes the fast Conv: a partial that still builds a Conv.
  assert backend.conv_cls_for_backend(backend='gpu', xla_wgrad_below=16) is nn.Conv
  assert backend.conv_cls_for_backend('fast', xla_wgrad_below=0) is cpu_conv.Conv
  conv = backend.conv_cls_for_backend('fast', xla_wgrad_below=16)(4, (3, 3))
  assert type(conv) is cpu_conv.Conv
  assert conv.conv_general_dilated.keywords == {'xla_wgrad_below': 16}


def test_conv_cls_reads_config_kernels():
  defaults = backend.kernels_defaults()
  assert defaults.to_dict() == {'conv': 'auto', 'conv_xla_wgrad_below': 0}
  # None, the defaults and an empty section all mean conv='auto'.
  auto = backend.conv_cls_for_backend('auto')
  assert backend.conv_cls() is auto
  assert backend.conv_cls(defaults) is auto
  assert backend.conv_cls(ml_collections.ConfigDict()) is auto
  for policy in ('xla', 'fast'):
    cfg = ml_collections.ConfigDict({'conv': policy, 'conv_xla_wgrad_below': 0})
    assert backend.conv_cls(cfg) is backend.conv_cls_for_backend(policy)
  cfg = ml_collections.ConfigDict({'conv': 'fast', 'conv_xla_wgrad_below': 16})
  conv = backend.conv_cls(cfg)(4, (3, 3))
  assert type(conv) is cpu_conv.Conv
  assert conv.conv_general_dilated.keywords == {'xla_wgrad_below': 16}
  with pytest.raises(ValueError, match=r"config\.kernels\.conv must be .* got 'cudnn'"):
    backend.conv_cls(ml_collections.ConfigDict({'conv': 'cudnn'}))
  for bad in (-1, 1.5, '16', True):
    with pytest.raises(ValueError, match=r'config\.kernels\.conv_xla_wgrad_below'):
      backend.conv_cls(ml_collections.ConfigDict({'conv': 'fast',
                                                  'conv_xla_wgrad_below': bad}))


def _kernel_imports() -> dict[str, set[str]]:
  """module name -> the contrastive_jax.kernels modules it imports (any depth)."""
  package = pathlib.Path(kernels.__file__).parent
  names = {p.stem for p in package.glob('*.py') if p.stem != '__init__'}
  graph = {}
  for name in names:
    deps = set()
    for node in ast.walk(ast.parse((package / f'{name}.py').read_text())):
      if isinstance(node, ast.ImportFrom) and node.module == 'contrastive_jax.kernels':
        deps |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith(
          'contrastive_jax.kernels.'):
        deps.add(node.module.rsplit('.', 1)[1])
      elif isinstance(node, ast.Import):
        deps |= {a.name.rsplit('.', 1)[1] for a in node.names
                 if a.name.startswith('contrastive_jax.kernels.')}
    graph[name] = deps & names
  return graph


def test_kernels_have_no_import_cycle():
  graph = _kernel_imports()
  assert graph['backend'] >= {'cpu_conv', 'onednn_conv'}
  assert graph['cpu_conv'] == set() and graph['onednn_conv'] == {'cpu_conv', 'ffi_build'}
  assert graph['ffi_build'] == set() and graph['sgns_update'] == {'ffi_build'}

  def visit(name, path):
    assert name not in path, f'import cycle: {" -> ".join(path + (name,))}'
    for dep in graph[name]:
      visit(dep, path + (name,))

  for name in graph:
    visit(name, ())


@pytest.mark.slow  # ~20 s: compiles the tiny ResNet's gradient twice
def test_resnet_with_fast_conv_matches_nn_conv():
  """The spec's tiny test net: identical params tree and gradients."""
  from contrastive_jax.models.resnet import ResNet  # pylint: disable=g-import-not-at-top
  kw = dict(stage_sizes=(1, 1), block='basic', base_width=8, stem='cifar')
  ref, fast = ResNet(**kw), ResNet(conv_cls=cpu_conv.Conv, **kw)
  x = jax.random.uniform(jax.random.PRNGKey(10), (4, 8, 8, 3))
  variables = ref.init(jax.random.PRNGKey(11), x, train=False)
  shapes = lambda m: jax.tree.map(lambda a: (a.shape, a.dtype), jax.eval_shape(
      functools.partial(m.init, train=False), jax.random.PRNGKey(11), x))
  assert shapes(fast) == shapes(ref)

  def loss(model, params):
    h, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                       train=True, mutable=['batch_stats'])
    return jnp.sum(jnp.sin(h))

  grad = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)
  jax.tree.map(_close, grad(fast, variables['params']), grad(ref, variables['params']))


def test_weight_grad_loop_reads_x_in_place():
  # The chunked loop must take x (here a ReLU output) as it is. With the
  # [n] -> [cb, nb] reshape outside the loop, XLA fused it with x's producer
  # and wrote a second, chunk-shaped copy of x (and of dy) for the loop.
  def loss(x, w, s):
    a = jax.nn.relu(x * s + 1.0)
    return jnp.sum(_fast_conv(a, w, (1, 1), 'SAME', chunk_bytes=4096) ** 2)

  x, w, _ = _inputs(8, 6, 6, 4, 4, 3, 1)
  assert cpu_conv._chunking(8, cpu_conv._bytes_per_image(
      'mixed', (3, 3), 4, 4, (6, 6), 4), 4096)[1] > 1  # several chunks
  hlo = jax.jit(jax.grad(loss, argnums=1)).lower(x, w, jnp.ones(4)).compile().as_text()
  entry = hlo[hlo.index('\nENTRY'):]
  assert 'f32[8,6,6,4]' in entry
  assert not re.search(r'= f32\[\d+,\d+,6,6,4\]', entry), 'chunk-shaped copy outside the loop'
