"""Tests for contrastive_jax.models: shapes, parameter counts, init, heads, dtypes.

Big networks are only traced (jax.eval_shape), never run. Real computation uses
the tiny test net on 8 px images. On CPU the cost is compilation, not FLOPs:
a parameter initialiser compiles once per kernel shape (~1 s each on a busy
2-core machine), so the tiny net is initialised once per module
(`_tiny_state`) and other tests fill abstract variables with random numbers.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from contrastive_jax import config_defaults
from contrastive_jax import models
from contrastive_jax.models import heads
from contrastive_jax.models import resnet

KEY = jax.random.PRNGKey(0)


def _abstract_init(module, x_shape, **kwargs):
  """(output, variables) as ShapeDtypeStructs: traces, computes nothing."""
  x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  return jax.eval_shape(
      lambda x: module.init_with_output(KEY, x, train=False, **kwargs), x)


def _random_variables(module, x_shape, seed=0):
  """Variables of the right structure without running initialisers: params
  ~ N(0, 0.5^2) (BN scale ~ 1 + that), BN mean 0 and var 1."""
  _, abstract = _abstract_init(module, x_shape)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if 'var' in name:
      return jnp.ones(leaf.shape, leaf.dtype)
    if 'mean' in name:
      return jnp.zeros(leaf.shape, leaf.dtype)
    value = 0.5 * rng.standard_normal(leaf.shape)
    return jnp.asarray(value + (1.0 if 'scale' in name else 0.0), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def _set(cfg, overrides):
  """ResNet keys go to config.model.resnet, the rest to config.model."""
  for key, value in overrides.items():
    (cfg.resnet if key in resnet.ARCH_KEYS else cfg)[key] = value
  return cfg


def _cfg(**overrides):
  return _set(config_defaults.model_defaults(), overrides)


def _tiny(**overrides):
  return _set(models.tiny_model_config(), overrides)


def _images(n=4, side=8, seed=1):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, side, side, 3)),
                     jnp.float32)


@functools.lru_cache(maxsize=None)
def _tiny_state():
  """The tiny model (10-class probe), its initial variables and an input."""
  model = models.build_model(models.tiny_model_config(), num_classes=10)
  x = _images()
  return model, model.init(KEY, x, train=False), x


# Exact parameter counts (params collection only; BN statistics excluded).
# ResNet-18/50 match torchvision's resnet18/resnet50 without the fc layer
# (11,689,512 - 513,000 and 25,557,032 - 2,049,000); the SK and wide ones
# match SimCLR v2's Table 1 (R50 1x SK 35M, R50 2x 94M, R152 3x SK 795M).
ENCODER_PARAMS = {
    (18, 'imagenet'): 11_176_512,
    (18, 'cifar'): 11_168_832,
    (34, 'imagenet'): 21_284_672,
    (34, 'cifar'): 21_276_992,
    (50, 'imagenet'): 23_508_032,
    (50, 'cifar'): 23_500_352,
    (101, 'imagenet'): 42_500_160,
    (101, 'cifar'): 42_492_480,
    (152, 'imagenet'): 58_143_808,
    (152, 'cifar'): 58_136_128,
    (200, 'imagenet'): 62_624_832,
    (200, 'cifar'): 62_617_152,
}


@pytest.mark.parametrize('depth,stem', sorted(ENCODER_PARAMS))
def test_encoder_shapes_and_param_counts(depth, stem):
  enc = models.build_encoder(_cfg(depth=depth, stem=stem))
  h, variables = _abstract_init(enc, (2, 32, 32, 3))
  width = 512 if depth < 50 else 2048
  assert h.shape == (2, width) and h.dtype == jnp.float32
  assert models.encoder_width(_cfg(depth=depth)) == width
  assert models.count_params(variables['params']) == ENCODER_PARAMS[(depth, stem)]
  assert set(variables) == {'params', 'batch_stats'}


def test_resnet50_with_1000_way_head():
  enc = models.build_encoder(_cfg(depth=50))
  h, variables = _abstract_init(enc, (1, 224, 224, 3))
  n_enc = models.count_params(variables['params'])
  assert n_enc == 23_508_032  # ~23.5M
  head_vars = jax.eval_shape(lambda h: heads.LinearHead(1000).init(KEY, h), h)
  n_head = models.count_params(head_vars)
  assert n_head == 2048 * 1000 + 1000
  assert abs(n_enc + n_head - 25_557_032) < 100_000  # ~25.6M, torchvision's R50


@pytest.mark.parametrize('width,sk,expected', [
    (2, 0.0, 93_907_072), (4, 0.0, 375_378_176), (1, 0.0625, 35_215_584)])
def test_resnet50_width_and_sk_param_counts(width, sk, expected):
  cfg = _cfg(depth=50, width_multiplier=width, sk_ratio=sk)
  h, variables = _abstract_init(models.build_encoder(cfg), (1, 32, 32, 3))
  assert h.shape == (1, 2048 * width)
  assert models.count_params(variables['params']) == expected


def test_imagenet_stem_downsampling_at_224():
  # 224 -> stem conv 112 -> max-pool 56 -> stages 56, 28, 14, 7.
  enc = models.build_encoder(_cfg(depth=18))
  (_, state) = _abstract_init(enc, (1, 224, 224, 3),
                              capture_intermediates=True)
  inter = state['intermediates']
  assert inter['stem_conv']['__call__'][0].shape == (1, 112, 112, 64)
  sides = [inter[f'stage{i}_block2']['__call__'][0].shape[1] for i in (1, 2, 3, 4)]
  assert sides == [56, 28, 14, 7]


def test_fixed_padding_matches_tf():
  assert resnet.fixed_padding(7) == ((3, 3), (3, 3))
  assert resnet.fixed_padding(3) == ((1, 1), (1, 1))
  assert resnet.fixed_padding(1) == ((0, 0), (0, 0))


def test_tiny_model_runs_and_output_dict():
  model, variables, x = _tiny_state()
  out = model.apply(variables, x, train=False)
  assert set(out) == {'h', 'z', 'proj', 'probe_logits'}
  assert out['h'].shape == (4, 16)  # 8 * 2**(2-1)
  assert out['z'].shape == (4, 16)
  assert [p.shape for p in out['proj']] == [(4, 16), (4, 16), (4, 16)]
  assert out['probe_logits'].shape == (4, 10)
  for v in (out['h'], out['z'], out['probe_logits'], *out['proj']):
    assert v.dtype == jnp.float32
    assert np.all(np.isfinite(v))
  np.testing.assert_array_equal(out['z'], out['proj'][-1])
  np.testing.assert_array_equal(out['h'], out['proj'][0])
  assert set(variables['params']) == {'encoder', 'head', 'probe'}
  assert set(variables['batch_stats']) == {'encoder', 'head'}
  # No probe without classes.
  model0 = models.build_model(models.tiny_model_config(), num_classes=0)
  out0, v0 = _abstract_init(model0, x.shape)
  assert 'probe' not in v0['params']
  assert 'probe_logits' not in out0


def test_init_values():
  _, variables, _ = _tiny_state()
  params = variables['params']['encoder']
  # Last BN gamma of every residual block starts at 0, the others at 1.
  blocks = [k for k in params if k.startswith('stage')]
  assert blocks == ['stage1_block1', 'stage2_block1']
  for name in blocks:
    np.testing.assert_array_equal(params[name]['bn2']['scale'], 0.0)
    np.testing.assert_array_equal(params[name]['bn1']['scale'], 1.0)
    np.testing.assert_array_equal(params[name]['bn1']['bias'], 0.0)
  np.testing.assert_array_equal(params['stem_bn']['scale'], 1.0)
  np.testing.assert_array_equal(params['stage2_block1']['shortcut']['bn']['scale'], 1.0)
  # Projection shortcut exactly where the shape changes.
  assert 'shortcut' not in params['stage1_block1']
  # Convs: no bias, He init std sqrt(2 / fan_in), truncated normal.
  for name, p in params['stage2_block1'].items():
    if name.startswith('conv'):
      assert set(p) == {'kernel'}
  k = params['stage2_block1']['conv2']['kernel']
  assert k.shape == (3, 3, 16, 16)
  expected = np.sqrt(2.0 / (9 * 16))
  assert abs(float(jnp.std(k)) - expected) < 0.06 * expected  # 2304 samples
  # flax's truncated normal is rescaled to the target std, cut at 2 std.
  assert float(jnp.max(jnp.abs(k))) <= 2.0 * expected / 0.8796 + 1e-6
  # Heads: Dense N(0, 0.01), probe N(0, 0.01) with zero bias.
  dense = variables['params']['head']['dense1']['kernel']
  assert abs(float(jnp.std(dense)) - 0.01) < 0.002
  np.testing.assert_array_equal(variables['params']['probe']['dense']['bias'], 0.0)
  # BN statistics start at mean 0, var 1.
  stats = variables['batch_stats']['encoder']['stem_bn']
  np.testing.assert_array_equal(stats['mean'], 0.0)
  np.testing.assert_array_equal(stats['var'], 1.0)


def test_bottleneck_structure_and_zero_init_gamma():
  enc = models.build_encoder(_tiny(block='bottleneck', stage_sizes=(2, 1)))
  _, variables = _abstract_init(enc, (2, 8, 8, 3))
  params = variables['params']
  assert set(params['stage1_block1']) == {'conv1', 'bn1', 'conv2', 'bn2', 'conv3',
                                          'bn3', 'shortcut'}  # 8 -> 32 channels
  assert 'shortcut' not in params['stage1_block2']
  assert params['stage1_block1']['conv3']['kernel'].shape == (1, 1, 8, 32)
  assert params['stage2_block1']['conv2']['kernel'].shape == (3, 3, 16, 16)
  # bn3 (after the expanding 1x1) is the block's last BN: the zero-gamma one.
  # (zero conv kernels: only the BN initialisers matter here, and they are cheap)
  block = resnet.BottleneckBlock(
      filters=2, strides=1, norm=nn.BatchNorm,
      conv=functools.partial(nn.Conv, use_bias=False, kernel_init=nn.initializers.zeros),
  ).init(KEY, jnp.ones((1, 2, 2, 4)), train=False)['params']
  np.testing.assert_array_equal(block['bn3']['scale'], 0.0)
  np.testing.assert_array_equal(block['bn1']['scale'], 1.0)
  np.testing.assert_array_equal(block['bn2']['scale'], 1.0)
  np.testing.assert_array_equal(block['shortcut']['bn']['scale'], 1.0)


def test_every_conv_goes_through_conv_cls():
  calls = []

  class RecordingConv(nn.Conv):

    def __call__(self, inputs):
      calls.append(self.scope.path)
      return super().__call__(inputs)

  for sk in (0.0, 0.0625):
    for stem in ('imagenet', 'cifar'):
      calls.clear()
      cfg = _tiny(block='bottleneck', stem=stem, sk_ratio=sk)
      enc = models.build_encoder(cfg, conv_cls=RecordingConv)
      _, variables = _abstract_init(enc, (2, 16, 16, 3))
      kernels = [path for path, leaf in
                 jax.tree_util.tree_leaves_with_path(variables['params'])
                 if leaf.ndim == 4]
      assert len(calls) == len(kernels) > 0
      assert len(set(calls)) == len(calls)


def test_selective_kernel_structure_and_param_count():
  counts = {}
  for sk in (0.0, 0.0625):
    for block in ('basic', 'bottleneck'):
      cfg = _tiny(block=block, stem='imagenet', sk_ratio=sk)
      _, variables = _abstract_init(models.build_model(cfg, 0), (2, 16, 16, 3))
      counts[(sk, block)] = models.count_params(variables['params'])
      enc = variables['params']['encoder']
      if sk:
        # ResNet-D deep stem: 3x3 convs of widths w/2, w/2, w.
        assert 'stem_conv' not in enc
        assert enc['stem_conv1']['kernel'].shape == (3, 3, 3, 4)
        assert enc['stem_conv2']['kernel'].shape == (3, 3, 4, 4)
        assert enc['stem_conv3']['kernel'].shape == (3, 3, 4, 8)
        sk_params = enc['stage2_block1']['sk']
        w = cfg.resnet.base_width * 2
        k = sk_params['conv']['kernel'].shape
        assert k[:2] == (3, 3) and k[3] == 2 * w  # both streams in one conv
        assert sk_params['fc1']['kernel'].shape == (1, 1, w, 32)  # max(w * sk, 32)
        assert sk_params['fc2']['kernel'].shape == (1, 1, 32, 2 * w)
        assert {'bn', 'fc1_bn'} <= set(sk_params)
        # ResNet-D shortcut: a stride-1 1x1 conv after the average pool.
        assert enc['stage2_block1']['shortcut']['conv']['kernel'].shape[:2] == (1, 1)
      else:
        assert enc['stem_conv']['kernel'].shape == (7, 7, 3, 8)
  for block in ('basic', 'bottleneck'):
    assert counts[(0.0625, block)] > counts[(0.0, block)]
  # SK on a stride-2 block halves the side like the plain 3x3 conv.
  enc = models.build_encoder(_tiny(block='bottleneck', stem='cifar', sk_ratio=0.0625))
  _, state = _abstract_init(enc, (2, 16, 16, 3), capture_intermediates=True)
  sk_out = state['intermediates']['stage2_block1']['sk']['__call__'][0]
  assert sk_out.shape == (2, 8, 8, 16)


def test_selective_kernel_network_trains():
  model = models.build_model(_tiny(block='bottleneck', sk_ratio=0.0625), 0)
  x = _images(4, 8)
  variables = _random_variables(model, x.shape)

  def loss(params):
    out, _ = model.apply({**variables, 'params': params}, x, train=True,
                         mutable=['batch_stats'])
    return jnp.sum(out['z'] ** 2)

  value, grads = jax.jit(jax.value_and_grad(loss))(variables['params'])
  assert np.isfinite(float(value))
  g = grads['encoder']['stage2_block1']['sk']['fc1']['kernel']
  assert np.all(np.isfinite(g)) and float(jnp.abs(g).sum()) > 0


def test_selective_kernel_mixes_two_streams():
  sk = resnet.SelectiveKernel(
      filters=4, strides=1, sk_ratio=0.0625,
      conv=functools.partial(nn.Conv, use_bias=False), norm=nn.BatchNorm)
  x = _images(2, 6)
  variables = _random_variables(sk, x.shape)
  params = dict(variables['params'])
  fc2 = params['fc2']['kernel']
  apply = jax.jit(functools.partial(sk.apply, train=False, capture_intermediates=True))
  # Identical logits for both streams: the output is the streams' mean.
  params['fc2'] = {'kernel': jnp.concatenate([fc2[..., :4], fc2[..., :4]], axis=-1)}
  out, state = apply({**variables, 'params': params}, x)
  streams = jax.nn.relu(state['intermediates']['bn']['__call__'][0])
  s0, s1 = np.asarray(streams[..., :4]), np.asarray(streams[..., 4:])
  np.testing.assert_allclose(out, 0.5 * (s0 + s1), rtol=1e-5, atol=1e-6)
  # fc1_bn outputs exactly 1 (gamma 0, beta 1) and fc2 gives stream 0 logit
  # +32 and stream 1 logit -32 per channel: the output is stream 0.
  params['fc1_bn'] = {'scale': jnp.zeros(32), 'bias': jnp.ones(32)}
  params['fc2'] = {'kernel': jnp.concatenate(
      [jnp.ones((1, 1, 32, 4)), -jnp.ones((1, 1, 32, 4))], axis=-1)}
  out, state = apply({**variables, 'params': params}, x)
  streams = jax.nn.relu(state['intermediates']['bn']['__call__'][0])
  np.testing.assert_allclose(out, streams[..., :4], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('strides', [1, 2])
def test_resnet_d_shortcut_is_avg_pool_then_1x1(strides):
  conv = functools.partial(nn.Conv, use_bias=False)
  sc = resnet.Shortcut(features=5, strides=strides, resnet_d=True, conv=conv,
                       norm=nn.BatchNorm)
  x = _images(2, 6)
  variables = _random_variables(sc, x.shape)
  variables['params']['bn'] = {'scale': jnp.ones(5), 'bias': jnp.zeros(5)}
  out = sc.apply(variables, x, train=False)
  xn = np.asarray(x)
  if strides == 2:
    pooled = xn.reshape(2, 3, 2, 3, 2, 3).mean(axis=(2, 4))
  else:  # 2x2 window anchored top-left, padding at the end not counted
    padded = np.pad(xn, ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=np.nan)
    windows = np.stack([padded[:, i:i + 6, j:j + 6] for i in (0, 1) for j in (0, 1)])
    pooled = np.nanmean(windows, axis=0)
  kernel = np.asarray(variables['params']['conv']['kernel'])[0, 0]
  # BN in eval mode with mean 0, var 1: divides by sqrt(1 + eps).
  expected = pooled @ kernel / np.sqrt(1 + 1e-5)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_float32_params():
  model32, variables, x = _tiny_state()
  model = models.build_model(_tiny(dtype='bfloat16'), num_classes=10)
  _, abstract = _abstract_init(model, x.shape)
  # Same parameter tree, all float32 (params and BN statistics).
  assert jax.tree_util.tree_structure(abstract) == jax.tree_util.tree_structure(variables)
  for leaf in jax.tree_util.tree_leaves(abstract):
    assert leaf.dtype == jnp.float32
  out, state = model.apply(variables, x, train=True,
                           mutable=['batch_stats', 'intermediates'],
                           capture_intermediates=True)
  inter = state['intermediates']['encoder']
  assert inter['stem_conv']['__call__'][0].dtype == jnp.bfloat16
  assert inter['stage2_block1']['conv2']['__call__'][0].dtype == jnp.bfloat16
  assert inter['stage2_block1']['bn2']['__call__'][0].dtype == jnp.bfloat16
  assert state['intermediates']['head']['dense1']['__call__'][0].dtype == jnp.bfloat16
  for v in (out['h'], out['z'], out['probe_logits'], *out['proj']):
    assert v.dtype == jnp.float32
  for leaf in jax.tree_util.tree_leaves(state['batch_stats']):
    assert leaf.dtype == jnp.float32
  # bf16 and f32 nets with the same params agree to bf16 precision.
  out32, _ = model32.apply(variables, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(out['h'], out32['h'], rtol=0.05, atol=0.05)


@pytest.mark.parametrize('num_layers,hidden', [(2, 0), (3, 0), (3, 24)])
def test_projection_head_outputs(num_layers, hidden):
  head = heads.ProjectionHead(num_layers=num_layers, out_dim=16, hidden_dim=hidden)
  h = jnp.asarray(np.random.default_rng(0).standard_normal((6, 32)), jnp.float32)
  variables = _random_variables(head, h.shape)
  outs, _ = head.apply(variables, h, train=True, mutable=['batch_stats'])
  assert len(outs) == num_layers + 1
  mid = hidden or 32
  assert [o.shape for o in outs] == [(6, 32)] + [(6, mid)] * (num_layers - 1) + [(6, 16)]
  np.testing.assert_array_equal(outs[0], h)
  p = variables['params']
  for j in range(1, num_layers + 1):
    assert set(p[f'dense{j}']) == {'kernel'}  # Dense without bias
    last = j == num_layers
    assert set(p[f'bn{j}']) == ({'scale'} if last else {'scale', 'bias'})
    if not last:
      assert np.all(outs[j] >= 0)  # ReLU
  assert np.any(outs[-1] < 0)  # no ReLU on the last layer
  # Train-mode BN without beta: each output feature is zero-mean over the batch.
  np.testing.assert_allclose(np.mean(outs[-1], axis=0), 0.0, atol=1e-5)


def test_projection_head_built_from_config():
  model = models.build_model(_tiny(num_proj_layers=3, proj_dim=12, proj_hidden_dim=20), 0)
  out, _ = _abstract_init(model, (4, 8, 8, 3))
  assert [p.shape for p in out['proj']] == [(4, 16), (4, 20), (4, 20), (4, 12)]
  model = models.build_model(_tiny(num_proj_layers=0), 0)
  out, _ = _abstract_init(model, (4, 8, 8, 3))
  assert len(out['proj']) == 1 and out['z'].shape == (4, 16)  # no head: z = h


def test_linear_head():
  x = jnp.ones((3, 8), jnp.bfloat16)
  head = heads.LinearHead(5, zero_init=True)
  v = head.init(KEY, x)
  assert set(v['params']['dense']) == {'kernel', 'bias'}
  np.testing.assert_array_equal(v['params']['dense']['kernel'], 0.0)
  logits = head.apply(v, x)
  assert logits.shape == (3, 5) and logits.dtype == jnp.float32
  np.testing.assert_array_equal(logits, 0.0)
  v['params']['dense']['bias'] = jnp.arange(5.0)
  np.testing.assert_array_equal(head.apply(v, x, train=True),
                                np.tile(np.arange(5.0), (3, 1)))


def test_probe_gradient_does_not_reach_encoder():
  model, variables, x = _tiny_state()
  labels = jnp.array([0, 1, 2, 0])

  def losses(params):
    out, _ = model.apply({**variables, 'params': params}, x, train=True,
                         mutable=['batch_stats'])
    logp = jax.nn.log_softmax(out['probe_logits'])
    probe = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))
    return probe, jnp.sum(out['z'] ** 2)

  # Both gradients from one compiled function: the probe loss's and z's.
  g_probe, g_z = jax.jit(jax.jacrev(losses))(variables['params'])
  for part in ('encoder', 'head'):
    for g in jax.tree_util.tree_leaves(g_probe[part]):
      np.testing.assert_array_equal(g, 0.0)
  assert float(jnp.abs(g_probe['probe']['dense']['kernel']).sum()) > 0
  # The contrastive side does reach the encoder (and not the probe).
  assert float(jnp.abs(g_z['encoder']['stem_conv']['kernel']).sum()) > 0
  np.testing.assert_array_equal(g_z['probe']['dense']['kernel'], 0.0)


def test_train_updates_batch_stats_eval_does_not():
  model, variables, x = _tiny_state()
  _, state = model.apply(variables, x, train=True,
                         mutable=['batch_stats', 'intermediates'],
                         capture_intermediates=True)
  new = state['batch_stats']
  old_mean = variables['batch_stats']['encoder']['stem_bn']['mean']
  new_mean = new['encoder']['stem_bn']['mean']
  np.testing.assert_array_equal(old_mean, 0.0)
  assert float(jnp.abs(new_mean).sum()) > 0
  # momentum 0.9: new = 0.9 * 0 + 0.1 * batch mean of the stem conv output.
  conv_out = state['intermediates']['encoder']['stem_conv']['__call__'][0]
  np.testing.assert_allclose(new_mean, 0.1 * conv_out.mean(axis=(0, 1, 2)),
                             rtol=1e-5, atol=1e-7)
  # Every statistic moved (head included), none of the structure changed.
  assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(
      variables['batch_stats'])
  assert jax.tree_util.tree_leaves(new['head'])
  # Eval mode uses the running statistics and needs no mutable collection.
  out = model.apply(variables, x, train=False)
  assert np.all(np.isfinite(out['z']))


def test_batchnorm_stats_are_global_over_sharded_batch():
  devices = jax.devices()
  if len(devices) < 2:
    pytest.skip('needs several (simulated) devices')
  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  model = models.build_encoder(models.tiny_model_config())
  x = _images(2 * len(devices), 8)
  variables = _random_variables(model, x.shape)

  def step(variables, x):
    return model.apply(variables, x, train=True, mutable=['batch_stats'])

  h1, stats1 = step(variables, x)  # one device, op by op
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  h8, stats8 = jax.jit(step)(jax.device_put(variables, repl), jax.device_put(x, shard))
  assert len(h8.sharding.device_set) == len(devices)
  np.testing.assert_allclose(h8, h1, rtol=1e-4, atol=1e-5)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), stats8, stats1)


def test_build_config_resolution_and_errors():
  assert models.resolve_architecture(_cfg(depth=101).resnet) == ((3, 4, 23, 3), 'bottleneck')
  resolve = lambda **kw: models.resolve_architecture(_cfg(**kw).resnet)
  assert resolve(depth=18, stage_sizes=(1, 1)) == ((1, 1), 'basic')
  assert resolve(depth=50, block='basic') == ((3, 4, 6, 3), 'basic')
  enc = models.build_encoder(_cfg(depth=34, width_multiplier=2, dtype='bfloat16'))
  assert enc.stage_sizes == (3, 4, 6, 3) and enc.block == 'basic'
  assert enc.width_multiplier == 2 and enc.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match='stage_sizes'):
    models.resolve_architecture(_cfg(depth=0).resnet)
  with pytest.raises(ValueError, match='block'):
    models.resolve_architecture(_cfg(depth=0, stage_sizes=(1,)).resnet)
  with pytest.raises(ValueError, match='depth'):
    models.resolve_architecture(_cfg(depth=42).resnet)
  with pytest.raises(ValueError, match='dtype'):
    models.build_encoder(_cfg(dtype='float16'))
  # conv_xla_wgrad_below reaches the CPU conv (configs/fashion_mnist.py sets it).
  kernels = ml_collections.ConfigDict(dict(conv='fast', conv_xla_wgrad_below=16))
  enc = models.build_encoder(_cfg(depth=18), kernels_cfg=kernels)
  assert enc.conv_cls.keywords['conv_general_dilated'].keywords == {'xla_wgrad_below': 16}
  with pytest.raises(ValueError, match='conv_xla_wgrad_below'):
    config_defaults.validate(ml_collections.ConfigDict(
        {'kernels': dict(conv='fast', conv_xla_wgrad_below=-1)}))
  tiny = models.tiny_model_config()
  assert set(tiny) == set(config_defaults.model_defaults())
  r = tiny.resnet
  assert (r.depth, tuple(r.stage_sizes), r.block, r.base_width, r.stem,
          tiny.num_proj_layers, tiny.proj_dim) == (0, (1, 1), 'basic', 8, 'cifar', 2, 16)


def test_count_params():
  tree = {'a': jnp.zeros((3, 4)),
          'b': [jnp.zeros(5), jax.ShapeDtypeStruct((2, 2), jnp.float32)]}
  assert models.count_params(tree) == 21
  assert models.count_params({}) == 0


def test_cifar_stem_stride_two_halves_the_feature_maps():
  from contrastive_jax.models import build_encoder, tiny_model_config
  cfg = tiny_model_config()
  shapes = {}
  for stride in (1, 2):
    cfg.resnet.stem_stride = stride
    enc = build_encoder(cfg)
    x = jnp.zeros((2, 28, 28, 1))
    _, state = jax.eval_shape(
        lambda x_: enc.init_with_output(jax.random.PRNGKey(0), x_, train=False,
                                        capture_intermediates=True), x)
    shapes[stride] = state['intermediates']['stem_conv']['__call__'][0].shape
  assert shapes[1] == (2, 28, 28, 8) and shapes[2] == (2, 14, 14, 8)


def test_flatten_pool_keeps_the_last_map_and_avg_is_its_mean():
  # Pooling has no parameters: the same variables serve both encoders.
  flat = models.build_encoder(_tiny(pool='flatten'))
  avg = models.build_encoder(_tiny(pool='avg'))
  x = _images(n=3, side=8)
  variables = _random_variables(avg, x.shape)
  (h_flat, state), h_avg = (
      flat.apply(variables, x, train=False, capture_intermediates=True),
      avg.apply(variables, x, train=False))
  last = state['intermediates']['stage2_block1']['__call__'][0]   # [3, 4, 4, 16]
  assert last.shape == (3, 4, 4, 16) and h_flat.shape == (3, 256)
  np.testing.assert_array_equal(np.asarray(h_flat), np.asarray(last).reshape(3, -1))
  np.testing.assert_allclose(np.asarray(h_flat).reshape(3, 4, 4, 16).mean(axis=(1, 2)),
                             np.asarray(h_avg), rtol=1e-5, atol=1e-6)
  # h's width follows the input size; encoder_width needs it to say so.
  assert models.encoder_width(_tiny(pool='avg')) == 16
  assert models.encoder_width(_tiny(pool='flatten'), image_size=8) == 256
  assert models.encoder_width(_tiny(pool='flatten'), image_size=16) == 1024
  with pytest.raises(ValueError, match='image_size'):
    models.encoder_width(_tiny(pool='flatten'))
  with pytest.raises(ValueError, match='pool'):
    models.build_encoder(_tiny(pool='max')).init(KEY, x, train=False)
